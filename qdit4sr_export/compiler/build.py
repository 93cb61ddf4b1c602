"""``build``: checkpoint -> QuantPlan -> traced graph -> passes -> one lowered graph per variant -> engine set.

Passes, in order: FoldHadamardPass, InsertHSVDPass, AnnotateWeightBitsPass on the traced FP graph; then per
variant, on a clone (weights shared): SplitTimestepVariantsPass, LowerOrtPass. Method "fp" packages the FP
graph alone (the baseline and the oracle's twin).

Memory: the graph is traced without weights and every initializer is a lazy tensor (read from the checkpoint, then
rotated, decomposed and quantized by the passes' lazy tensors) computed when ``weights.bin`` is written, one tensor
at a time; the positional table is the crop for latents up to ``max_latent``. The destination's free space is
checked against the predicted size before the trace starts.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from qdit4sr_export.compiler.stages import Stages
from qdit4sr_export.engine.writer import io_specs, write_engine_set
from qdit4sr_export.model.folder import model_root
from qdit4sr_export.model.positions import max_grid
from qdit4sr_export.model.sampling import DEFAULT_SHIFT, flow_schedule
from qdit4sr_export.passes.registry import make_pass
from qdit4sr_export.quant.accounting import quantizable_linears
from qdit4sr_export.quant.plan import QuantPlan, architecture_fingerprint, weights_fingerprint
from qdit4sr_export.quant.variants import VariantSchedule, plan_variants
from qdit4sr_export.report.progress import progress_bar
from qdit4sr_export.report.size_report import checkpoint_bytes

log = logging.getLogger(__name__)

PIPELINE_SCHEMA = "qdit4sr-export/pipeline"
#: Latent side (not pixels) an engine set accepts by default: 1024 px outputs untiled; DiT4SR's tiles are 64.
DEFAULT_MAX_LATENT = 128
PROMPT_KEYS = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds")


@dataclass
class BuildResult:
    """What a build wrote, for the summary."""

    output: Path
    manifest: dict[str, Any]
    notices: list[str] = field(default_factory=list)


def timestep_ranges(timesteps: list[float], step_variant: list[int], index: int) -> list[list[float]]:
    """[low, high] timestep intervals (midpoints between grid steps) in which ``index`` runs."""
    ranges: list[list[float]] = []
    n = len(timesteps)
    for i, v in enumerate(step_variant):
        if v != index:
            continue
        hi = 1000.0 if i == 0 else (timesteps[i - 1] + timesteps[i]) / 2
        lo = 0.0 if i == n - 1 else (timesteps[i] + timesteps[i + 1]) / 2
        if ranges and ranges[-1][0] == hi:
            ranges[-1][0] = lo
        else:
            ranges.append([lo, hi])
    return ranges


def _write_extras(root: Path | None, model, steps: int, notices: list[str]) -> Callable[[Path], dict[str, Any]]:
    """Copy (or make) what the pipeline needs besides the transformer; returns a writer and fills notices."""
    from safetensors.torch import save_file

    cfg = model.config
    has = lambda rel: root is not None and (root / rel).exists()
    if not has("vae/config.json"):
        notices.append("the model folder has no vae/: the engine set runs the transformer only "
                       "(run needs an autoencoder to process images)")
    if not has("prompt_embeds.safetensors"):
        notices.append("the model folder has no prompt_embeds.safetensors: the engine set carries zero "
                       "(null) prompt embeddings")

    def write(folder: Path) -> None:
        if has("vae/config.json"):
            shutil.copytree(root / "vae", folder / "vae")
        if has("prompt_embeds.safetensors"):
            shutil.copyfile(root / "prompt_embeds.safetensors", folder / "prompt_embeds.safetensors")
        else:
            text = torch.zeros(1, 1, cfg.joint_attention_dim)
            pooled = torch.zeros(1, cfg.pooled_projection_dim)
            save_file({"prompt_embeds": text, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": text.clone(),
                       "negative_pooled_prompt_embeds": pooled.clone()}, str(folder / "prompt_embeds.safetensors"))
        (folder / "scheduler").mkdir()
        if has("scheduler/scheduler_config.json"):
            shutil.copyfile(root / "scheduler/scheduler_config.json", folder / "scheduler/scheduler_config.json")
        else:
            (folder / "scheduler/scheduler_config.json").write_text(json.dumps(
                {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                 "shift": DEFAULT_SHIFT}, indent=1) + "\n")
        if has("pipeline.json"):
            shutil.copyfile(root / "pipeline.json", folder / "pipeline.json")
        else:
            (folder / "pipeline.json").write_text(json.dumps(
                {"format": PIPELINE_SCHEMA, "version": 1, "steps": steps, "guidance_scale": 1.0, "start_sigma": 1.0,
                 "color_fix": "adain", "upscale": 4}, indent=1) + "\n")
    return write


def _variant_models(base, plan: QuantPlan, schedule: VariantSchedule, target, progress: bool):
    store = target.make_store()
    out = []
    for v in progress_bar(schedule.variants, desc="lowering variants", unit="variant",
                  enabled=progress):  # None: bars only on a terminal
        model = base.clone()
        make_pass("split-variants", variant=v)(model)
        lower = make_pass(target.lowering, plan=plan, store=store)
        lower(model)
        out.append((v, model, dict(sorted(lower.paths.items()))))
    return out, store


def _graph_passes(base, passes: list, progress: bool) -> None:
    for p in progress_bar(passes, desc="graph passes", unit="pass", enabled=progress):
        p(base)


def quantized_layers(plan: QuantPlan, store, initializers: set[str]) -> dict[str, dict[str, Any]]:
    """Per planned layer, what the engine set stores for it and under which names (what backends read)."""
    rows: dict[str, dict[str, Any]] = {}
    for (layer, bits), lw in sorted(store.entries.items()):
        row = rows.setdefault(layer, {"kind": lw.kind, "codes": {}, "scales": {}})
        row["codes"][str(bits)] = lw.codes.name
        if lw.scale is not None:
            row["scales"][str(bits)] = lw.scale.name
    for layer, row in rows.items():
        lp = plan.layers[layer]
        g_down = f"{layer}.svd_g.bt" if f"{layer}.svd_g.bt" in initializers else f"{layer}.svd_g.b"
        named = lambda *names: list(names) if all(n in initializers for n in names) else None
        row.update({"group_size": lp.group_size, "clip": lp.clip, "rotation": lp.rotation,
                    "smooth": f"{layer}.smooth" if f"{layer}.smooth" in initializers else None,
                    "svd_g": named(g_down, f"{layer}.svd_g.a"), "svd_g_down_transposed": g_down.endswith(".bt"),
                    "svd_l": named(f"{layer}.svd_l.v", f"{layer}.svd_l.u"),
                    "bias": f"{layer}.bias" if f"{layer}.bias" in initializers else None})
    return rows


def build_engine_set(model, model_path: str | Path, output: str | Path, *, plan: QuantPlan | None, steps: int,
                     max_variants: int | None, build_info: dict[str, Any], force: bool = False,
                     progress: bool = True, target: str = "ort", target_options: dict[str, Any] | None = None,
                     max_latent: int | None = None, stages: Stages | None = None) -> BuildResult:
    """Trace ``model``, apply ``target``'s passes for ``plan`` (None: FP), lower every variant, write the engine
    set. ``max_latent`` (latent side; default the smaller of 128 and the table) crops the positional table; larger
    inputs are refused at run time. The model may be opened lazily: every weight is read, transformed and written
    one layer at a time, never held twice. ``stages`` (optional) records the time and peak memory of each stage."""
    from qdit4sr_export.compiler.targets import get_target
    from qdit4sr_export.compiler.trace import trace_to_onnx
    from qdit4sr_export.engine.writer import check_destination, check_disk
    from qdit4sr_export.report.size_report import predicted_engine_bytes

    chosen = get_target(target)
    options = chosen.configure({}) if target_options is None else target_options
    output = Path(output)
    check_destination(output, force)
    latent = default_max_latent(model.config) if max_latent is None else max_latent
    grid = max_grid(model.config, latent)
    root = model_root(Path(model_path))
    schedule = plan_variants(plan, max_variants) if plan is not None else None
    check_disk(output, predicted_engine_bytes(model, plan, grid, root,
                                              variants=len(schedule.variants) if schedule else 1))
    stages = stages if stages is not None else Stages()
    notices: list[str] = []
    with stages.stage("trace"), progress_bar(total=1, desc="trace", unit="graph", enabled=progress) as bar:
        side = grid * model.config.patch_size
        base = trace_to_onnx(model, max_latent=side) if chosen.trace is None else \
            chosen.trace(model, plan, options, max_latent=side)
        bar.update()
    if plan is None:
        timesteps = [float(t) for t in flow_schedule(steps)[0]]
        lowered = [(None, base, {})]
        step_variant = [0] * len(timesteps)
        cap = None
        layers_stored: dict[str, Any] = {}
    else:
        timesteps = list(plan.timesteps)
        with stages.stage("passes"):
            _graph_passes(base, [make_pass(s, plan=plan) for s in chosen.graph_passes], progress)
        step_variant = list(schedule.step_variant)
        cap = schedule.report()
        with stages.stage("lowering"):
            lowered, store = _variant_models(base, plan, schedule, chosen, progress)
        names = {n for _, g, _ in lowered for n in g.graph.initializers}
        layers_stored = quantized_layers(plan, store, names)
    for _, graph, _ in lowered:  # target rewrites every graph gets, the FP build's included
        for step in chosen.final_passes:
            make_pass(step, plan=plan)(graph)
    variants = []
    files = []
    for i, (v, graph, paths) in enumerate(lowered):
        file = f"variant_{i:02d}.onnx"
        graph.metadata_props["qdit4sr.engine_set_variant"] = str(i)
        files.append((file, graph))
        entry = {"index": i, "file": file, "steps": [s for s, k in enumerate(step_variant) if k == i],
                 "timestep_ranges": timestep_ranges(timesteps, step_variant, i), "lowering": paths}
        if v is not None:
            bits = [b for b in v.abits.values() if b is not None]
            entry["mean_abits"] = sum(bits) / len(bits) if bits else None
            entry["float_activation_layers"] = sum(b is None for b in v.abits.values())
            entry["layers"] = {n: {"wbits": v.wbits[n], "abits": v.abits[n]} for n in sorted(v.abits)}
        variants.append(entry)
    linears = quantizable_linears(model)

    def manifest() -> dict[str, Any]:  # after the weights: the fingerprint then reads the checkpoint a last time
        return {
            "model": {"config": model.config.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
                      "checkpoint_bytes": checkpoint_bytes(model_path),
                      "architecture_fingerprint": architecture_fingerprint(model.config, linears),
                      "weights_fingerprint": weights_fingerprint(model, sorted(linears))},
            "build": build_info,
            "target": {"name": target, "options": options, "passes": chosen.pipeline()},
            "plan": "plan.json" if plan is not None else None,
            "max_latent": grid * model.config.patch_size,
            "timesteps": timesteps,
            "step_variant": step_variant,
            "variants": variants,
            "variant_cap": cap,
            "quantized_layers": layers_stored,
            **io_specs(files[0][1]),
            "notices": notices,
        }
    extras = _write_extras(root, model, steps, notices)
    written: dict[str, Any] = {}

    def write_all(folder: Path) -> None:
        extras(folder)
        if plan is not None:
            plan.save(folder / "plan.json")
        if chosen.finish is not None:  # e.g. serialized engines, built from the written graphs
            written["manifest"].update(chosen.finish(folder, written["manifest"], notices, options) or {})

    def manifest_now() -> dict[str, Any]:
        written["manifest"] = manifest()
        return written["manifest"]

    with stages.stage("write"):
        out = write_engine_set(output, files, manifest_now, write_all, force=force, progress=progress)
    return BuildResult(out, json.loads((out / "manifest.json").read_text()), notices)


def default_max_latent(config) -> int:
    """The latent side an engine set accepts by default: DEFAULT_MAX_LATENT, or the whole table when smaller."""
    return min(DEFAULT_MAX_LATENT, config.pos_embed_max_size * config.patch_size)
