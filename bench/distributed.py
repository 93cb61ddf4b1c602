"""Batch super-resolution throughput: one local `run` process against a local Ray cluster with 1 and 2 workers, on
this machine, all in one run: the same images, seed and --threads 1, outputs checked byte for byte; plus a local
process with all cores (what `run` does by default) for reference. Then a paper calculation: images per day on N
workers from the measured per-step time of a dit4sr-medium W4A4 step (bench/results/full_size.json).

Each configuration is the CLI as a user runs it, in a fresh process (`qdit4sr-export run ... [--ray --workers N]`;
`--ray` with no cluster running starts a local one, which is part of the time). Wall time is the whole command;
the steady rate is (images - 1) / (time between the first and the last `wrote` line), which leaves out start-up
(Ray's cluster and each worker opening the engine set).

Writes bench/results/distributed.json (render() gives its page).
Run: python bench/distributed.py [--engine-set DIR] [--images 8] [--rounds 2]   (about 20 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_result

MODEL = ROOT / "examples" / "dit4sr-tiny"
LR = ROOT / "examples" / "lr"
BUILD = ("--wbits", "auto", "--abits", "4", "--calib-count", "8")  # the quickstart's W4A4 engine set
#: The full-size figure of the paper calculation: dit4sr-medium W4A4, one step of a 64x64 latent at batch 2 (CFG).
FULL_SIZE = ROOT / "bench" / "results" / "full_size.json"
#: The full-size pipeline's settings (qdit4sr_export/model/random_checkpoint.py PIPELINE): 40 steps, CFG 8 (batch 2);
#: a 64x64 latent is a 512x512 output (SD3.5's autoencoder, x8), from a 128x128 input.
FULL_SIZE_STEPS = 40
DAY_S = 86400
CONFIGS = {"local, 1 thread": ("--threads", "1"),
           "Ray, 1 worker x 1 thread": ("--threads", "1", "--ray", "--workers", "1"),
           "Ray, 2 workers x 1 thread": ("--threads", "1", "--ray", "--workers", "2"),
           "local, all cores (default)": ()}
BASELINE = "local, 1 thread"


def make_images(folder: Path, count: int) -> list[Path]:
    """The example photos, then their mirror images, up to ``count`` (distinct content, same sizes)."""
    from PIL import Image, ImageOps

    folder.mkdir()
    sources = sorted(LR.glob("*.png"))
    out = []
    for i in range(count):
        image = Image.open(sources[i % len(sources)])
        image = ImageOps.mirror(image) if (i // len(sources)) % 2 else image
        path = folder / f"{i:02d}_{sources[i % len(sources)].name}"
        image.save(path)
        out.append(path)
    return out


def timed_run(engine: Path, images: Path, out: Path, extra: tuple[str, ...]) -> dict:
    """Run the CLI; wall time, the time of each `wrote` line, and the report's per-image seconds and workers."""
    cmd = [sys.executable, "-m", "qdit4sr_export", "run", str(engine), str(images), "-o", str(out), *extra]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.stderr", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wrote = []
        for line in proc.stdout:
            if line.startswith("wrote "):
                wrote.append(time.perf_counter() - start)
        if proc.wait() != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
    wall = time.perf_counter() - start
    report = json.loads((out / "run.json").read_text())
    seconds = [r["seconds"] for r in report["images"]]
    return {"command": "qdit4sr-export run ENGINE_SET IMAGES -o OUT " + " ".join(extra), "wall_s": round(wall, 2),
            "images": len(wrote), "images_per_s": round(len(wrote) / wall, 4),
            "steady_images_per_s": round((len(wrote) - 1) / (wrote[-1] - wrote[0]), 4) if len(wrote) > 1 else None,
            "first_output_s": round(wrote[0], 2), "median_image_s": round(statistics.median(seconds), 3),
            "workers": len({r["worker"] for r in report["images"]}),
            "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def paper_calculation() -> dict:
    """Images per day on N workers, each running dit4sr-medium W4A4 steps at the measured CPU step time."""
    full = json.loads(FULL_SIZE.read_text())
    step_s = float(full["run"]["step_s"])
    image_s = FULL_SIZE_STEPS * step_s
    return {"source": f"{FULL_SIZE.relative_to(ROOT)}: run.step_s (dit4sr-medium W4A4, 64x64 latent, batch 2)",
            "source_machine": full["machine"], "step_s": step_s, "steps_per_image": FULL_SIZE_STEPS,
            "image": "512x512 output from a 128x128 input (one 64x64 latent tile, CFG batch 2)",
            "image_s": round(image_s, 1),
            "per_day": {str(n): round(n * DAY_S / image_s, 1) for n in (1, 8, 64)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-set", type=Path, default=None, help="an engine set (default: build the "
                        "quickstart's W4A4 set of examples/dit4sr-tiny into a temporary folder)")
    parser.add_argument("--images", type=int, default=8, help="how many images (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every configuration, in a rotated "
                        "order each round; the medians are reported (default 2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        engine = args.engine_set
        if engine is None:
            engine = work / "tiny-w4a4"
            subprocess.run([sys.executable, "-m", "qdit4sr_export", "build", str(MODEL), *BUILD, "-o", str(engine)],
                           check=True, capture_output=True)
        images = work / "images"
        make_images(images, args.images)
        labels = list(CONFIGS)
        rounds: dict[str, list[dict]] = {label: [] for label in labels}
        outputs: dict[str, list[dict[str, bytes]]] = {label: [] for label in labels}
        for r in range(args.rounds):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:  # rotated: no fixed neighbour
                out = work / f"out-{r}-{labels.index(label)}"
                rounds[label].append(timed_run(engine, images, out, CONFIGS[label]))
                outputs[label].append({p.name: p.read_bytes() for p in out.glob("*.png")})
                print(r, label, rounds[label][-1], flush=True)
        reference = outputs[BASELINE][0]
        identical = {label: all(o == reference for o in outputs[label]) for label in labels}
        rows = {label: summarize(rounds[label]) for label in labels}
        base = rows[BASELINE]
        for label, row in rows.items():
            row["speedup"] = round(row["images_per_s"] / base["images_per_s"], 3)
            row["steady_speedup"] = round(row["steady_images_per_s"] / base["steady_images_per_s"], 3)
            row["identical_to_baseline"] = identical[label]
    result = {"engine_set": "examples/dit4sr-tiny W4A4 (" + " ".join(BUILD) + ")" if args.engine_set is None
              else str(args.engine_set), "images": args.images, "rounds": args.rounds,
              "image_size": "64x64 -> 256x256 (the example photos and their mirror images)",
              "seed": 0, "runs": rows, "paper": paper_calculation()}
    path = write_result("distributed", result)
    print(f"wrote {path}")


def summarize(runs: list[dict]) -> dict:
    """The median of each figure over the rounds, and every round's figures."""
    median = lambda key: round(statistics.median(r[key] for r in runs), 4)  # noqa: E731
    return {"command": runs[0]["command"], "wall_s": median("wall_s"), "images_per_s": median("images_per_s"),
            "steady_images_per_s": median("steady_images_per_s"), "first_output_s": median("first_output_s"),
            "median_image_s": median("median_image_s"), "workers": runs[0]["workers"],
            "load_avg_1min": [r["load_avg_1min"] for r in runs], "rounds": runs}


def render(result: dict) -> str:
    """The page: how the runs compare, the byte-for-byte check, and the paper calculation."""
    lines = ["# Batch super-resolution: one process against a local Ray cluster", "",
             f"Command: `{result['command']}`. Machine: {result['machine']}. Date: {result.get('date', 'not recorded')}.",
             "", f"{result['images']} images, {result['image_size']}, engine set {result['engine_set']}, seed "
             f"{result['seed']}; each row is `qdit4sr-export run` in a fresh process (with `--ray` it starts a local "
             "cluster, included in the wall time), the median of "
             f"{result['rounds']} rounds over all rows in rotated order. Steady rate: images after the first over the "
             "time between the first and the last output. The machine's 1-minute load average before and after each "
             "run is shown: other jobs shared it.", "",
             "| configuration | wall s | images/s | x | steady images/s | x | median s per image | first output s "
             "| outputs = 1-thread local | load avg before, after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in result["runs"].items():
        lines.append(f"| {label} | {r['wall_s']} | {r['images_per_s']:.3f} | {r['speedup']:.2f} | "
                     f"{r['steady_images_per_s']:.3f} | {r['steady_speedup']:.2f} | {r['median_image_s']} | "
                     f"{r['first_output_s']} | {'yes' if r['identical_to_baseline'] else 'no'} | "
                     f"{'; '.join(f'{a} to {b}' for a, b in r['load_avg_1min'])} |")
    runs, p = result["runs"], result["paper"]
    first = {label: r["first_output_s"] - runs[BASELINE]["first_output_s"] for label, r in runs.items()}
    ray_rows = [label for label in runs if label.startswith("Ray")]
    lines += ["", "This machine has 2 cores, shared with other jobs while this ran (a load average above 2 means "
              "processes waited for a core): the rates compare runs under that contention, not on an idle machine. "
              "Two 1-thread workers use both cores, as a 2-thread local process does; more workers than cores would "
              "only share them. Ray's first output came "
              + " and ".join(f"{first[label]:+.1f} s ({label})" for label in ray_rows)
              + " after the 1-thread local process's: the cluster's start and each worker opening the engine set "
              "before its first image.", "",
              "## Paper calculation: images per day", "",
              f"From {p['source']}, measured on {p['source_machine']}: {p['step_s']} s per step; an image "
              f"({p['image']}) takes {p['steps_per_image']} steps = {p['image_s']} s. This is a CPU figure (the "
              "project has no GPU measurement of a dit4sr-medium step): N workers each as fast as that CPU would "
              "process, with the per-image overhead above negligible next to it:", "",
              "| workers | images per day |", "|---|---|"]
    lines += [f"| {n} | {v} |" for n, v in p["per_day"].items()]
    lines += ["", f"For N GPUs, put the measured GPU step time t (seconds) in: images per day = "
              f"N x {DAY_S} / ({p['steps_per_image']} x t x tiles), where tiles is 1 for a 512x512 output and 9 for "
              "1024x1024 (64-latent tiles overlapping by 24).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
