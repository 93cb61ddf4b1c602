"""``compare`` at the released size: the FP checkpoint against its W4A4 engine set, one input per variant, a small
latent, timed with its peak memory. Runs on the folder ``bench/full_size.py --keep`` leaves (checkpoint/, engine/).

Writes bench/results/full_size_compare.json; ``render`` gives its page (bench/render.py).
Run: python bench/full_size_compare.py WORKDIR [--latent-side 16]   (WORKDIR: the full_size-* folder kept by --keep)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import provenance, publish
from full_size import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--latent-side", "--side", dest="side", type=int, default=16,
                        help="latent side of the generated inputs")
    args = parser.parse_args()
    ckpt, engine = args.workdir / "checkpoint" / "transformer", args.workdir / "engine"
    if not (ckpt.is_dir() and (engine / "manifest.json").is_file()):
        raise SystemExit(f"{args.workdir}: expected checkpoint/transformer and engine/ (bench/full_size.py --keep)")
    cmd = [sys.executable, "-m", "qdit4sr_export", "compare", str(ckpt), str(engine), "--per-variant", "1",
           "--latent-side", str(args.side), "--min-sqnr", "0", "--min-cosine", "0", "--json"]
    out, wall, peak = timed(cmd, args.workdir)
    report = json.loads(out)
    params = json.loads((engine / "manifest.json").read_text())["model"]["parameters"]
    result = {"parameters": params, "side": args.side, "seconds": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1),
              "variants": [{k: v[k] for k in ("file", "timesteps", "sqnr_db", "cosine")} for v in report["variants"]],
              "inputs": report["inputs"]}
    publish("full_size_compare", result, render)


def render(result: dict) -> str:
    side = result["side"]
    lines = ["# Full size: compare", "", provenance(result), "",
             "`qdit4sr-export compare` of the random heavy-tailed checkpoint of `bench/full_size.py` "
             f"({result['parameters'] / 1e6:.1f} M parameters) against its W4A4 engine set, one generated input per "
             f"variant at a {side}x{side} latent ({result['inputs']}). Whole command: {result['seconds']} s, peak RSS "
             f"{result['peak_rss_mb'] / 1024:.2f} GB.", "",
             "| variant | timesteps | SQNR vs FP | cosine |", "|---|---|---|---|"]
    lines += [f"| {v['file']} | {', '.join(f'{t:.0f}' for t in v['timesteps'])} | {v['sqnr_db']:.2f} dB | "
              f"{v['cosine']:.4f} |" for v in result["variants"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
