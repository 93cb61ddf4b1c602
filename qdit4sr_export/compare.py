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
from qdit4sr_export.runtime.backends import INPUTS, make_session
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


def generated_inputs(engine: EngineSet, model: torch.nn.Module, *, per_variant: int = 2, side: int = 16,
                     seed: int = 0) -> dict[int, list[Feed]]:
    """Per variant: ``per_variant`` seeded input sets at timesteps of that variant's own steps (first, last...)."""
    cfg = model.config
    prompt = _prompt(engine, cfg)
    g = torch.Generator().manual_seed(seed)
    feeds: dict[int, list[Feed]] = {}
    for v in engine.variants:
        picks = np.unique(np.linspace(0, len(v.steps) - 1, min(per_variant, len(v.steps))).round().astype(int))
        feeds[v.index] = []
        for k in picks:
            t = engine.timesteps[v.steps[int(k)]]
            x = torch.randn(1, cfg.in_channels, side, side, generator=g)
            lr = torch.randn(1, cfg.in_channels, side, side, generator=g)
            feeds[v.index].append({"hidden_states": x.numpy(), "lr_latent": lr.numpy(),
                                   "encoder_hidden_states": prompt[0].numpy(), "pooled_projections": prompt[1].numpy(),
                                   "timestep": np.array([t], dtype=np.float32)})
    return feeds


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def polygraphy_runner(runner, index: int, name: str):
    """A polygraphy runner over one of our runners (``activate / infer / deactivate``) at variant ``index``, so
    backends that do not run the ONNX graphs (triton) are compared by the same Comparator."""
    import time
    from collections import OrderedDict

    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class BackendRunner(BaseRunner):
        def activate_impl(self) -> None:
            runner.activate(index)

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for n, rank in zip(INPUTS, (4, 4, 3, 2, 1)):
                meta.add(n, np.float32, [None] * rank)
            return meta

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            out = runner.infer(*(torch.from_numpy(np.asarray(feed_dict[n])) for n in INPUTS))
            self.inference_time = time.perf_counter() - start
            return OrderedDict([(OUTPUT, out.numpy())])

        def deactivate_impl(self) -> None:
            runner.deactivate()

    return BackendRunner(name=name)


def compare_variant(engine: EngineSet, index: int, feeds: list[Feed], reference: list[np.ndarray],
                    tolerance: Tolerance, *, providers: list[str] | None = None, runner=None) -> VariantResult:
    """Run variant ``index`` in polygraphy's OnnxrtRunner (or, given ``runner``, through that backend's runner)
    and compare against the torch results."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, CompareFunc, IterationResult, RunResults
    from polygraphy.logger import G_LOGGER

    variant = engine.variants[index]
    if runner is None:
        path = engine.folder / variant.file
        poly = OnnxrtRunner(lambda: make_session(path, providers or ["CPUExecutionProvider"]), name=variant.file)
    else:
        poly = polygraphy_runner(runner, index, f"{runner.name}:{variant.file}")
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # polygraphy logs every inference to stdout
        return _compare_variant(engine, index, feeds, reference, tolerance, poly, Comparator, CompareFunc,
                                IterationResult, RunResults)


def _compare_variant(engine, index, feeds, reference, tolerance, runner, Comparator, CompareFunc,
                     IterationResult, RunResults) -> VariantResult:
    variant = engine.variants[index]
    results = Comparator.run([runner], data_loader=feeds, warm_up=0)
    ran = results[0][1]
    outs = [np.asarray(it[OUTPUT]) for it in ran]
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
    return VariantResult(index, variant.file, len(feeds), [float(f["timestep"][0]) for f in feeds], **worst,
                         polygraphy_pass=poly_pass, passed=passed)
