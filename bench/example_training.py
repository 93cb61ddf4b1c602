"""The shipped example model's training record: how the last stage of its recipe trained and how its sampling
settings were chosen and scored, from examples/dit4sr-tiny-metrics.json.

examples/train_tiny.py writes metrics.json (arguments, loss log, photo checksums, the sampling sweep on validation
crops of training photos and the chosen setting on held-out crops, for both degradation kinds); the shipped model's
copy is examples/dit4sr-tiny-metrics.json, written by the sixth and last stage of examples/train_v3.sh. This copies
what the page shows from it into bench/results/example_training.json (``render`` gives the page), so no number is
copied by hand. Run: python bench/example_training.py   (seconds; it trains nothing)
"""

from __future__ import annotations

import json
import sys

from common import ROOT, commit_date, provenance, write_result

RECORD = "examples/dit4sr-tiny-metrics.json"
#: The sixth stage of examples/train_v3.sh, which wrote the record (its other options are train_tiny's defaults).
STAGE = ("OMP_NUM_THREADS=2 python examples/train_tiny.py --objective path-self --log-every 25 --out OUT/ft128j "
         "--init OUT/ft128i/dit4sr-tiny --self-after 0 --crop 128 --batch 6 --steps 200 --lr 1e-4 --warmup 10 "
         "--clean-p 1.0 --s0-range 0.45 0.55 --loss log-mse --data-seed 4")
HELD_OUT = ("chelsea", "rocket", "camera", "grass")  # the photos train_tiny keeps out of training
KIND_NAMES = {"real": "real-world chain", "clean": "clean bicubic /4"}


def extract(record: dict) -> dict:
    """What the page shows, from a train_tiny metrics record."""
    photos = [name.rsplit(".", 1)[0] for name in record["photos_sha256"]]
    return {"record": RECORD, "training_command": STAGE, "args": record["args"], "torch": record["torch"],
            "device": record["device"], "threads": record["threads"], "params": record["params"],
            "train_seconds": record["train_seconds"], "seconds_per_step": record["seconds_per_step"],
            "final_loss": record["log"][-1]["loss"], "training_photos": sum(p not in HELD_OUT for p in photos),
            "best": record["best"], "validation": record["validation"], "heldout": record["heldout"]}


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


def render(r: dict) -> str:
    a, best = r["args"], r["best"]
    chosen = f"{best['steps']}/{best['start_sigma']}/{best['guidance_scale']}/{best['color_fix']}"
    committed = f", committed {r['record_date']}" if r.get("record_date") else ""
    lines = ["# Example model training", "", provenance(r), "",
             f"The shipped example model's record (`{r['record']}`{committed}), written by the last of the six "
             "stages of `bash examples/train_v3.sh OUT`, each fine-tuning the one before:", "",
             f"`{r['training_command']}`", "",
             f"Settings: objective {a.get('objective', 'flow')}, {a['steps']} steps, batch {a['batch']}, "
             f"{a['crop']} px crops, preset {a['preset']}, pixel-unshuffle factor {a['factor']}, learning rate "
             f"{a['lr']}, EMA "
             f"{a['ema']}, {_levels(a)}, clean bicubic LR {a['clean_p']:.0%}, seed {a['seed']}, data seed "
             f"{a.get('data_seed', 0)}. Trained on {r['device']} with {r['threads']} threads, torch {r['torch']}: "
             f"{r['train_seconds'] / 60:.1f} min ({r['seconds_per_step']:.2f} s/step), final loss "
             f"{r['final_loss']:.3f}; {r['params']:,} parameters; {r['training_photos']} training photos (sha256 of "
             "each in the record).", "",
             "Sampling settings (steps/start sigma/guidance/colour fix) swept on validation crops of training photos "
             "(8 crops, 128 px), one LR set per degradation kind; the setting is chosen there, then measured once on "
             f"8 held-out crops ({', '.join(HELD_OUT)}, 2 each). PSNR (gain over bicubic), SSIM, GMS "
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
              f"guidance {best['guidance_scale']}, colour fix {best['color_fix']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    result = {**extract(json.loads((ROOT / RECORD).read_text())), "record_date": commit_date(ROOT / RECORD)}
    print(f"wrote {write_result('example_training', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
