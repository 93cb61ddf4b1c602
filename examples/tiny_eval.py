"""Sampling and quality metrics for the example model: PSNR, SSIM, gradient-magnitude similarity and the
high-frequency energy ratio against the HR crop."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from qdit4sr_export.runtime.color_fix import apply_color_fix

from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.model.sampling import euler_sample
from qdit4sr_export.report.metrics import image_metrics


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


#: The colour fixes swept on validation crops, in row order, each applied by the runtime's own ``apply_color_fix``
#: (``run --color-fix``; every fix is affine, so images in [-1, 1] give the runtime's [0, 1] result, rescaled).
COLOR_FIXES = ("none", "adain", "wavelet")


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
    """Mean PSNR (RGB, 8-bit), SSIM, gradient-magnitude similarity and HF-energy ratio (output / HR) of images in
    [-1, 1]."""
    return image_metrics((out.clamp(-1, 1) + 1) / 2, (hr + 1) / 2)


def settings_key(settings: dict) -> str:
    """``steps/start_sigma/guidance/colour_fix``: the row key of a sampling setting."""
    return f"{settings['steps']}/{settings['start_sigma']}/{settings['guidance_scale']}/{settings['color_fix']}"


def _choose(rows: dict[str, dict[str, dict]], keys: list[str]) -> str:
    """More high-frequency energy than bicubic and less than the HR photo in every kind, then the highest PSNR gain
    over bicubic averaged over the kinds; if no setting qualifies, the highest PSNR gain alone."""
    def gain(k: str) -> float:
        return float(np.mean([r[k]["psnr"] - r["bicubic"]["psnr"] for r in rows.values()]))

    ok = [k for k in keys if all(r["bicubic"]["hf_ratio"] < r[k]["hf_ratio"] < 1.0 for r in rows.values())]
    return max(ok or keys, key=gain)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def evaluate_settings(model, ae, prompts, sets: dict[str, list], sweep, *, seed: int,
                      guidance: float = 1.0) -> tuple[dict, dict[str, dict[str, dict]]]:
    """Metrics of bicubic and of every (steps, start sigma) x colour fix (COLOR_FIXES, as `run` applies them) on each
    set of (HR, LR) pairs (one set per degradation kind); returns (chosen settings, rows per kind)."""
    rows: dict[str, dict[str, dict]] = {}
    found: dict[str, dict] = {}
    for kind, pairs in sets.items():
        hr = to_tensor([h for h, _ in pairs])
        up = to_tensor([bicubic_up(lr) for _, lr in pairs])
        rows[kind] = {"bicubic": metrics(up, hr)}
        for steps, start in sweep:
            out = sample_sr(model, ae, prompts, up, steps=steps, start_sigma=start, guidance=guidance, seed=seed)
            for fix in COLOR_FIXES:
                img = apply_color_fix(fix, out, up)
                settings = {"steps": steps, "start_sigma": start, "guidance_scale": guidance, "color_fix": fix}
                found[settings_key(settings)] = settings
                rows[kind][settings_key(settings)] = metrics(img, hr)
    return found[_choose(rows, list(found))], rows
