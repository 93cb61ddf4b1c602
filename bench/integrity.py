"""What the engine-set integrity checks cost: EngineSet.load at verify "size", "quick" (the default) and "full".

1. The example model's W4A4 engine set (built here with the default build options into a temporary folder).
2. A large weights.bin: a file of seeded random bytes (default 2 GB, about the size of a full dit4sr-medium W4
   set) checked through the same ``check_files`` the loader uses: the sampled digest against the full sha256.
   The file was just written, so it is in the page cache: these are hashing costs, not disk reads.
Writes bench/results/integrity.json; ``render`` gives its page (bench/render.py).
Run: python bench/integrity.py [--large-gb 2]   (about a minute plus the build)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import ROOT, median_seconds, provenance, publish
from qdit4sr_export.runtime.engine_set import EngineSet
from quickstart import BUILD

from qdit4sr_export.engine.format import check_files, file_entry

LEVELS = ("size", "quick", "full")


def example_set(folder: Path) -> dict:
    out = folder / "tiny-w4a4"
    subprocess.run([sys.executable, "-m", "qdit4sr_export", "build", str(ROOT / "examples" / "dit4sr-tiny"),
                    *BUILD, "-o", str(out), "--json"],
                   check=True, capture_output=True, cwd=folder)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"what": "example model W4A4 engine set", "bytes": size,
            **{f"{level}_s": median_seconds(lambda: EngineSet.load(out, verify=level), 5) for level in LEVELS}}


def large_file(folder: Path, gigabytes: float) -> dict:
    path = folder / "weights.bin"
    rng = np.random.default_rng(0)
    chunk = 64 << 20
    with open(path, "wb") as f:
        for _ in range(int(gigabytes * (1 << 30) // chunk)):
            f.write(rng.integers(0, 256, chunk, dtype=np.uint8).tobytes())
    entry = file_entry(folder, path)
    row = {"what": f"weights.bin of {path.stat().st_size / 1e9:.2f} GB (page-cached)", "bytes": path.stat().st_size}
    for level in LEVELS:
        row[f"{level}_s"] = median_seconds(lambda: check_files(folder, [entry], level), 3)
    path.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-gb", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [example_set(Path(tmp)), large_file(Path(tmp), args.large_gb)]
    publish("integrity", {"build_options": list(BUILD), "rows": rows}, render)


def render(result: dict) -> str:
    options = result.get("build_options")  # runs before it was recorded built the quickstart's W4A4 set too
    build = (f"`qdit4sr-export build examples/dit4sr-tiny {' '.join(options)}`" if options else
             "the quickstart's W4A4 build: VaSMP and VaTMP at 4 bits average, 8 calibration crops")
    lines = ["# Integrity checks", "", provenance(result), "",
             f"Median wall time of `EngineSet.load` (the example set, built with {build}) or of `check_files` "
             "(the large file) at each verify level: `size` "
             "(sizes only), `quick` (the default: full sha256 up to 256 MiB, sampled sha256 of 4,096 blocks of 4 KiB "
             "above), `full` (`run --verify`).", "",
             "| what | bytes | size | quick (default) | full |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['what']} | {r['bytes']:,} | {1000 * r['size_s']:.1f} ms | {1000 * r['quick_s']:.1f} ms | "
                     f"{1000 * r['full_s']:.1f} ms |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
