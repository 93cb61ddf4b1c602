"""Train the example DiT4SR (preset ``dit4sr-example``) for x4 SR on real photographs, choose its sampling, export.

Photos: scikit-image's bundled ones and photographic wallpapers of two Debian packages (``photos.py``; fetched into
``examples/.cache``). LR: the real-world chain or, 30% of the time, plain bicubic /4 (``degradation.py``). Flow
matching as SD3/DiT4SR: ``x_s = (1 - s) x0 + s noise``, the model predicts ``noise - x0`` at timestep ``1000 s``; the
LR image bicubic-upscaled x4 and encoded is the ``lr_latent`` stream. ``--objective path-self`` instead trains on
the states the sampler itself visits from the LR latent (``path_state``), and ``--init`` fine-tunes an exported
model (the shipped v3, README "The example model"). Usage (CPU defaults: the v2 recipe; seeded):

    nice -n 10 python examples/train_tiny.py --out runs/v2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from degradation import KINDS, degrade_kind, degrade_mix  # noqa: E402
from photos import DEFAULT_CACHE, HELDOUT_PHOTOS, SKIMAGE_TRAIN, load_photos, load_wallpapers  # noqa: E402
from tiny_eval import bicubic_up, evaluate_settings, prompt_pair, settings_key, to_tensor  # noqa: E402

from qdit4sr_export.model.autoencoder import PixelUnshuffleAutoencoder  # noqa: E402
from qdit4sr_export.model.config import PRESETS  # noqa: E402
from qdit4sr_export.model.loading import load_dit4sr, save_dit4sr  # noqa: E402
from qdit4sr_export.model.sampling import DEFAULT_SHIFT, NUM_TRAIN_TIMESTEPS  # noqa: E402
from qdit4sr_export.model.transformer import build_dit4sr  # noqa: E402

PROMPT_TOKENS = 8
NULL_PROMPT_P = 0.2
#: Inference settings compared on validation crops of training photos: (schedule steps, start sigma); each runs at
#: least 8 steps from sigma 0.5 or more (the last one from pure noise, as DiT4SR samples).
SWEEP = ((30, 0.5), (40, 0.5), (40, 0.6), (12, 1.0))
#: Validation: one crop of each of these training photos (scikit-image's first four, then four wallpapers).
VALIDATION = (0, 1, 2, 7, 13, 16, 18, 21)


def random_pair(photos: list[np.ndarray], index: int, seed: int, size: int,
                clean_p: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Training pair ``index``: a random photo, a crop of 1-2x ``size`` resized to ``size``, flips/rotations, LR
    by the degradation mix (clean bicubic with probability ``clean_p``); seeded."""
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
    return crop, degrade_mix(crop, rng, clean_p)


def fixed_crops(photos: list[np.ndarray], *, size: int, per_photo: int, seed: int,
                kind: str = "real") -> list[tuple[np.ndarray, np.ndarray]]:
    """``per_photo`` seeded ``size`` crops of each photo with their LR of ``kind`` (evaluation sets); the crops are
    the same for every kind."""
    rng = np.random.default_rng(seed)
    pairs = []
    for photo in photos:
        for _ in range(per_photo):
            top = int(rng.integers(photo.shape[0] - size + 1))
            left = int(rng.integers(photo.shape[1] - size + 1))
            hr = np.ascontiguousarray(photo[top:top + size, left:left + size])
            pairs.append((hr, degrade_kind(hr, rng, kind)))
    return pairs


class PairDataset(torch.utils.data.Dataset):
    """Item i = (HR, bicubic-upscaled LR) tensors of ``random_pair(i)``; deterministic whatever the workers."""

    def __init__(self, photos: list[np.ndarray], seed: int, size: int, length: int, clean_p: float) -> None:
        self.photos, self.seed, self.size, self.length, self.clean_p = photos, seed, size, length, clean_p

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr, lr = random_pair(self.photos, index, self.seed, self.size, self.clean_p)
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


def path_state(ema: torch.nn.Module, x0: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor, ctx: torch.Tensor,
               pool: torch.Tensor, generator: torch.Generator, self_path: bool,
               s0_range: tuple[float, float] = (0.4, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """(state, sigma) on the sampler's own path (objectives ``path-lr`` and ``path-self``); the target is x0.

    The sampler starts at ``S = (1 - s0) L + s0 noise`` (L: the LR latent) and each Euler step moves towards the
    model's estimate m of x0: ``x_s = m + (s / s0) (S - m)``. ``path-self`` takes m from the EMA model at S (so
    ``x_s`` is one Euler step of it from S), ``path-lr`` takes m = L. Either way the state carries no
    information about x0 beyond the LR image, so the model learns to remove the noise, not to turn it into
    texture. Start levels s0 uniform in ``s0_range`` (default [0.4, 1]), s uniform in [0, s0]."""
    b = x0.shape[0]
    lo, hi = s0_range
    s0 = (lo + (hi - lo) * torch.rand(b, generator=generator)).to(x0.device)
    sigma = s0 * torch.rand(b, generator=generator).to(x0.device)
    s0v, sv = s0.view(b, 1, 1, 1), sigma.view(b, 1, 1, 1)
    start = (1 - s0v) * cond + s0v * noise
    if self_path:
        with torch.no_grad():
            m = start - s0v * ema(start, cond, ctx, pool, s0 * NUM_TRAIN_TIMESTEPS).float()
    else:
        m = cond
    return m + (sv / s0v) * (start - m), sigma


def path_loss(estimate: torch.Tensor, x0: torch.Tensor, kind: str) -> torch.Tensor:
    """``mse``: mean squared error over the batch; ``log-mse``: the mean over crops of log(MSE + 1e-5), i.e. minus the
    mean per-crop PSNR up to constants, which weights smooth crops (small errors) as much as textured ones."""
    if kind == "mse":
        return F.mse_loss(estimate, x0)
    per_crop = (estimate - x0).pow(2).flatten(1).mean(1)
    return torch.log(per_crop + 1e-5).mean()


def build_model(preset: str, factor: int, seed: int) -> torch.nn.Module:
    """The ``preset`` architecture, with latent channels matching the pixel-unshuffle factor."""
    config = PRESETS[preset]
    channels = 3 * factor * factor
    if config.in_channels != channels:
        config = dataclasses.replace(config, in_channels=channels, out_channels=channels,
                                     pos_embed_max_size=config.pos_embed_max_size * 2 // factor)
    torch.manual_seed(seed)
    return build_dit4sr(config)


def train(args: argparse.Namespace, photos: list[np.ndarray], ae: PixelUnshuffleAutoencoder,
          prompts: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Flow-matching (or sampler-path) training with AdamW, warm-up + cosine learning rate and EMA weights."""
    model = build_model(args.preset, args.factor, args.seed)
    if args.init is not None:  # fine-tune an exported model (its F16 weights, in float32)
        model.load_state_dict(load_dit4sr(args.init / "transformer").float().state_dict())
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    data_seed = args.seed if args.data_seed is None else args.data_seed
    data = PairDataset(photos, data_seed, args.crop, args.steps * args.batch, args.clean_p)
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
        if args.objective == "flow":
            state = (1 - s) * x0 + s * noise
        else:  # path-self: the EMA model's own steps once it has warmed up (before: path-lr's states)
            self_path = args.objective == "path-self" and step >= args.self_after
            state, sigma = path_state(ema, x0, cond, noise, ctx, pool, gen, self_path, tuple(args.s0_range))
            s = sigma.view(b, 1, 1, 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            pred = model(state, cond, ctx, pool, sigma * NUM_TRAIN_TIMESTEPS)
        if args.objective == "flow":
            loss = F.mse_loss(pred.float(), noise - x0)
        else:  # the x0 the Euler step from this state aims at: x - s v
            loss = path_loss(state - s * pred.float(), x0, args.loss)
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
           best: dict, factor: int) -> None:
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
                # DiT4SR raises the LR short side to 128 (a 64-px latent through SD3's /8 VAE); the /f map gets the
                # same latent size from 16 f px.
                "min_lr_side": 16 * factor}
    (folder / "pipeline.json").write_text(json.dumps(pipeline, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the CPU recipe."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the model, metrics.json and images")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the downloaded wallpaper packages")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--preset", default="dit4sr-example", choices=sorted(PRESETS), help="architecture")
    p.add_argument("--steps", type=int, default=1400)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--crop", type=int, default=64, help="HR training crop (px); LR is crop/4")
    p.add_argument("--factor", type=int, default=2, choices=(2, 4), help="pixel-unshuffle factor of the autoencoder")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--sigma-max", type=float, default=0.6, help="upper end of the low noise-level range")
    p.add_argument("--low-p", type=float, default=0.7, help="share of noise levels drawn from [0, sigma-max]")
    p.add_argument("--objective", default="flow", choices=("flow", "path-lr", "path-self"),
                   help="flow: SD3's flow matching from noise; path-lr / path-self: predict the HR latent from "
                        "states on the sampler's own path from the LR latent (path_state)")
    p.add_argument("--self-after", type=int, default=300, help="path-self: steps before the EMA model's own path")
    p.add_argument("--loss", default="mse", choices=("mse", "log-mse"),
                   help="path objectives: batch MSE, or the mean per-crop log MSE (the PSNR the eval averages)")
    p.add_argument("--s0-range", type=float, nargs=2, default=(0.4, 1.0), metavar=("LO", "HI"),
                   help="path objectives: the range of start noise levels trained on (the sampler starts at one)")
    p.add_argument("--clean-p", type=float, default=0.3, help="share of training LR made by plain bicubic /4")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--data-seed", type=int, default=None,
                   help="seed of the training crops (default: --seed); a fine-tune from --init takes new crops")
    p.add_argument("--init", type=Path, default=None, help="start from this exported model folder")
    p.add_argument("--eval-only", type=Path, default=None, help="skip training: evaluate this exported model folder")
    args = p.parse_args(argv)
    if args.objective == "flow" and (args.loss != "mse" or tuple(args.s0_range) != (0.4, 1.0)):
        p.error("--loss and --s0-range apply to the path objectives (path-lr, path-self), not to --objective flow")
    if not 0.0 < args.s0_range[0] <= args.s0_range[1] <= 1.0:
        p.error(f"--s0-range {args.s0_range[0]} {args.s0_range[1]}: need 0 < LO <= HI <= 1")
    if args.init is not None and not (args.init / "transformer").is_dir():
        p.error(f"--init {args.init}: not an exported model folder (no transformer/)")
    return args


def eval_sets(photos: list[np.ndarray], indices: tuple[int, ...], per_photo: int,
              seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """128 px crops of the chosen photos with LR of every degradation kind (the same crops for each kind)."""
    chosen = [photos[i] for i in indices]
    return {kind: fixed_crops(chosen, size=128, per_photo=per_photo, seed=seed, kind=kind) for kind in KINDS}


def main(argv: list[str] | None = None) -> None:
    """Train, pick inference settings on validation crops of training photos, evaluate on held-out crops, export."""
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    sk_photos, sk_sha = load_photos(SKIMAGE_TRAIN)
    wall_photos, wall_sha = load_wallpapers(args.cache)
    train_photos = sk_photos + wall_photos
    held_photos, held_sha = load_photos(HELDOUT_PHOTOS)
    shift, scale = latent_stats(train_photos)
    ae = PixelUnshuffleAutoencoder(args.factor, scale, shift)
    prompts = prompt_pair(PRESETS[args.preset], PROMPT_TOKENS, args.seed)
    folder = args.out / "dit4sr-tiny"
    if args.eval_only is None:
        model, info = train(args, train_photos, ae, prompts, device)
        args.out.mkdir(parents=True, exist_ok=True)
        export(folder, model, ae, prompts, {"steps": 1, "guidance_scale": 1.0, "start_sigma": 1.0,
                                            "color_fix": "none"}, args.factor)
    else:
        folder, info = args.eval_only, {}
    model = load_dit4sr(folder / "transformer").to(device)  # evaluate the shipped F16 weights
    val = eval_sets(train_photos, VALIDATION, 1, args.seed + 101)
    held = {kind: fixed_crops(held_photos, size=128, per_photo=2, seed=1234, kind=kind) for kind in KINDS}
    best, val_rows = evaluate_settings(model, ae, prompts, val, SWEEP, seed=args.seed)
    # Held-out crops: only the chosen setting (every extra setting costs minutes on a shared CPU).
    _, held_rows = evaluate_settings(model, ae, prompts, held, ((best["steps"], best["start_sigma"]),), seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    export(args.out / "dit4sr-tiny", model, ae, prompts, best, args.factor)
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
              "params": sum(p.numel() for p in model.parameters()), "latent": {"shift": shift, "scale": scale},
              "photos_sha256": {**sk_sha, **wall_sha, **held_sha}, **info, "best": best, "validation": val_rows,
              "heldout": held_rows}
    (args.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    key = settings_key(best)
    print(json.dumps({"best": best, "heldout": {kind: {"bicubic": rows["bicubic"], "model": rows[key]}
                                                for kind, rows in held_rows.items()}}), flush=True)


if __name__ == "__main__":
    main()
