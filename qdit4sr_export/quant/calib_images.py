"""Calibration latents from a folder of LR photos, as the paper does: random 128x128 crops, bicubic x4,
then the model's own autoencoder (``vae/`` beside ``transformer/``), ``(z - shift) * scale``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from qdit4sr_export.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def packaged_calibration_folder() -> Path | None:
    """The LR photo crops shipped with the package (the default calibration set), if installed."""
    folder = Path(__file__).resolve().parent.parent / "data" / "calib"
    return folder if folder.is_dir() and any(folder.glob("*.png")) else None


def find_autoencoder_folder(model_path: str | Path) -> Path | None:
    """The ``vae/`` folder of a pipeline folder (given the pipeline root or its ``transformer/``), if any."""
    path = Path(model_path)
    if not path.is_dir():
        path = path.parent
    for root in (path, path.parent):
        if (root / "vae" / "config.json").is_file():
            return root / "vae"
    return None


def load_autoencoder(folder: Path):
    """The pipeline's autoencoder (pixel-unshuffle map or diffusers' AutoencoderKL), from a local folder only."""
    from qdit4sr_export.model.autoencoder import load_autoencoder as _load

    return _load(folder)


def read_images(folder: str | Path) -> list[Image.Image]:
    """Every readable image in ``folder`` (sorted by name), as RGB; unreadable files are skipped with a warning."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"calibration folder not found: {folder}")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            log.warning("skipping unreadable calibration image %s (%s)", path, exc)
    if not images:
        raise UserError(f"calibration folder {folder} has no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def random_crops(images: list[Image.Image], *, count: int, size: int, seed: int) -> list[Image.Image]:
    """``count`` seeded random ``size``x``size`` crops, cycling through the images; small images are upscaled first."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        img = images[i % len(images)]
        if min(img.size) < size:
            scale = size / min(img.size)
            img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                             Image.Resampling.BICUBIC)
        left = int(rng.integers(0, img.width - size + 1))
        top = int(rng.integers(0, img.height - size + 1))
        crops.append(img.crop((left, top, left + size, top + size)))
    return crops


def encode_images(vae, crops: list[Image.Image], *, upscale: int = 4, batch_size: int = 4) -> torch.Tensor:
    """Bicubic x``upscale``, map to [-1, 1], encode (deterministic, already ``(z - shift) * scale``)."""
    latents = []
    for start in range(0, len(crops), batch_size):
        batch = []
        for crop in crops[start:start + batch_size]:
            up = crop.resize((crop.width * upscale, crop.height * upscale), Image.Resampling.BICUBIC)
            arr = torch.from_numpy(np.asarray(up, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
            batch.append(arr)
        with torch.no_grad():
            latents.append(vae.encode(torch.stack(batch)))
    return torch.cat(latents)


def latents_from_folder(folder: str | Path, model_path: str | Path, *, count: int = 32, crop: int = 128,
                        seed: int = 0, max_latent_side: int | None = None, upscale: int = 4,
                        latent_side: int = 64) -> torch.Tensor:
    """LR latents for calibration from a folder of images and the model's autoencoder.

    Crops are ``crop`` px LR squares, made smaller (a multiple of 8) so that their x``upscale`` latent is at most
    ``latent_side`` (64: DiT4SR's 512 px working size, 128 px LR crops through SD3's /8 VAE) and at most
    ``max_latent_side`` (the model's positional table)."""
    if count < 1 or crop < 8:
        raise UserError(f"--calib-count must be >= 1 and the crop at least 8 px, got {count} and {crop}")
    vae_folder = find_autoencoder_folder(model_path)
    if vae_folder is None:
        raise UserError(
            f"calibration images need the model's autoencoder: no vae/ folder beside {model_path}; "
            "give a prepared latents file (.safetensors with 'lr_latent') instead"
        )
    vae = load_autoencoder(vae_folder)
    limit = latent_side if max_latent_side is None else min(latent_side, max_latent_side)
    crop = min(crop, limit * vae.downscale // upscale // 8 * 8)
    if crop < 8:
        least = -(-8 * upscale // vae.downscale)
        raise UserError(f"{model_path}: a latent side of {limit} gives LR calibration crops under 8 px; calibration "
                        f"needs a latent side of at least {least}")
    images = read_images(folder)
    return encode_images(vae, random_crops(images, count=count, size=crop, seed=seed), upscale=upscale)
