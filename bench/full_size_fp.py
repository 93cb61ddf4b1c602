"""``build --method fp`` at the released size: the FP model packaged as an engine set from the checkpoint
``bench/full_size.py --keep`` leaves, timed with its peak memory, and its bytes on disk.

Writes bench/results/full_size_fp.json and the "Full size: FP engine set" section of BENCHMARKS.md.
Run: python bench/full_size_fp.py WORKDIR   (needs about 11 GB free under WORKDIR; the set is removed afterwards)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import ROOT, machine, update_benchmarks_md
from full_size import timed

COMMAND = "python bench/full_size_fp.py WORKDIR"


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
    result = {"command": COMMAND, "machine": machine(), "seconds": round(wall, 1),
              "peak_rss_mb": round(peak / 2**20, 1), "stages": summary["stages"], "sizes": summary["sizes"]}
    (ROOT / "bench" / "results" / "full_size_fp.json").write_text(json.dumps(result, indent=1) + "\n")
    sizes = summary["sizes"]
    stages = ", ".join(f"{s['stage']} {s['seconds']:.0f} s" for s in summary["stages"])
    text = (f"`{COMMAND}` on {result['machine']}: `qdit4sr-export build --method fp` on the random released-size "
            f"checkpoint of `bench/full_size.py`. Whole command {result['seconds']} s ({stages}), peak RSS "
            f"{result['peak_rss_mb'] / 1024:.2f} GB; weights.bin {sizes['weights_file'] / 1e9:.3f} GB, whole set "
            f"{sizes['total'] / 1e9:.3f} GB.\n\n")
    update_benchmarks_md("full_size_fp", "## Full size: FP engine set (issue 16)\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
