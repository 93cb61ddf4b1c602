"""The example-model training sections of BENCHMARKS.md (v2 and the six stages of the shipped v3), from the
records the training script wrote.

examples/train_tiny.py writes metrics.json (arguments, loss log, photo checksums, the sampling sweep on validation
crops of training photos and the chosen setting on held-out crops, for both degradation kinds); each run's copy is
kept as examples/dit4sr-tiny-<run>-metrics.json. This renders them, so no number is copied by hand.
Run: python bench/example_training.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from common import ROOT, update_benchmarks_md


@dataclass(frozen=True)
class Run:
    """One kept training record and how its section is titled."""

    key: str
    record: str
    title: str
    options: str  # the command-line options beyond --out (besides the defaults the record lists)
    prefix: str  # environment and nice level of the command
    machine: str  # threads, and whether other jobs shared the 2 cores
    shipped_recipe: bool = False  # one of the six runs examples/train_v3.sh makes


RUNS = (
    Run("example_training_v2", "dit4sr-tiny-v2-metrics.json",
        "Example model v2 training run (issue 20; missed its quality targets, not shipped)", "",
        "OMP_NUM_THREADS=1 nice -n 10", "1 thread, 2 cores shared with other jobs"),
    Run("example_training_v3_path", "dit4sr-tiny-v3-path-self-metrics.json",
        "Example model v3, stage 1: trained on its own sampling path (issue 20)",
        " --objective path-self", "OMP_NUM_THREADS=1 nice -n 10",
        "1 thread, the other core running a path-lr training", True),
    Run("example_training_v3_ft128", "dit4sr-tiny-v3-ft128-metrics.json",
        "Example model v3, stage 2: fine-tuned at the runtime's tile size (issue 20)",
        " --objective path-self --self-after 0 --init PATH_SELF_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 400 "
        "--lr 3e-4 --warmup 20", "OMP_NUM_THREADS=2", "2 threads", True),
    Run("example_training_v3_ft128b", "dit4sr-tiny-v3-ft128b-metrics.json",
        "Example model v3, stage 3: 400 more steps at the tile size (issue 20)",
        " --objective path-self --self-after 0 --init FT128_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 400 "
        "--lr 3e-4 --warmup 20 --data-seed 1", "OMP_NUM_THREADS=2",
        "2 threads, the cores shared with the test suite and bench/example_crop_size.py for part of the run", True),
    Run("example_training_v3_ft128h", "dit4sr-tiny-v3-ft128h-metrics.json",
        "Example model v3, stage 4: 400 more steps at the tile size, all LR clean, start levels near 0.5, per-crop "
        "log-MSE (issue 20)",
        " --objective path-self --self-after 0 --init FT128B_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 400 "
        "--lr 3e-4 --warmup 20 --data-seed 2 --clean-p 1.0 --s0-range 0.4 0.6 --loss log-mse", "OMP_NUM_THREADS=2",
        "2 threads", True),
    Run("example_training_v3_ft128i", "dit4sr-tiny-v3-ft128i-metrics.json",
        "Example model v3, stage 5: 200 steps at a third of the learning rate, all LR clean (issue 20)",
        " --objective path-self --self-after 0 --init FT128H_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 200 "
        "--lr 1e-4 --warmup 10 --data-seed 3 --clean-p 1.0 --s0-range 0.45 0.55 --loss log-mse",
        "OMP_NUM_THREADS=2", "2 threads", True),
    Run("example_training_v3_ft128j", "dit4sr-tiny-metrics.json",
        "Example model v3, stage 6, the shipped model: 200 more steps at a third of the learning rate on new crops "
        "(issue 20)",
        " --objective path-self --self-after 0 --init FT128I_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 200 "
        "--lr 1e-4 --warmup 10 --data-seed 4 --clean-p 1.0 --s0-range 0.45 0.55 --loss log-mse",
        "OMP_NUM_THREADS=2", "2 threads", True),
    Run("example_training_v3_ft128g", "dit4sr-tiny-v3-ft128g-metrics.json",
        "Example model v3, stage 4 as shipped until this change: 90% of the LR clean, start levels near 0.5, "
        "per-crop log-MSE (issue 20; replaced)",
        " --objective path-self --self-after 0 --init FT128B_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 400 "
        "--lr 3e-4 --warmup 20 --data-seed 2 --clean-p 0.9 --s0-range 0.4 0.6 --loss log-mse", "OMP_NUM_THREADS=2",
        "2 threads"),
    Run("example_training_v3_ft128c", "dit4sr-tiny-v3-ft128c-metrics.json",
        "Example model v3, stage 4 as shipped before that: half the LR clean (issue 20; replaced)",
        " --objective path-self --self-after 0 --init FT128B_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 400 "
        "--lr 3e-4 --warmup 20 --data-seed 2 --clean-p 0.5", "OMP_NUM_THREADS=2", "2 threads"),
    Run("example_training_v3_ft128d", "dit4sr-tiny-v3-ft128d-metrics.json",
        "Example model v3, a fifth stage tried after that stage 4: 400 more steps on new crops (issue 20; not shipped)",
        " --objective path-self --self-after 0 --init FT128C_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 400 "
        "--lr 3e-4 --warmup 20 --data-seed 3 --clean-p 0.5", "OMP_NUM_THREADS=2", "2 threads"),
    Run("example_training_v3_ft128e", "dit4sr-tiny-v3-ft128e-metrics.json",
        "Example model v3, stage 4 tried with start levels near 0.5 (issue 20; not shipped)",
        " --objective path-self --self-after 0 --init FT128B_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 400 "
        "--lr 3e-4 --warmup 20 --data-seed 2 --clean-p 0.6 --s0-range 0.4 0.6", "OMP_NUM_THREADS=2", "2 threads"),
    Run("example_training_v3_ft128f", "dit4sr-tiny-v3-ft128f-metrics.json",
        "Example model v3, stage 4 tried with start levels near 0.5 and per-crop log-MSE (issue 20; not shipped)",
        " --objective path-self --self-after 0 --init FT128B_RUN/dit4sr-tiny --crop 128 --batch 6 --steps 400 "
        "--lr 3e-4 --warmup 20 --data-seed 2 --clean-p 0.6 --s0-range 0.4 0.6 --loss log-mse", "OMP_NUM_THREADS=2",
        "2 threads"),
)
KIND_NAMES = {"real": "real-world chain", "clean": "clean bicubic /4"}


def _row(name: str, m: dict, bicubic: dict | None = None) -> str:
    gain = f" ({m['psnr'] - bicubic['psnr']:+.2f})" if bicubic else ""
    return f"| {name} | {m['psnr']}{gain} | {m['ssim']} | {m['gms']} | {m['hf_ratio']} |"


def _levels(a: dict) -> str:
    """The noise levels the objective trains on."""
    if a.get("objective", "flow") == "flow":
        return f"noise levels {a['low_p']:.0%} in [0, {a['sigma_max']}]"
    lo, hi = a.get("s0_range", (0.4, 1.0))
    loss = {"mse": "MSE loss", "log-mse": "mean per-crop log-MSE loss"}[a.get("loss", "mse")]
    return f"start levels uniform in [{lo:g}, {hi:g}], levels uniform below them, {loss}"


def render(r: dict, run: Run) -> str:
    a, best = r["args"], r["best"]
    chosen = f"{best['steps']}/{best['start_sigma']}/{best['guidance_scale']}/{best['color_fix']}"
    lines = [f"## {run.title}", "",
             f"Command: `{run.prefix} python examples/train_tiny.py --out DIR{run.options}` "
             f"(settings: objective {a.get('objective', 'flow')}, {a['steps']} steps, batch {a['batch']}, "
             f"{a['crop']} px crops, preset {a['preset']}, pixel-unshuffle "
             f"factor {a['factor']}, learning rate {a['lr']}, EMA {a['ema']}, {_levels(a)}, clean bicubic LR "
             f"{a['clean_p']:.0%}, seed {a['seed']}). Machine: AMD EPYC, "
             f"{run.machine}, torch {r['torch']}. Training "
             f"{r['train_seconds'] / 60:.1f} min ({r['seconds_per_step']:.2f} s/step), final loss "
             f"{r['log'][-1]['loss']:.3f}; {r['params']:,} parameters; {len(r['photos_sha256']) - 4} training "
             f"photos (sha256 of each in the record). Written by the script as metrics.json; kept as "
             f"`examples/{run.record}`." + (" All six v3 stages: `bash examples/train_v3.sh OUT`." if run.shipped_recipe
                                            else ""), "",
             "Sampling settings (steps/start sigma/guidance/colour fix) swept on validation crops of training photos "
             "(8 crops, 128 px), one LR set per degradation kind; the setting is chosen there, then measured once on "
             "8 held-out crops (chelsea, rocket, camera, grass, 2 each). PSNR (gain over bicubic), SSIM, GMS "
             "(gradient-magnitude similarity, 1 = edges as in HR) and HF ratio (energy above the LR Nyquist "
             "limit, output / HR).", ""]
    for split, title in (("validation", "Validation"), ("heldout", "Held-out")):
        for kind, rows in r[split].items():
            lines += [f"{title}, {KIND_NAMES.get(kind, kind)}:", "",
                      "| setting | PSNR | SSIM | GMS | HF ratio |", "|---|---|---|---|---|",
                      _row("bicubic", rows["bicubic"])]
            lines += [_row(k + (" (chosen)" if k == chosen else ""), m, rows["bicubic"])
                      for k, m in rows.items() if k != "bicubic"]
            lines.append("")
    lines += [f"Chosen (rule: more HF energy than bicubic and less than HR in both kinds, then the highest PSNR gain "
              "over bicubic averaged over the kinds, or the highest gain alone when no setting qualifies): "
              f"{best['steps']} steps, start sigma {best['start_sigma']}, "
              f"guidance {best['guidance_scale']}, colour fix {best['color_fix']}.", ""]
    return "\n".join(lines)


def main() -> None:
    for run in RUNS:
        update_benchmarks_md(run.key, render(json.loads((ROOT / "examples" / run.record).read_text()), run))


if __name__ == "__main__":
    main()
