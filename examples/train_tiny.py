"""Train the example DiT4SR (preset ``dit4sr-example``) for x4 SR on scikit-image's bundled photos, evaluate, export.

Flow matching as SD3/DiT4SR: ``x_s = (1 - s) x0 + s noise``, the model predicts ``noise - x0`` at timestep ``1000 s``;
the LR image bicubic-upscaled x4 and encoded is the ``lr_latent`` stream. Usage (CPU default: 64 px crops, about 1 h on one thread):

    python examples/train_tiny.py --out /tmp/train8_run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_eval import bicubic_up, evaluate_settings, prompt_pair, to_tensor  # noqa: E402

from qdit4sr_export.model.autoencoder import PixelUnshuffleAutoencoder  # noqa: E402
from qdit4sr_export.model.config import PRESETS  # noqa: E402
from qdit4sr_export.model.loading import load_dit4sr, save_dit4sr  # noqa: E402
from qdit4sr_export.model.transformer import build_dit4sr  # noqa: E402
from qdit4sr_export.sampling import NUM_TRAIN_TIMESTEPS, DEFAULT_SHIFT  # noqa: E402

#: Real photographs bundled inside scikit-image (no download). Grey ones are used as 3-channel grey images.
TRAIN_PHOTOS = ("astronaut.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                "ihc.png", "retina.jpg", "brick.png", "gravel.png", "moon.png", "coins.png", "cell.png",
                "clock_motion.png")
#: Never used for training or for choosing the inference settings.
HELDOUT_PHOTOS = ("chelsea.png", "rocket.jpg", "camera.png", "grass.png")
PROMPT_TOKENS = 8
NULL_PROMPT_P = 0.2
#: Inference settings compared on validation crops of training photos: (schedule steps, start sigma).
SWEEP = ((40, 0.1), (40, 0.15), (10, 0.3), (20, 0.3), (20, 0.45), (40, 0.2), (40, 0.3), (40, 0.45))


def photo_dir() -> Path:
    """The folder of scikit-image's bundled sample photos."""
    from skimage import data

    return Path(data.__file__).parent


def load_photos(names: tuple[str, ...]) -> tuple[list[np.ndarray], dict[str, str]]:
    """RGB uint8 arrays of the named photos and their sha256 (to check that two machines used the same files)."""
    photos, digests = [], {}
    for name in names:
        path = photo_dir() / name
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        with Image.open(path) as img:
            photos.append(np.asarray(img.convert("RGB")))
    return photos, digests


def degrade(hr: np.ndarray, rng: np.random.Generator, scale: int = 4) -> np.ndarray:
    """Real-ESRGAN-style first-order chain: Gaussian blur (radius 0.2-1.5), bicubic /4, Gaussian noise
    (0-6/255, grey 40% of the time), JPEG (quality 60-95). uint8 HxWx3 -> uint8 (H/4)x(W/4)x3."""
    img = Image.fromarray(hr).filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.2, 1.5))))
    img = img.resize((hr.shape[1] // scale, hr.shape[0] // scale), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    std = float(rng.uniform(0.0, 6.0))
    shape = arr.shape[:2] + ((1,) if rng.random() < 0.4 else (3,))
    arr = np.clip(arr + rng.normal(0.0, std, shape), 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    buf.seek(0)
    with Image.open(buf) as jpg:
        return np.asarray(jpg.convert("RGB"))


def random_pair(photos: list[np.ndarray], index: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Training pair ``index``: a random photo, a crop of 1-2x ``size`` resized to ``size``, flips/rotations; seeded."""
    rng = np.random.default_rng([seed, index])
    photo = photos[int(rng.integers(len(photos)))]
    side = min(int(size * rng.uniform(1.0, 2.0)), *photo.shape[:2])
    top = int(rng.integers(photo.shape[0] - side + 1))
    left = int(rng.integers(photo.shape[1] - side + 1))
    crop = photo[top:top + side, left:left + side]
    if side != size:
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))
    crop = np.rot90(crop, int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.ascontiguousarray(crop)
    return crop, degrade(crop, rng)


def fixed_crops(photos: list[np.ndarray], *, size: int, per_photo: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``per_photo`` seeded ``size`` crops of each photo with their degraded LR (evaluation sets)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for photo in photos:
        for _ in range(per_photo):
            top = int(rng.integers(photo.shape[0] - size + 1))
            left = int(rng.integers(photo.shape[1] - size + 1))
            hr = np.ascontiguousarray(photo[top:top + size, left:left + size])
            pairs.append((hr, degrade(hr, rng)))
    return pairs


class PairDataset(torch.utils.data.Dataset):
    """Item i = (HR, bicubic-upscaled LR) tensors of ``random_pair(i)``; deterministic whatever the workers."""

    def __init__(self, photos: list[np.ndarray], seed: int, size: int, length: int) -> None:
        self.photos, self.seed, self.size, self.length = photos, seed, size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr, lr = random_pair(self.photos, index, self.seed, self.size)
        return to_tensor([hr])[0], to_tensor([bicubic_up(lr)])[0]


def latent_stats(photos: list[np.ndarray]) -> tuple[float, float]:
    """(shift, scale) so that encoded training photos have mean 0 and std 1 (like SD3's VAE factors)."""
    values = np.concatenate([p.reshape(-1).astype(np.float64) / 127.5 - 1.0 for p in photos])
    return round(float(values.mean()), 4), round(float(1.0 / values.std()), 4)


def sample_sigmas(batch: int, generator: torch.Generator, low_max: float, low_p: float) -> torch.Tensor:
    """Noise levels: with probability ``low_p`` uniform in [0, low_max] (the range used at inference), else [0, 1]."""
    u = torch.rand(batch, generator=generator)
    low = torch.rand(batch, generator=generator) < low_p
    return torch.where(low, u * low_max, u)


def build_model(factor: int, seed: int) -> torch.nn.Module:
    """The ``dit4sr-example`` preset, with latent channels matching the pixel-unshuffle factor."""
    config = PRESETS["dit4sr-example"]
    channels = 3 * factor * factor
    if config.in_channels != channels:
        config = dataclasses.replace(config, in_channels=channels, out_channels=channels,
                                     pos_embed_max_size=config.pos_embed_max_size * 2 // factor)
    torch.manual_seed(seed)
    return build_dit4sr(config)


def train(args: argparse.Namespace, photos: list[np.ndarray], ae: PixelUnshuffleAutoencoder,
          prompts: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Flow-matching training with AdamW, warm-up + cosine learning rate and EMA weights."""
    model = build_model(args.factor, args.seed).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    data = PairDataset(photos, args.seed, args.crop, args.steps * args.batch)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=False, num_workers=args.workers,
                                         persistent_workers=args.workers > 0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    pos, pooled = prompts["prompt_embeds"].to(device), prompts["pooled_prompt_embeds"].to(device)
    log, start, losses = [], time.time(), []
    for step, (hr, lr_up) in enumerate(loader):
        lr_now = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr_now
        x0, cond = ae.encode(hr.to(device)), ae.encode(lr_up.to(device))
        b = x0.shape[0]
        sigma = sample_sigmas(b, gen, args.sigma_max, args.low_p).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        s = sigma.view(b, 1, 1, 1)
        keep = (torch.rand(b, generator=gen) >= NULL_PROMPT_P).float().to(device)
        ctx = pos.expand(b, -1, -1) * keep.view(b, 1, 1)
        pool = pooled.expand(b, -1) * keep.view(b, 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            pred = model((1 - s) * x0 + s * noise, cond, ctx, pool, sigma * NUM_TRAIN_TIMESTEPS)
        loss = F.mse_loss(pred.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            entry = {"step": step + 1, "loss": float(np.mean(losses)), "lr": lr_now, "seconds": time.time() - start}
            log.append(entry)
            losses = []
            print(json.dumps(entry), flush=True)
    return ema, {"train_seconds": time.time() - start, "seconds_per_step": (time.time() - start) / args.steps, "log": log}


def export(folder: Path, model: torch.nn.Module, ae: PixelUnshuffleAutoencoder, prompts: dict[str, torch.Tensor],
           best: dict) -> None:
    """Write the pipeline folder: transformer/ (F16), vae/, prompt_embeds.safetensors, scheduler/, pipeline.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_dit4sr(copy.deepcopy(model).to("cpu", torch.float16), folder / "transformer", overwrite=True)
    ae.save(folder / "vae")
    save_file({k: v.contiguous() for k, v in sorted(prompts.items())}, str(folder / "prompt_embeds.safetensors"))
    (folder / "scheduler").mkdir(exist_ok=True)
    sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
             "shift": DEFAULT_SHIFT}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2, sort_keys=True) + "\n")
    pipeline = {"format": "qdit4sr-export/pipeline", "version": 1, "steps": best["steps"],
                "guidance_scale": best["guidance_scale"], "start_sigma": best["start_sigma"],
                "color_fix": best["color_fix"], "upscale": 4,
                # DiT4SR raises the LR short side to 128 (a 64-px latent through SD3's /8 VAE); the /2 map gets the
                # same latent size from 32 px.
                "min_lr_side": 32}
    (folder / "pipeline.json").write_text(json.dumps(pipeline, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the CPU recipe (about 1 h on one thread)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the model, metrics.json and images")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="HR training crop (px); LR is crop/4")
    p.add_argument("--factor", type=int, default=2, choices=(2, 4), help="pixel-unshuffle factor of the autoencoder")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--sigma-max", type=float, default=0.5, help="upper end of the low noise-level range")
    p.add_argument("--low-p", type=float, default=0.8, help="share of noise levels drawn from [0, sigma-max]")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, pick inference settings on validation crops of training photos, evaluate on held-out crops, export."""
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    train_photos, train_sha = load_photos(TRAIN_PHOTOS)
    held_photos, held_sha = load_photos(HELDOUT_PHOTOS)
    shift, scale = latent_stats(train_photos)
    ae = PixelUnshuffleAutoencoder(args.factor, scale, shift)
    prompts = prompt_pair(PRESETS["dit4sr-example"], PROMPT_TOKENS, args.seed)
    model, info = train(args, train_photos, ae, prompts, device)
    args.out.mkdir(parents=True, exist_ok=True)
    export(args.out / "dit4sr-tiny", model, ae, prompts, {"steps": 1, "guidance_scale": 1.0, "start_sigma": 1.0,
                                                          "color_fix": "none"})
    model = load_dit4sr(args.out / "dit4sr-tiny" / "transformer").to(device)  # evaluate the shipped F16 weights
    val = fixed_crops(train_photos[:8], size=128, per_photo=1, seed=args.seed + 101)
    held = fixed_crops(held_photos, size=128, per_photo=2, seed=1234)
    best, val_rows = evaluate_settings(model, ae, prompts, val, SWEEP, seed=args.seed)
    _, held_rows = evaluate_settings(model, ae, prompts, held, SWEEP, seed=args.seed, chosen=best)
    export(args.out / "dit4sr-tiny", model, ae, prompts, best)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
              "params": sum(p.numel() for p in model.parameters()), "latent": {"shift": shift, "scale": scale},
              "photos_sha256": {**train_sha, **held_sha}, **info, "best": best, "validation": val_rows,
              "heldout": held_rows}
    (args.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    key = f"{best['steps']}/{best['start_sigma']}/{best['guidance_scale']}/{best['color_fix']}"
    print(json.dumps({"best": best, "heldout_best": held_rows.get(key), "bicubic": held_rows["bicubic"]}), flush=True)


if __name__ == "__main__":
    main()
