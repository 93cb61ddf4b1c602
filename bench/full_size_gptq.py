"""What GPTQ on the rotated residual costs at the released size on this CPU: the real ``qdit4sr-export
plan`` with static bits (uniform W4, static A4, no VaTMP), without and with ``-O gptq=true``, on the random
heavy-tailed released-size checkpoint and on one with the same widths but only 2 of its 24 blocks.

With GPTQ the plan runs the calibration trajectory streamed from the checkpoint (one block's weights in memory),
then the blocks one at a time over the recorded states, accumulating one block's Hessians, rounding that block's
residuals and letting both go before the next block: the memory budget is the full-size one (16 GB). Each plan is
a subprocess stopped past a wall-clock cap or past 16 GB of anonymous RSS (``full_size_methods.capped``: peak RSS of
the process tree sampled each second, the load average while it ran). The GPTQ cost is the difference of the two
plans of the same checkpoint, timed one after the other in this run; the 2-block rows say how it scales.

Writes bench/results/full_size_gptq.json (``common.write_result``); ``render(result)`` gives its Markdown section.
Run: nice -n 10 python bench/full_size_gptq.py WORKDIR [--blocks-only] [--cap-minutes 60]
(WORKDIR/checkpoint: ``examples/make_random_dit4sr.py dit4sr-medium WORKDIR/checkpoint --heavy-tailed``; the 2-block
checkpoint is made here when missing.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, provenance, write_result
from full_size import timed
from full_size_methods import available_bytes, capped, wait_for_memory

CALIB = ROOT / "qdit4sr_export" / "data" / "calib"
BLOCKS = 2
BUDGET_GB = 16.0
VARIANTS = (("static bits", []), ("static bits + GPTQ", ["-O", "gptq=true"]))


def plan_cmd(ckpt: Path, extra: list[str], steps: int, calib_count: int, out: Path) -> list[str]:
    """Uniform W4, static A4 (VaTMP off), the grid and the calibration set as ``-O`` options and flags."""
    return [sys.executable, "-m", "qdit4sr_export", "plan", str(ckpt), "--method", "qdit4sr", "--wbits", "4",
            "-O", "vatmp=false", "-O", "abits=4", "-O", f"steps={steps}", "--calib", str(CALIB),
            "--calib-count", str(calib_count), *extra, "-o", str(out)]


def measure(work: Path, model: str, ckpt: Path, label: str, extra: list[str], args: argparse.Namespace) -> dict:
    wait_for_memory(int(args.min_available_gb * 2**30))
    available = round(available_bytes() / 2**30, 1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        cmd = plan_cmd(ckpt, extra, args.steps, args.calib_count, out)
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        row = capped(cmd, work, args.cap_minutes * 60, int(BUDGET_GB * 2**30))
        notes = json.loads(out.read_text()).get("notes", []) if out.is_file() else []
    if row["stopped"] is None and (row["returncode"] != 0 or not notes and extra):
        row["stopped"] = f"failed (exit {row['returncode']})"
    shown = " ".join(["qdit4sr-export plan", str(ckpt.name), *cmd[5:cmd.index("-o")]]).replace(str(ROOT) + "/", "")
    return {"model": model, "variant": label, "command": shown, "started": started,
            "available_gb_at_start": available, "notes": notes, **row}


def render(result: dict) -> str:
    """The Markdown section: one row per plan, then the GPTQ cost per checkpoint."""
    lines = ["# Full size: GPTQ's cost", "", provenance(result), "",
             "2 cores (load: the mean 1-minute load average while the plan ran; above 2, it shared them). The real `qdit4sr-export plan` (commands below) with static bits on a random heavy-tailed checkpoint in the "
             f"released layout: dit4sr-medium (24 blocks, 2.7 B parameters) or its widths with {BLOCKS} blocks; "
             f"{result['calib_count']} calibration crops of 128 px, a {result['steps']}-step grid from sigma 1. Each "
             f"plan ran under a {BUDGET_GB:.0f} GB cap on its anonymous RSS (the full-size memory budget); peak RSS "
             "counts the checkpoint pages it mapped too.", "",
             "| checkpoint | plan | time | peak RSS (anon.) | load | stopped |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['variant']} | {r['seconds']:.0f} s | {r['peak_rss_mb'] / 1024:.2f} GB "
                     f"({r['peak_anon_rss_mb'] / 1024:.2f}) | {r['load_mean']} | {r['stopped'] or 'no'} |")
    lines += [""]
    for model, cost in result["gptq_cost"].items():
        lines.append(f"- {model}: GPTQ adds {cost['seconds']:.0f} s ({cost['ratio']:.2f}x the static plan's time)"
                     + (f", {cost['per_layer_s']:.2f} s per layer over {cost['layers']} layers" if cost["layers"]
                        else ""))
    gptq_notes = {r["model"]: next((n for n in r["notes"] if n.startswith("GPTQ on")), None) for r in result["rows"]}
    lines += [f"- {m}'s plan note: \"{n}\"" for m, n in gptq_notes.items() if n]
    lines += ["", "Commands:", ""] + [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in result["rows"])]
    return "\n".join(lines) + "\n"


def cost(rows: list[dict]) -> dict:
    """Per checkpoint: the GPTQ plan's extra seconds over the static plan, as a ratio and per GPTQ'd layer."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        base = next((r for r in rows if r["model"] == model and r["variant"] == VARIANTS[0][0]), None)
        gptq = next((r for r in rows if r["model"] == model and r["variant"] == VARIANTS[1][0]), None)
        if base is None or gptq is None or base["stopped"] or gptq["stopped"]:
            continue
        note = next((n for n in gptq["notes"] if n.startswith("GPTQ on")), "")
        layers = int(note.split()[2]) if note else 0
        extra = gptq["seconds"] - base["seconds"]
        out[model] = {"seconds": round(extra, 1), "ratio": round(gptq["seconds"] / base["seconds"], 2),
                      "layers": layers, "per_layer_s": round(extra / layers, 3) if layers else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--blocks-only", action="store_true", help=f"only the {BLOCKS}-block checkpoint")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--calib-count", type=int, default=2)
    parser.add_argument("--cap-minutes", type=float, default=60.0, help="per-plan wall-clock cap")
    parser.add_argument("--min-available-gb", type=float, default=17.0, help="wait for this much free memory first")
    args = parser.parse_args()
    small, full = args.workdir / f"checkpoint-{BLOCKS}blocks", args.workdir / "checkpoint"
    if not (small / "transformer").is_dir():
        _, wall, peak = timed([sys.executable, str(ROOT / "examples" / "make_random_dit4sr.py"), "dit4sr-medium",
                               str(small), "--heavy-tailed", "--blocks", str(BLOCKS)], args.workdir)
        print(f"made {small} in {wall:.1f} s, peak RSS {peak / 2**30:.2f} GB", flush=True)
    models = [(f"{BLOCKS} blocks", small)] + ([] if args.blocks_only else [("24 blocks", full)])
    if not args.blocks_only and not (full / "transformer").is_dir():
        raise SystemExit(f"{args.workdir}: expected checkpoint/ (examples/make_random_dit4sr.py dit4sr-medium "
                         "WORKDIR/checkpoint --heavy-tailed)")
    rows = []
    for model, ckpt in models:
        for label, extra in VARIANTS:
            rows.append(measure(args.workdir, model, ckpt, label, extra, args))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "stderr_tail"}), flush=True)
    result = {"steps": args.steps, "calib_count": args.calib_count, "budget_gb": BUDGET_GB, "rows": rows,
              "gptq_cost": cost(rows)}
    path = write_result("full_size_gptq", result)
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
