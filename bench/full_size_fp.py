"""``build --method fp`` at the released size: the FP model packaged as an engine set from the checkpoint
``bench/full_size.py --keep`` leaves, timed with its peak memory, and its bytes on disk.

Writes bench/results/full_size_fp.json; ``render`` gives its page (bench/render.py).
Run: python bench/full_size_fp.py WORKDIR   (needs about 11 GB free under WORKDIR; the set is removed afterwards)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import provenance, publish
from full_size import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args()
    ckpt, out = args.workdir / "checkpoint", args.workdir / "engine_fp"
    if not (ckpt / "transformer").is_dir():
        raise SystemExit(f"{args.workdir}: expected checkpoint/ (bench/full_size.py --keep)")
    try:
        text, wall, peak = timed([sys.executable, "-m", "qdit4sr_export", "build", str(ckpt), "--method", "fp",
                                  "-o", str(out), "--json"], args.workdir)
        summary = json.loads(text)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result = {"seconds": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1), "stages": summary["stages"],
              "sizes": summary["sizes"]}
    publish("full_size_fp", result, render)


def render(result: dict) -> str:
    sizes = result["sizes"]
    stages = ", ".join(f"{s['stage']} {s['seconds']:.0f} s" for s in result["stages"])
    return "\n".join(["# Full size: FP engine set", "", provenance(result), "",
                      "`qdit4sr-export build --method fp` on the random released-size checkpoint of "
                      f"`bench/full_size.py`. Whole command {result['seconds']} s ({stages}), peak RSS "
                      f"{result['peak_rss_mb'] / 1024:.2f} GB; weights.bin {sizes['weights_file'] / 1e9:.3f} GB, whole "
                      f"set {sizes['total'] / 1e9:.3f} GB."]) + "\n"


if __name__ == "__main__":
    main()
