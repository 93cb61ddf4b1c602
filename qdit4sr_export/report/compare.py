"""Accuracy of an engine set against its FP model, per variant, through polygraphy.

The FP model runs in torch and its outputs enter polygraphy as saved run results; each variant graph runs in
polygraphy's ``OnnxrtRunner`` (with the runtime's session settings) on the same inputs, and polygraphy's
``Comparator`` checks them against the torch results. Inputs are given (a file) or generated at each
variant's own timesteps. Metrics per variant: max and mean abs error, cosine similarity, SQNR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.accounting import quantizable_linears
from qdit4sr_export.quant.plan import architecture_fingerprint, weights_fingerprint
from qdit4sr_export.runtime.backends import INPUTS, make_session, uses_plugin_ops
from qdit4sr_export.runtime.engine_set import EngineSet

Feed = dict[str, np.ndarray]
OUTPUT = "sample"
FP_RUNNER = "torch-fp"


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria per variant; ``atol`` (optional) is polygraphy's elementwise check on the max error."""

    min_sqnr: float = 20.0
    min_cosine: float = 0.99
    atol: float | None = None


def check_engine_matches(engine: EngineSet, model: torch.nn.Module) -> None:
    """The engine set must have been built from this model (architecture and weights fingerprints)."""
    linears = quantizable_linears(model)
    meta = engine.manifest.get("model", {})
    if meta.get("architecture_fingerprint") != architecture_fingerprint(model.config, linears):
        raise UserError(f"{engine.folder}: built for another architecture than the FP model (fingerprint differs)")
    if meta.get("weights_fingerprint") != weights_fingerprint(model, sorted(linears)):
        raise UserError(f"{engine.folder}: built from other weights than the FP model (weights fingerprint differs)")


def error_stats(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Max and mean abs error, cosine similarity and SQNR (dB) of ``output`` against ``reference``."""
    ref, out = reference.astype(np.float64).ravel(), output.astype(np.float64).ravel()
    diff = out - ref
    noise = float((diff ** 2).sum())
    cos = float(ref @ out / max(np.linalg.norm(ref) * np.linalg.norm(out), 1e-30))
    sqnr = float("inf") if noise == 0 else 10 * np.log10(max(float((ref ** 2).sum()), 1e-30) / noise)
    return {"max_abs": float(np.abs(diff).max()), "mean_abs": float(np.abs(diff).mean()), "cosine": cos,
            "sqnr_db": sqnr}


@dataclass(frozen=True)
class GeneratedInputs:
    """Per variant: the input sets, and whether their timesteps are ones the pipeline's defaults run."""

    feeds: dict[int, list[Feed]]
    in_run: dict[int, bool]
    source: str


def run_timesteps(engine: EngineSet) -> list[tuple[float, float]]:
    """(timestep, sigma) of every step the engine set's pipeline.json runs (its steps and start sigma)."""
    from qdit4sr_export.model.sampling import flow_schedule, start_index

    cfg = engine.pipeline_config()
    steps = int(cfg.get("steps", len(engine.timesteps)))
    timesteps, sigmas = flow_schedule(steps, shift=engine.shift())
    first = start_index(sigmas, float(cfg.get("start_sigma", 1.0)))
    return [(float(timesteps[i]), float(sigmas[i])) for i in range(first, steps)]


def _lr_latents(engine: EngineSet, cfg, count: int, side: int, seed: int) -> tuple[torch.Tensor, str]:
    """LR latents of the packaged calibration photos through the engine set's autoencoder, else seeded noise."""
    if (engine.folder / "vae" / "config.json").is_file():
        from qdit4sr_export.quant.calib_images import packaged_calibration_folder
        from qdit4sr_export.quant.calib_images import latents_from_folder

        photos = packaged_calibration_folder()
        if photos is not None:
            lat = latents_from_folder(photos, engine.folder, count=count, seed=seed, latent_side=side)
            if lat.shape[-1] == side:
                return lat, "packaged LR photos through the engine set's autoencoder"
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, cfg.in_channels, side, side, generator=g), "seeded Gaussian latents (no autoencoder)"


def generated_inputs(engine: EngineSet, model: torch.nn.Module, *, per_variant: int = 2, side: int = 16,
                     seed: int = 0) -> GeneratedInputs:
    """Per variant, up to ``per_variant`` input sets at the timesteps the pipeline runs on it (spread over them):
    ``x_t = (1 - sigma) * lr + sigma * noise`` with LR latents of real photos where the set has an autoencoder.
    A variant no default run reaches gets inputs at its own build-grid timesteps instead."""
    from qdit4sr_export.model.sampling import flow_schedule

    cfg = model.config
    prompt = _prompt(engine, cfg)
    run = run_timesteps(engine)
    grid_sigmas = flow_schedule(len(engine.timesteps), shift=engine.shift())[1]
    lrs, source = _lr_latents(engine, cfg, per_variant * len(engine.variants), side, seed)
    g = torch.Generator().manual_seed(seed + 1)
    feeds: dict[int, list[Feed]] = {}
    in_run: dict[int, bool] = {}
    n = 0
    for v in engine.variants:
        served = [(t, s) for t, s in run if engine.variant_for_timestep(t).index == v.index]
        in_run[v.index] = bool(served)
        if not served:
            served = [(engine.timesteps[i], float(grid_sigmas[i])) for i in v.steps]
        picks = np.unique(np.linspace(0, len(served) - 1, min(per_variant, len(served))).round().astype(int))
        feeds[v.index] = []
        for k in picks:
            t, sigma = served[int(k)]
            lr = lrs[n % len(lrs)][None]
            n += 1
            x = (1 - sigma) * lr + sigma * torch.randn(lr.shape, generator=g)
            feeds[v.index].append({"hidden_states": x.numpy(), "lr_latent": lr.numpy(),
                                   "encoder_hidden_states": prompt[0].numpy(), "pooled_projections": prompt[1].numpy(),
                                   "timestep": np.array([t], dtype=np.float32)})
    return GeneratedInputs(feeds, in_run, source)


def _prompt(engine: EngineSet, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    path = engine.folder / "prompt_embeds.safetensors"
    if path.is_file():
        from safetensors.torch import load_file

        p = load_file(str(path))
        if "prompt_embeds" in p and "pooled_prompt_embeds" in p:
            return p["prompt_embeds"].float()[:1], p["pooled_prompt_embeds"].float()[:1]
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 8, cfg.joint_attention_dim, generator=g), torch.randn(1, cfg.pooled_projection_dim, generator=g)


def load_inputs(path: str | Path, model: torch.nn.Module) -> list[Feed]:
    """Input sets from a .safetensors or .npz file holding the five inputs (leading batch dimension)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--inputs {path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                arrays = {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
        else:
            from safetensors.numpy import load_file

            arrays = {k: v.astype(np.float32) for k, v in load_file(str(path)).items()}
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        raise UserError(f"--inputs {path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    missing = [n for n in INPUTS if n not in arrays]
    extra = sorted(set(arrays) - set(INPUTS))
    if missing or extra:
        raise UserError(f"--inputs {path}: expected inputs {', '.join(INPUTS)}; missing {missing or 'none'}, "
                        f"unknown {extra or 'none'}")
    cfg = model.config
    x, lr = arrays["hidden_states"], arrays["lr_latent"]
    expect = {"hidden_states": (4, 1, cfg.in_channels), "lr_latent": (4, 1, cfg.in_channels),
              "encoder_hidden_states": (3, 2, cfg.joint_attention_dim), "pooled_projections": (2, 1, cfg.pooled_projection_dim),
              "timestep": (1, None, None)}
    for name, (rank, axis, size) in expect.items():
        a = arrays[name]
        if a.ndim != rank or (axis is not None and a.shape[axis] != size) or a.shape[0] != x.shape[0]:
            raise UserError(f"--inputs {path}: '{name}' has shape {list(a.shape)}; expected rank {rank}"
                            + (f" with {size} at axis {axis}" if axis is not None else "")
                            + f" and batch {x.shape[0]}")
    if x.shape != lr.shape or x.shape[2] != x.shape[3]:
        raise UserError(f"--inputs {path}: hidden_states and lr_latent must have the same square shape, got "
                        f"{list(x.shape)} and {list(lr.shape)}")
    return [{n: arrays[n][i:i + 1] for n in INPUTS} for i in range(x.shape[0])]


def torch_outputs(model: torch.nn.Module, feeds: list[Feed]) -> list[np.ndarray]:
    """The FP model's output for each input set."""
    outs = []
    with torch.no_grad():
        for f in feeds:
            args = [torch.from_numpy(f[n]) for n in INPUTS]
            outs.append(model(*args, return_dict=False)[0].numpy())
    return outs


@dataclass
class VariantResult:
    """One variant's comparison: metrics over its input sets (worst case) and whether it passed."""

    index: int
    file: str
    inputs: int
    timesteps: list[float]
    max_abs: float
    mean_abs: float
    cosine: float
    sqnr_db: float
    polygraphy_pass: bool | None
    passed: bool
    per_input: list[dict[str, float]]
    in_run: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_variant(engine: EngineSet, index: int, feeds: list[Feed], reference: list[np.ndarray],
                    tolerance: Tolerance, *, runner=None, providers: list[str] | None = None) -> VariantResult:
    """Run variant ``index`` through polygraphy and compare against the torch results: in polygraphy's
    OnnxrtRunner (the runtime's session settings) by default, or on ``runner`` (a backend's runner)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, CompareFunc, IterationResult, RunResults
    from polygraphy.logger import G_LOGGER

    variant = engine.variants[index]
    if runner is None:
        path = engine.folder / variant.file
        plugin_ops = uses_plugin_ops(engine)
        poly = OnnxrtRunner(lambda: make_session(path, providers or ["CPUExecutionProvider"], plugin_ops=plugin_ops),
                            name=variant.file)
    else:
        from qdit4sr_export.report.poly_runner import BackendVariantRunner

        poly = BackendVariantRunner(runner, index, f"{runner.name}:{variant.file}")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # polygraphy logs every inference to stdout
        results = Comparator.run([poly], data_loader=feeds, warm_up=0)
        outs = [np.asarray(it[OUTPUT]) for it in results[0][1]]
        fp = RunResults()
        fp.append((FP_RUNNER, [IterationResult({OUTPUT: r}, runner_name=FP_RUNNER) for r in reference]))
        fp.append(results[0])
        poly_pass = None
        if tolerance.atol is not None:
            accuracy = Comparator.compare_accuracy(fp, compare_func=CompareFunc.simple(atol=tolerance.atol, rtol=0.0))
            poly_pass = bool(accuracy)
    stats = [error_stats(r, o) for r, o in zip(reference, outs)]
    worst = {"max_abs": max(s["max_abs"] for s in stats), "mean_abs": float(np.mean([s["mean_abs"] for s in stats])),
             "cosine": min(s["cosine"] for s in stats), "sqnr_db": min(s["sqnr_db"] for s in stats)}
    passed = bool(worst["sqnr_db"] >= tolerance.min_sqnr and worst["cosine"] >= tolerance.min_cosine and poly_pass is not False)
    per_input = [{"timestep": float(f["timestep"][0]), **{k: st[k] for k in ("max_abs", "cosine", "sqnr_db")}}
                 for f, st in zip(feeds, stats)]
    return VariantResult(index, variant.file, len(feeds), [float(f["timestep"][0]) for f in feeds], **worst,
                         polygraphy_pass=poly_pass, passed=passed, per_input=per_input)
