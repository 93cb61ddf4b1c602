"""The x4 super-resolution pipeline as DiT4SR runs it, on any runner (ORT engine set, torch model/simulation).

LR image -> (short side to >= 128) bicubic x4, cropped to what the autoencoder and patch size tile -> LR
latent -> flow-matching Euler from ``(1 - s0) z_lr + s0 noise`` (s0 = 1: pure noise) with classifier-free
guidance ([negative, positive] prompt batch) -> decode -> colour fix against the bicubic image -> grey output for
a grey input (R = G = B) -> resize to exactly 4x the input. Each step's variant is looked up by timestep value in
the engine set; latents larger than a tile or not square are processed in square tiles blended with Gaussian
weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from qdit4sr_export.runtime.color_fix import apply_color_fix, is_grey, keep_grey
from qdit4sr_export.runtime.engine_set import EngineSet
from qdit4sr_export.runtime.resize import check_input_size, plan_resize, to_output_size, upscale_lr
from qdit4sr_export.runtime.tiling import blend, needs_tiling, plan_tiles
from safetensors.torch import load_file

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.sampling import euler_sample, flow_schedule, start_index

PROMPT_KEYS = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds")


@dataclass(frozen=True)
class PipelineOptions:
    """Sampling options; ``None`` fields take the model's ``pipeline.json`` value (then the defaults below)."""

    steps: int | None = None
    guidance_scale: float | None = None
    start_sigma: float | None = None
    color_fix: str | None = None
    seed: int = 0
    tile: int = 64
    overlap: int = 24

    def resolved(self, config: dict[str, Any]) -> "PipelineOptions":
        pick = lambda mine, key, default: mine if mine is not None else config.get(key, default)
        return PipelineOptions(int(pick(self.steps, "steps", 40)), float(pick(self.guidance_scale, "guidance_scale", 1.0)),
                               float(pick(self.start_sigma, "start_sigma", 1.0)), str(pick(self.color_fix, "color_fix", "adain")),
                               self.seed, self.tile, self.overlap)


@dataclass
class Assets:
    """What the pipeline needs besides the transformer: autoencoder, prompt embeddings, scheduler shift."""

    autoencoder: Any
    prompt: dict[str, torch.Tensor]
    shift: float
    config: dict[str, Any]


def load_assets(folder: Path, *, shift: float, config: dict[str, Any]) -> Assets:
    """From an engine set or a model folder: ``vae/`` and ``prompt_embeds.safetensors`` (zeros if absent)."""
    from qdit4sr_export.model.autoencoder import load_autoencoder

    if not (folder / "vae" / "config.json").is_file():
        raise UserError(f"{folder}: no vae/ autoencoder; images cannot be encoded (build from a pipeline folder)")
    prompt_file = folder / "prompt_embeds.safetensors"
    prompt = load_file(str(prompt_file)) if prompt_file.is_file() else {}
    missing = [k for k in PROMPT_KEYS if k not in prompt]
    if missing:
        raise UserError(f"{prompt_file}: missing prompt embedding(s) {', '.join(missing)}")
    return Assets(load_autoencoder(folder / "vae"), {k: prompt[k].float() for k in PROMPT_KEYS}, shift, config)


@dataclass
class StepRecord:
    step: int
    timestep: float
    variant: int | None
    seconds: float


@dataclass
class RunReport:
    """Per image: the steps (variant, time) and sizes; JSON-ready via ``to_dict``."""

    steps: list[StepRecord] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "steps": [vars(s) for s in self.steps]}


def non_finite_message(engine: EngineSet | None, variant: int | None, step: int, t: float) -> str:
    """The one-line error for a model output with NaN or Inf (a damaged engine set, or an overflowing model)."""
    where = "the model" if engine is None or variant is None else \
        f"variant {variant} ({engine.variants[variant].file})"
    hint = "; check the engine set with `run --verify`" if engine is not None else ""
    return f"{where} produced non-finite values at step {step} (timestep {t:.1f}); nothing was written{hint}"


class SRPipeline:
    """Runs ``runner`` over the trajectory, switching engine variants by timestep."""

    def __init__(self, runner, assets: Assets, engine: EngineSet | None = None, *, patch_size: int = 2) -> None:
        self.runner = runner
        self.assets = assets
        self.engine = engine
        self.patch_size = patch_size

    def _velocity(self, x, lr, t: float, opts: PipelineOptions) -> torch.Tensor:
        p = self.assets.prompt
        b = x.shape[0]
        if opts.guidance_scale == 1.0:
            ctx, pooled, xs, lrs = p["prompt_embeds"], p["pooled_prompt_embeds"], x, lr
        else:
            ctx = torch.cat([p["negative_prompt_embeds"], p["prompt_embeds"]])
            pooled = torch.cat([p["negative_pooled_prompt_embeds"], p["pooled_prompt_embeds"]])
            xs, lrs = torch.cat([x, x]), torch.cat([lr, lr])
        n = xs.shape[0]
        v = self.runner.infer(xs, lrs, ctx.expand(n, -1, -1) if ctx.shape[0] == 1 else ctx.repeat_interleave(b, 0),
                              pooled.expand(n, -1) if pooled.shape[0] == 1 else pooled.repeat_interleave(b, 0),
                              torch.full((n,), t, dtype=torch.float32))
        if opts.guidance_scale == 1.0:
            return v
        neg, pos = v.chunk(2)
        return neg + opts.guidance_scale * (pos - neg)

    def resize_rule(self) -> dict[str, int]:
        """The model's ``upscale`` and ``min_lr_side`` (4 and 128 for the real model)."""
        cfg = self.assets.config
        return {"upscale": int(cfg.get("upscale", 4)), "min_side": int(cfg.get("min_lr_side", 128))}

    def resize_plan(self, rgb: torch.Tensor):
        """DiT4SR's resize rule with the model's ``upscale`` and ``min_lr_side``; an input too small for it (see
        :func:`~qdit4sr_export.runtime.resize.min_input_side`) is a one-line error."""
        check_input_size(rgb.shape[2], rgb.shape[1], **self.resize_rule())
        return plan_resize(rgb.shape[2], rgb.shape[1], **self.resize_rule())

    def upscale(self, rgb: torch.Tensor, options: PipelineOptions = PipelineOptions(),
                on_step: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, RunReport]:
        """SR of one image (3, H, W) in [0, 1]; returns (3, 4H, 4W) in [0, 1] and the run report."""
        opts = options.resolved(self.assets.config)
        ae = self.assets.autoencoder
        plan = self.resize_plan(rgb)
        up = upscale_lr(rgb, plan)
        m = math.lcm(8, ae.downscale * self.patch_size)
        up = up[:, : up.shape[1] // m * m, : up.shape[2] // m * m]
        with torch.no_grad():
            z_lr = ae.encode(up[None] * 2 - 1)
        report = RunReport(info={"lr_size": [rgb.shape[2], rgb.shape[1]], "model_size": [up.shape[2], up.shape[1]],
                                 "latent_size": list(z_lr.shape[-2:]), "steps_requested": opts.steps,
                                 "guidance_scale": opts.guidance_scale, "start_sigma": opts.start_sigma})
        h, w = z_lr.shape[-2:]
        tiles = plan_tiles(h, w, opts.tile, opts.overlap) if needs_tiling(h, w, opts.tile) else None
        report.info["tiles"] = len(tiles.boxes) if tiles is not None else 1
        state: dict[str, Any] = {}

        def velocity(x, t):
            variant = self.engine.variant_for_timestep(t).index if self.engine is not None else None
            self.runner.activate(variant if variant is not None else 0)
            start = time.perf_counter()
            if tiles is None:
                v = self._velocity(x, z_lr, t, opts)
            else:
                v = blend(lambda xt, box: self._velocity(xt, z_lr[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]],
                                                         t, opts), x, tiles)
            report.steps.append(StepRecord(state["step"], t, variant, time.perf_counter() - start))
            if not bool(torch.isfinite(v).all()):
                raise UserError(non_finite_message(self.engine, variant, state["step"], t))
            return v

        first = start_index(flow_schedule(opts.steps, shift=self.assets.shift)[1], opts.start_sigma)
        report.info["steps_run"] = opts.steps - first

        def step(i, t):
            state["step"] = i
            if on_step is not None:
                on_step(i - first, opts.steps - first)

        g = torch.Generator().manual_seed(opts.seed)
        z = euler_sample(velocity, z_lr, steps=opts.steps, shift=self.assets.shift, start_sigma=opts.start_sigma,
                         generator=g, on_step=step)
        self.runner.deactivate()
        with torch.no_grad():
            decoded = ae.decode(z)[0].float()
        if not bool(torch.isfinite(decoded).all()):
            raise UserError("the autoencoder's decoded image has non-finite values; nothing was written")
        out = (decoded.clamp(-1, 1) + 1) / 2
        out = apply_color_fix(opts.color_fix, out[None], up[None])[0].clamp(0, 1)
        report.info["grey_input"] = is_grey(rgb)
        return to_output_size(keep_grey(out, rgb), plan), report
