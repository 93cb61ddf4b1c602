"""What a plan or an engine set holds: per-layer bits, H-SVD ranks, activation-bit schedules and bytes; totals in
the paper's Params (M) and bit-operations; the engine set's variant timeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qdit4sr_export.engine.jsonfile import read_json_object
from qdit4sr_export.errors import UserError
from qdit4sr_export.passes.storage import layer_bytes
from qdit4sr_export.quant.accounting import account
from qdit4sr_export.quant.plan import QuantPlan

SCHEMA = "qdit4sr-export/inspect"
VERSION = 1


def load_target(path: str | Path) -> tuple[QuantPlan | None, dict[str, Any] | None]:
    """(plan, engine manifest) of an engine-set folder (plan None for an FP set) or of a plan file."""
    path = Path(path)
    if path.is_dir():
        from qdit4sr_export.engine.format import read_manifest

        manifest = read_manifest(path)
        plan_file = manifest.get("plan")
        return (QuantPlan.load(path / plan_file) if plan_file else None), manifest
    if not path.is_file():
        raise UserError(f"{path}: no such engine set or plan file")
    return QuantPlan.load(path), None


def run_lengths(values: tuple) -> str:
    """``(4, 4, 4, 6, 6)`` -> ``"4x3 6x2"`` (``fp`` for float steps)."""
    out, prev, count = [], object(), 0
    for v in list(values) + [object()]:
        if v == prev:
            count += 1
            continue
        if count:
            out.append(f"{'fp' if prev is None else prev}x{count}")
        prev, count = v, 1
    return " ".join(out)


def run_window(plan: QuantPlan, target: str | Path) -> dict[str, Any] | None:
    """Which of the plan's grid steps a run executes, or None when that is unknown (a plan without a start sigma).

    An engine set's run starts where its ``pipeline.json`` says (``start_sigma`` on a grid of ``steps``, diffusers'
    img2img start); a plan file's where its method's ``start_sigma`` says. A grid step runs when its sigma (timestep
    / 1000) is at most the sigma the run starts from."""
    from qdit4sr_export.model.sampling import DEFAULT_SHIFT, flow_schedule, start_index

    target = Path(target)
    if not target.is_dir():
        return plan_run_window(plan)
    pipeline = target / "pipeline.json"
    if not pipeline.is_file():
        return None
    cfg = read_json_object(pipeline, "pipeline settings")
    scheduler = target / "scheduler" / "scheduler_config.json"
    shift = float(read_json_object(scheduler, "scheduler config").get("shift", DEFAULT_SHIFT)) \
        if scheduler.is_file() else DEFAULT_SHIFT
    steps, start_sigma = int(cfg.get("steps", len(plan.timesteps))), float(cfg.get("start_sigma", 1.0))
    sigmas = flow_schedule(steps, shift=shift)[1]
    first_sigma = float(sigmas[start_index(sigmas, start_sigma)])
    return _window(plan, start_sigma, steps, "pipeline.json", first_sigma)


def plan_run_window(plan: QuantPlan) -> dict[str, Any] | None:
    """``run_window`` from the plan alone: the grid steps at or below its method's ``start_sigma`` (None without)."""
    start_sigma = plan.method_config.get("start_sigma")
    if start_sigma is None:
        return None
    start_sigma = float(start_sigma)
    first_sigma = next((t / 1000 for t in plan.timesteps if t / 1000 <= start_sigma + 1e-6), plan.timesteps[-1] / 1000)
    return _window(plan, start_sigma, len(plan.timesteps), "plan", first_sigma)


def _window(plan: QuantPlan, start_sigma: float, steps: int, source: str, first_sigma: float) -> dict[str, Any]:
    runs = [float(t) / 1000 <= first_sigma + 1e-6 for t in plan.timesteps]
    return {"start_sigma": start_sigma, "steps": steps, "source": source, "runs": runs,
            "first_step": runs.index(True) if any(runs) else len(runs)}


def report(plan: QuantPlan | None, manifest: dict[str, Any] | None, *, latent_side: int = 64,
           target: str | Path | None = None) -> dict[str, Any]:
    """The inspect report as a JSON-ready dict (``target``: where the plan came from, for the steps a run executes)."""
    from qdit4sr_export.model import build_dit4sr
    from qdit4sr_export.model.config import DiT4SRConfig

    out: dict[str, Any] = {"schema": SCHEMA, "version": VERSION, "plan": None, "layers": [], "variants": None}
    if plan is not None:
        model = build_dit4sr(DiT4SRConfig.from_dict(plan.model_config), device="meta")
        acc = account(plan, model, latent_side=latent_side)
        out["plan"] = {"method": plan.method, "layers": len(plan.layers), "steps": len(plan.timesteps),
                       "timesteps": [float(t) for t in plan.timesteps], **acc.summary(),
                       "stored_mb": round(sum(layer_bytes(lp) for lp in plan.layers.values()) / 1e6, 3),
                       "runs": run_window(plan, target) if target is not None else None}
        for name, lp in plan.layers.items():
            out["layers"].append({
                "layer": name, "shape": [lp.out_features, lp.in_features], "wbits": lp.wbits,
                "wbits_schedule": list(lp.wbits_schedule) if lp.wbits_schedule else None,
                "svd_rank": lp.svd_rank, "local_block": list(lp.local_block) if lp.local_block else None,
                "abits": list(lp.abits), "abits_runs": run_lengths(lp.abits), "active": lp.active,
                "bytes": layer_bytes(lp)})
    if manifest is not None:
        from qdit4sr_export.report.size_report import size_breakdown

        out["sizes"] = size_breakdown(manifest)
        ts = manifest["timesteps"]
        out["variants"] = [{"index": v["index"], "file": v["file"], "steps": v["steps"],
                            "timestep_ranges": v["timestep_ranges"], "mean_abits": v.get("mean_abits"),
                            "lowering": v["lowering"]} for v in manifest["variants"]]
        out["timeline"] = [{"step": i, "timestep": t, "variant": k} for i, (t, k) in enumerate(zip(ts, manifest["step_variant"]))]
    return out


def format_report(rep: dict[str, Any], *, layers: bool = True) -> str:
    """Terminal text of ``report``."""
    lines = []
    p = rep["plan"]
    if p is None:
        lines.append("no quantization plan (an FP engine set)")
    else:
        lines.append(f"method {p['method']}: {p['layers']} layers, {p['steps']} steps, mean weight bits "
                     f"{p['avg_wbits']:.2f}")
        lines.append(f"paper accounting: Params {p['params_m']} M in 32-bit units (FP {p['fp_params_m']} M, "
                     f"{p['size_ratio']}x smaller), {p['gbops_per_step']} GBOPs/step (FP {p['fp_gbops_per_step']}) "
                     f"at a {p['bops_latent_side']}-px latent; the planned layers store {p['stored_mb']} MB "
                     "(codes, scales, FP branches)")
        runs = p.get("runs")
        if runs is not None:
            n, first = len(runs["runs"]), runs["first_step"]
            which = f"all {n} grid steps" if first == 0 else f"grid steps {first}-{n - 1} of {n} (earlier ones never run)"
            lines.append(f"a run executes {which}: start sigma {runs['start_sigma']}, from the {runs['source']}")
    if layers and rep["layers"]:
        lines.append(f"{'layer':<52}{'out x in':>12}{'W':>3}{'rank':>6}{'SVD-L':>9}{'bytes':>11}  activation bits")
        for r in rep["layers"]:
            block = "x".join(map(str, r["local_block"])) if r["local_block"] else "-"
            lines.append(f"{r['layer']:<52}{r['shape'][0]:>6}x{r['shape'][1]:<5}{r['wbits']:>3}{r['svd_rank']:>6}"
                         f"{block:>9}{r['bytes']:>11}  {r['abits_runs']}" + ("" if r["active"] else "  (inactive)"))
    if rep.get("sizes") is not None:
        from qdit4sr_export.report.size_report import format_breakdown

        lines.extend(format_breakdown(rep["sizes"]))
    if rep["variants"] is not None:
        lines.append(f"{len(rep['variants'])} variant(s):")
        for v in rep["variants"]:
            ranges = " ".join(f"({lo:.0f},{hi:.0f}]" for lo, hi in v["timestep_ranges"])
            mean = f", mean activation bits {v['mean_abits']:.2f}" if v["mean_abits"] is not None else ""
            lines.append(f"  {v['file']}: steps {v['steps']}, timesteps {ranges}{mean}")
        lines.append("timeline: " + " ".join(str(t["variant"]) for t in rep["timeline"]))
    return "\n".join(lines)
