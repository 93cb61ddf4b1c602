"""What VaTMP's calibration costs at the released size on this CPU.

``plan`` with calibration on the checkpoint ``bench/full_size.py --keep`` leaves, over a short grid, timed with its
peak memory, next to the same plan without calibration (static bits), so the difference is the calibration and the
VaTMP search.

Writes bench/results/full_size_calibration.json; ``render`` gives its page (bench/render.py).
Run: python bench/full_size_calibration.py WORKDIR [--grid-steps 4] [--calib-count 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import ROOT, provenance, publish
from full_size import timed

CALIB = ROOT / "qdit4sr_export" / "data" / "calib"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--grid-steps", "--steps", dest="steps", type=int, default=4,
                        help="sampling grid (every step runs from sigma 1)")
    parser.add_argument("--calib-count", type=int, default=2)
    args = parser.parse_args()
    ckpt = args.workdir / "checkpoint"
    if not (ckpt / "transformer").is_dir():
        raise SystemExit(f"{args.workdir}: expected checkpoint/ (bench/full_size.py --keep)")
    base = [sys.executable, "-m", "qdit4sr_export", "plan", str(ckpt), "--wbits", "auto", "--grid-steps",
            str(args.steps), "--json"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate((("static bits (no calibration)", ["--abits", "4"]),
                                           (f"VaTMP, {args.calib_count} calibration crops",
                                            ["--abits", "auto", "--abits-budget", "4", "--calib", str(CALIB),
                                             "--calib-count", str(args.calib_count)]))):
            out = Path(tmp) / f"plan{i}.json"
            _, wall, peak = timed([*base, *extra, "-o", str(out)], args.workdir)
            notes = json.loads(out.read_text()).get("notes", [])
            rows.append({"plan": name, "seconds": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1),
                         "notes": notes})
            print(rows[-1], flush=True)
    result = {"steps": args.steps, "calib_count": args.calib_count, "rows": rows,
              "calibration_seconds": round(rows[1]["seconds"] - rows[0]["seconds"], 1)}
    publish("full_size_calibration", result, render)


def render(result: dict) -> str:
    steps, crops = result["steps"], result["calib_count"]
    lines = ["# Full size: calibration", "", provenance(result), "",
             "`qdit4sr-export plan --wbits auto` on the random heavy-tailed released-size checkpoint of "
             f"`bench/full_size.py`, static 4-bit activations against VaTMP at 4 bits average, a {steps}-step grid "
             f"from sigma 1 (every step runs), {crops} crops of 128x128 px.", "",
             "| plan | whole command | peak RSS |", "|---|---|---|"]
    lines += [f"| {r['plan']} | {r['seconds']} s | {r['peak_rss_mb'] / 1024:.2f} GB |" for r in result["rows"]]
    lines += ["", f"Calibration and the VaTMP search: {result['calibration_seconds']} s for {steps} steps."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
