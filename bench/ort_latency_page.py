"""The page of bench/ort_latency.py's result: its tables, the upper bounds its profiles imply, and the reading of
them, every number computed from the result."""

from __future__ import annotations

from common import provenance
from ort_breakdown import CATEGORIES

FUSABLE = ("rotation", "quantize + rescale")  # what a fused rotate-quantize kernel would remove


def speed_bound(speedup: float, categories_ms: dict[str, float], removed: tuple[str, ...]) -> float:
    """The speed against FP if the ``removed`` categories cost nothing: the measured speed divided by the share of
    the set's kernel time left (an upper bound for a kernel that fuses them away)."""
    total = sum(categories_ms.values())
    return speedup / (1 - sum(categories_ms[c] for c in removed) / total)


def bounds(e: dict, label: str) -> tuple[float, float]:
    """A set's speed bounds: rotation and quantization free, then also the H-SVD branch."""
    cats, speed = e["profile"][label]["categories_ms"], e["step"][label]["speedup"]
    return speed_bound(speed, cats, FUSABLE), speed_bound(speed, cats, (*FUSABLE, "H-SVD branch"))


def bound_rows(e: dict) -> list[str]:
    """Markdown rows: each quantized set's measured speed and its bounds."""
    rows = ["", ("Upper bounds from this profile: the measured speed divided by the share of the set's kernel time "
                 "left when the named categories cost nothing:"), "",
            "| engine | measured speed | rotation + quantize free | also H-SVD branch free |", "|---|---|---|---|"]
    for label, r in e["step"].items():
        if label != "FP32":
            fused, branch = bounds(e, label)
            rows.append(f"| {label} | {r['speedup']:.2f}x | {fused:.2f}x | {branch:.2f}x |")
    return rows


def model_section(e: dict, result: dict) -> list[str]:
    own = f"by `{e['command']}`, " if e.get("command", result["command"]) != result["command"] else ""
    lines = [f"## {e['config']}", "",
             (f"Measured {own}{e.get('date', result['date'])}. Machine: {e.get('machine', result['machine'])}; "
              f"{e['threads']} threads, load average {e['load_before']} -> {e['load_after']}."), "",
             "| engine | ms per step | speed vs FP32 | weights.bin |", "|---|---|---|---|"]
    for label, r in e["step"].items():
        size = e["weights_bytes"][label] / 1e6
        lines.append(f"| {label} | {r['median_ms']:.0f} | {r['speedup']:.2f}x | {size:.1f} MB |")
    if "run" in e:
        lines += ["", ("`qdit4sr-export run` on the four examples/lr photos, whole command (median of "
                       f"{len(next(iter(e['run'].values()))['times_ms'])}):"), "",
                  "| engine | s | speed vs FP32 | of which transformer steps (s) |", "|---|---|---|---|"]
        for label, r in e["run"].items():
            lines.append(f"| {label} | {r['median_ms'] / 1000:.1f} | {r['speedup']:.2f}x | {r['transformer_s']} |")
    lines += ["", "Per-op breakdown (ONNX Runtime profiler, kernel ms per step, runner sessions):", "",
              "| category | " + " | ".join(e["profile"]) + " |", "|---" * (len(e["profile"]) + 1) + "|"]
    for cat in CATEGORIES:
        lines.append(f"| {cat} | " + " | ".join(f"{p['categories_ms'][cat]:.0f}" for p in e["profile"].values()) + " |")
    lines += bound_rows(e)
    if "prepacked" in e:
        lines += ["", ("`--backend ort-prepacked` (each variant session folds and prepacks its own copy of the "
                       "weights) against the runtime's shared runner, timed alternately in one loop; speed against "
                       "the FP32 set on the same backend:"), "",
                  "| engine | runner ms | speed vs FP32 | prepacked ms | speed vs FP32 | prepacked vs runner |",
                  "|---|---|---|---|---|---|"]
        for label, r in e["prepacked"].items():
            lines.append(f"| {label} | {r['runner_ms']:.0f} | {r['runner_speedup']:.2f}x | {r['prepacked_ms']:.0f} "
                         f"| {r['prepacked_speedup']:.2f}x | {r['prepacked_vs_runner']:.2f}x |")
    lines += ["", ("The runtime's session settings against the stored graph as is and ONNX Runtime's defaults "
                   "(ms per step; speed relative to the runner):"), "",
              "| engine | runner | stored graph, runtime settings | ORT defaults (prepacking, constant folding) |",
              "|---|---|---|---|"]
    for label, s in e["settings"].items():
        cell = lambda k, s=s: f"{s[k]['median_ms']:.0f} ({s[k]['speedup']:.2f}x)"  # noqa: E731
        lines.append(f"| {label} | {s['runner']['median_ms']:.0f} | {cell('stored graph')} | {cell('ORT defaults')} |")
    return [*lines, ""]


def span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}x"


def medium_reading(e: dict) -> list[str]:
    step, packed, prof = e["step"], e.get("prepacked", {}), e["profile"]
    ms = lambda label, cat: prof[label]["categories_ms"][cat]  # noqa: E731
    out = []
    noise = [abs(step[k]["speedup"] - packed[k]["runner_speedup"]) for k in packed if k != "FP32"]
    if noise:
        out.append(f"- Within this run the step table and the prepacked table's runner column differ by up to "
                   f"{max(noise):.2f}x for the same sets: differences of that size are run-to-run noise on a shared "
                   "machine.")
    if "W8A8" in step:
        runner = [step["W8A8"]["speedup"]] + ([packed["W8A8"]["runner_speedup"]] if "W8A8" in packed else [])
        gemm = [ms(k, "integer GEMM") for k in ("W8A8", "W4A4") if k in step]
        linear = ms("FP32", "float linear")
        out.append(f"- **dit4sr-medium blocks, W8A8: {span(runner)} through the runtime's runner"
                   + (f", {packed['W8A8']['prepacked_speedup']:.2f}x with `--backend ort-prepacked`" if "W8A8" in packed
                      else "") + ".** W8A8 and W4A4 run the same u8 x s8 kernel: 8-bit weights are stored as "
                   "int8 where the machine's kernel is exact, and 4-bit weights are unpacked to int8 once per process. "
                   f"Their integer GEMMs take {min(gemm):.0f}-{max(gemm):.0f} ms against the float linears' "
                   f"{linear:.0f} ms "
                   f"({linear / max(gemm):.2f}-{linear / min(gemm):.2f}x).")
    if {"W4A4", "W4A4 QuaRot", "W4A4 RTN"} <= step.keys():
        runner = [step["W4A4"]["speedup"]] + ([packed["W4A4"]["runner_speedup"]] if "W4A4" in packed else [])
        extra = ms("W4A4", "rotation") + ms("W4A4", "H-SVD branch")
        fused, branch = bounds(e, "W4A4")
        out.append(f"- **dit4sr-medium blocks, W4A4 (Q-DiT4SR): {span(runner)} through the runner"
                   + (f", {packed['W4A4']['prepacked_speedup']:.2f}x prepacked" if "W4A4" in packed else "")
                   + ".** The ladder prices each part of the method: RTN (integer GEMMs and per-token quantization "
                   f"only) runs at {step['W4A4 RTN']['speedup']:.2f}x, adding the online rotations (QuaRot) gives "
                   f"{step['W4A4 QuaRot']['speedup']:.2f}x, adding the H-SVD branches (Q-DiT4SR) "
                   f"{step['W4A4']['speedup']:.2f}x. In the profile the rotations take {ms('W4A4', 'rotation'):.0f} ms "
                   f"and the branches {ms('W4A4', 'H-SVD branch'):.0f} ms, "
                   f"{100 * extra / sum(prof['W4A4']['categories_ms'].values()):.0f}% of the W4A4 profile's kernel "
                   "time. ONNX Runtime's own ops have no fused rotate-quantize op and no GEMM that adds a float branch "
                   f"to an integer product. The upper-bound table prices a fused kernel: {fused:.2f}x with the "
                   f"rotations and the quantization chain free, {branch:.2f}x with the H-SVD branch free as well.")
    return out


def prepacked_reading(models: dict) -> list[str]:
    medium, example = models.get("medium", {}).get("prepacked", {}), models.get("example", {}).get("prepacked", {})
    if not medium and not example:
        return []
    parts = []
    quantized = [r["prepacked_vs_runner"] for k, r in medium.items() if k != "FP32"]
    if quantized:
        parts.append(f"it makes the medium quantized steps {span(quantized)} as fast as the shared runner, and FP32 "
                     f"{medium['FP32']['prepacked_vs_runner']:.2f}x")
    if example:
        parts.append("on the example model " + ", ".join(f"{r['prepacked_vs_runner']:.2f}x for {k}"
                                                         for k, r in example.items()))
    return ["- **`--backend ort-prepacked`** (each session folds the INT4 casts and prepacks its own int8 weights): "
            + "; ".join(parts) + ". It costs one private weight copy per variant session, where the runner keeps one "
            "shared copy."]


def example_reading(e: dict) -> list[str]:
    step, fp = e["step"], e["profile"]["FP32"]["categories_ms"]
    if "W4A4" not in step:
        return []
    total, linear = sum(fp.values()), fp["float linear"]
    w4 = e["profile"]["W4A4"]["categories_ms"]
    fused, branch = bounds(e, "W4A4")
    out = [f"- **Example model, W4A4: {step['W4A4']['speedup']:.2f}x per step"
           + (f", {e['run']['W4A4']['speedup']:.2f}x for `run` on the four photos" if "run" in e else "")
           + f".** Attention (FP in every plan) takes {fp['attention']:.0f} of the FP step's {total:.0f} kernel ms, "
           f"the other ops both graphs share {fp['other']:.0f} and the float linears {linear:.0f}: quantized linears "
           f"that cost nothing at all would give at most {total:.0f} / {total - linear:.0f} = "
           f"{total / (total - linear):.2f}x. The W4A4 profile's upper bounds say the same: {fused:.2f}x with the "
           f"rotations and quantization free, {branch:.2f}x with the H-SVD branch free as well."]
    if "W4A4 RTN" in step:
        run = e.get("run", {}).get("W4A4 RTN")
        out.append(f"- The cheapest W4A4 graph, RTN with no rotation and no branch, runs at "
                   f"{step['W4A4 RTN']['speedup']:.2f}x per step"
                   + (f" and {run['speedup']:.2f}x end to end (the noisier ratio: a median of {len(run['times_ms'])} "
                      "whole commands)" if run else "") + ".")
    out.append("- At this width Q-DiT4SR's H-SVD branch (its SVD-G and SVD-L factors) holds more values than the "
               "weight, so it runs as a dense float GEMM as large as the layer it accompanies: "
               f"{w4['H-SVD branch']:.0f} ms per step, against {linear:.0f} ms for all of the FP step's float linears; "
               "the rotations take "
               f"{w4['rotation']:.0f} ms.")
    return out


def settings_reading(models: dict) -> list[str]:
    speeds = {f"{m} {k}": s["ORT defaults"]["speedup"] for m, e in models.items() for k, s in e["settings"].items()}
    w8 = {k: v for k, v in speeds.items() if k.endswith(" W8A8")}
    rest = [v for k, v in speeds.items() if k not in w8]
    if not rest:
        return []
    line = (f"- ONNX Runtime's defaults on the stored graphs (prepacking and constant folding, so private weight "
            f"copies) run at {span(rest)} the runner's speed")
    if w8:
        line += (f"; W8A8 at {span(list(w8.values()))}: its stored uint8 weights take the u8 x u8 kernel, which the "
                 "runner and `ort-prepacked` avoid by shifting them to int8")
    return [line + "."]


def render(result: dict) -> str:
    models = result["models"]
    lines = ["# ONNX Runtime latency", "", provenance(result), "",
             (f"ONNX Runtime {result['onnxruntime']}. Engine sets run through the runtime's own sessions "
              "(`OrtRunner`), timed in turn in one process; medians, speed = median of the per-round ratios against "
              "FP32 in the same run. The machine is shared with other jobs (load average below): absolute times are "
              "inflated, ratios are what count."), ""]
    for e in models.values():
        lines += model_section(e, result)
    if "--quick" in result["command"]:
        lines.append("A check run of the script (dit4sr-tiny blocks, a 16x16 latent, one round): its numbers say "
                     "nothing about speed.")
        return "\n".join(lines) + "\n"
    reading = (medium_reading(models["medium"]) if "medium" in models else []) + prepacked_reading(models)
    reading += (example_reading(models["example"]) if "example" in models else []) + settings_reading(models)
    lines += ["## Reading the tables", "", "Every number below is computed from the tables above.", "", *reading]
    return "\n".join(lines) + "\n"
