"""Autoencoders of a DiT4SR pipeline folder (``vae/``): an exact pixel-unshuffle map, or diffusers' AutoencoderKL.

Both expose ``encode(images) -> latents`` (images B,3,H,W in [-1, 1]; latents already ``(z - shift) * scale``),
``decode(latents) -> images``, ``downscale`` (pixels per latent cell) and ``latent_channels``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qdit4sr_export.errors import UserError

CONFIG_NAME = "config.json"
PIXEL_UNSHUFFLE_CLASS = "PixelUnshuffleAutoencoder"


class PixelUnshuffleAutoencoder:
    """Exactly invertible "autoencoder": pixel-unshuffle by ``factor``, then ``(z - shift_factor) * scaling_factor``."""

    def __init__(self, factor: int = 2, scaling_factor: float = 1.0, shift_factor: float = 0.0) -> None:
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise UserError(f"PixelUnshuffleAutoencoder factor must be a positive integer, got {factor!r}")
        if not float(scaling_factor) > 0:
            raise UserError(f"PixelUnshuffleAutoencoder scaling_factor must be positive, got {scaling_factor!r}")
        self.factor = factor
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)

    @property
    def downscale(self) -> int:
        """Pixels per latent cell along each side."""
        return self.factor

    @property
    def latent_channels(self) -> int:
        """Channels of the latent (3 * factor**2)."""
        return 3 * self.factor * self.factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3 f^2, H/f, W/f), shifted and scaled."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise UserError(f"encode expects images shaped (batch, 3, height, width), got {tuple(images.shape)}")
        if images.shape[-1] % self.factor or images.shape[-2] % self.factor:
            raise UserError(f"image size {tuple(images.shape[-2:])} is not a multiple of the factor {self.factor}")
        return (F.pixel_unshuffle(images, self.factor) - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Exact inverse of ``encode``."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise UserError(
                f"decode expects latents shaped (batch, {self.latent_channels}, h, w), got {tuple(latents.shape)}"
            )
        return F.pixel_shuffle(latents / self.scaling_factor + self.shift_factor, self.factor)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content."""
        return {"_class_name": PIXEL_UNSHUFFLE_CLASS, "factor": self.factor,
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/config.json`` (the map has no weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return folder


class DiffusersAutoencoder:
    """diffusers' AutoencoderKL behind the same interface (deterministic: the latent distribution's mode)."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae.eval()
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def downscale(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent."""
        return int(self.vae.config.latent_channels)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> ``(mode - shift) * scale``."""
        return (self.vae.encode(images).latent_dist.mode() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of ``encode`` up to the VAE's reconstruction error."""
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{folder}: not an autoencoder folder (no {CONFIG_NAME})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read the autoencoder config ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the autoencoder config must be a JSON object")
    return data


def load_autoencoder(folder: str | Path) -> PixelUnshuffleAutoencoder | DiffusersAutoencoder:
    """The autoencoder in ``folder``: the pixel-unshuffle map by its ``_class_name``, else AutoencoderKL (local only)."""
    folder = Path(folder)
    data = _read_config(folder)
    if data.get("_class_name") == PIXEL_UNSHUFFLE_CLASS:
        unknown = sorted(set(data) - {"_class_name", "factor", "scaling_factor", "shift_factor"})
        if unknown:
            raise UserError(f"{folder}: unknown {PIXEL_UNSHUFFLE_CLASS} config key(s): {', '.join(unknown)}")
        try:
            return PixelUnshuffleAutoencoder(data.get("factor", 2), data.get("scaling_factor", 1.0),
                                             data.get("shift_factor", 0.0))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{folder}: {exc}") from None
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UserError(f"{folder}: cannot load the autoencoder ({str(exc).splitlines()[0]})") from None
    return DiffusersAutoencoder(vae)


__all__ = ["PixelUnshuffleAutoencoder", "DiffusersAutoencoder", "load_autoencoder", "PIXEL_UNSHUFFLE_CLASS"]
