"""Sampling and quality metrics for the example model: PSNR, SSIM and high-frequency energy ratio vs the HR crop."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from qdit4sr_export.metrics import image_metrics
from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.sampling import euler_sample

GUIDANCES = (1.5, 3.0)


def bicubic_up(lr: np.ndarray, factor: int = 4) -> np.ndarray:
    """Bicubic x``factor`` upscale of a uint8 HxWx3 image."""
    img = Image.fromarray(lr)
    return np.asarray(img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC))


def prompt_pair(config: DiT4SRConfig, tokens: int, seed: int) -> dict[str, torch.Tensor]:
    """Fixed seeded prompt embeddings and the null (all-zero) negative, in the shipped key names."""
    gen = torch.Generator().manual_seed(seed + 7)
    pos = torch.randn(1, tokens, config.joint_attention_dim, generator=gen)
    pooled = torch.randn(1, config.pooled_projection_dim, generator=gen)
    return {"prompt_embeds": pos, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": torch.zeros_like(pos),
            "negative_pooled_prompt_embeds": torch.zeros_like(pooled)}


def adain(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel mean/std of ``out`` matched to ``ref`` (the bicubic-upscaled LR)."""
    mo, so = out.mean((2, 3), keepdim=True), out.std((2, 3), keepdim=True) + 1e-5
    mr, sr = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True)
    return (out - mo) / so * sr + mr


@torch.no_grad()
def sample_sr(model, ae, prompts: dict[str, torch.Tensor], lr_up: torch.Tensor, *, steps: int, start_sigma: float,
              guidance: float, seed: int) -> torch.Tensor:
    """SR images in [-1, 1] from bicubic-upscaled LR images (B, 3, H, W) in [-1, 1]; CFG against the null prompt."""
    device = next(model.parameters()).device
    cond = ae.encode(lr_up.to(device))
    b = cond.shape[0]
    pos = prompts["prompt_embeds"].to(device).expand(b, -1, -1)
    pooled = prompts["pooled_prompt_embeds"].to(device).expand(b, -1)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        if guidance == 1.0:
            return model(x, cond, pos, pooled, t)
        v = model(torch.cat([x, x]), torch.cat([cond, cond]), torch.cat([torch.zeros_like(pos), pos]),
                  torch.cat([torch.zeros_like(pooled), pooled]), t)
        neg, posv = v.chunk(2)
        return neg + guidance * (posv - neg)

    gen = torch.Generator().manual_seed(seed)
    return ae.decode(euler_sample(velocity, cond, steps=steps, start_sigma=start_sigma, generator=gen)).cpu()


def metrics(out: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (RGB, 8-bit), SSIM and HF-energy ratio (output / HR) of images in [-1, 1]."""
    return image_metrics((out.clamp(-1, 1) + 1) / 2, (hr + 1) / 2)


def _choose(rows: dict[str, dict], bicubic_psnr: float) -> str:
    """Within 1 dB of bicubic: the most HF detail (capped at the HR's), then PSNR; else the best PSNR."""
    near = [k for k, r in rows.items() if r["psnr"] >= bicubic_psnr - 1.0]
    if near:
        return max(near, key=lambda k: (round(min(rows[k]["hf_ratio"], 1.0), 2), rows[k]["psnr"]))
    return max(rows, key=lambda k: rows[k]["psnr"])


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def evaluate_settings(model, ae, prompts, pairs, sweep, *, seed: int,
                      chosen: dict | None = None) -> tuple[dict, dict[str, dict]]:
    """Metrics for bicubic and every (steps, start sigma, guidance, colour fix); returns (chosen settings, rows).

    Guidance scales are tried around the best guidance-free setting, or around ``chosen`` when given."""
    hr = to_tensor([h for h, _ in pairs])
    up = to_tensor([bicubic_up(lr) for _, lr in pairs])
    rows = {"bicubic": metrics(up, hr)}
    found = {}

    def run(steps: int, start: float, guidance: float) -> None:
        out = sample_sr(model, ae, prompts, up, steps=steps, start_sigma=start, guidance=guidance, seed=seed)
        for fix, img in (("none", out), ("adain", adain(out, up))):
            key = f"{steps}/{start}/{guidance}/{fix}"
            found[key] = {"steps": steps, "start_sigma": start, "guidance_scale": guidance, "color_fix": fix}
            rows[key] = metrics(img, hr)

    for steps, start in sweep:
        run(steps, start, 1.0)
    best = chosen or found[_choose({k: rows[k] for k in found}, rows["bicubic"]["psnr"])]
    for guidance in GUIDANCES:
        run(best["steps"], best["start_sigma"], guidance)
    best = found[_choose({k: rows[k] for k in found}, rows["bicubic"]["psnr"])]
    return best, rows
