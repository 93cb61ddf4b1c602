"""Example-model quality against bicubic at the training crop size and at the runtime's tile size.

examples/train_tiny.py trains on 64 px HR crops (a 32x32 latent, 256 image tokens), while ``run`` and the
held-out evaluation work on 128 px (a 64x64 latent: the default 64-latent tile, 1024 tokens). This measures what
that costs: the held-out crops of tiny_eval (chelsea, rocket, camera, grass) cut at both sizes, both degradation
kinds, each model folder at its pipeline.json's sampling settings. Writes bench/results/example_crop_size.json
and the "Example model: crop size" section of BENCHMARKS.md.
Run: python bench/example_crop_size.py NAME=MODEL_DIR [NAME=MODEL_DIR ...]   (about 2 minutes per model on 2
CPU threads; the held-out photos are scikit-image's: pip install '.[examples]')
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import ROOT, machine, update_benchmarks_md

sys.path.insert(0, str(ROOT / "examples"))
import train_tiny  # noqa: E402
from degradation import KINDS  # noqa: E402
from photos import HELDOUT_PHOTOS, load_photos  # noqa: E402
from qdit4sr_export.runtime.color_fix import apply_color_fix  # noqa: E402
from qdit4sr_export.runtime.pipeline import load_assets  # noqa: E402
from tiny_eval import bicubic_up, metrics, sample_sr, to_tensor  # noqa: E402

from qdit4sr_export.model.loading import load_dit4sr  # noqa: E402
from qdit4sr_export.model.sampling import DEFAULT_SHIFT  # noqa: E402

#: (crop px, crops per held-out photo): the same number of pixels at both sizes.
SIZES = ((64, 8), (128, 2))
COMMAND = "python bench/example_crop_size.py"


def evaluate(folder: Path, held: list) -> dict:
    """PSNR/SSIM/GMS/HF ratio of bicubic and of the model per (crop size, kind), with the folder's own
    autoencoder and prompt embeddings."""
    model = load_dit4sr(folder / "transformer")
    cfg = json.loads((folder / "pipeline.json").read_text())
    assets = load_assets(folder, shift=DEFAULT_SHIFT, config=cfg)
    ae, prompts = assets.autoencoder, assets.prompt
    out: dict = {"settings": cfg, "rows": {}}
    for size, per_photo in SIZES:
        for kind in KINDS:
            pairs = train_tiny.fixed_crops(held, size=size, per_photo=per_photo, seed=1234, kind=kind)
            hr = to_tensor([h for h, _ in pairs])
            up = to_tensor([bicubic_up(lr) for _, lr in pairs])
            with torch.no_grad():
                sr = sample_sr(model, ae, prompts, up, steps=cfg["steps"], start_sigma=cfg["start_sigma"],
                               guidance=cfg["guidance_scale"], seed=0)
            sr = apply_color_fix(cfg["color_fix"], sr, up)
            out["rows"][f"{size}/{kind}"] = {"bicubic": metrics(up, hr), "model": metrics(sr, hr)}
    return out


def render(result: dict) -> str:
    lines = ["## Example model: crop size (issue 20)", "",
             f"Command: `{result['command']}`. Machine: {result['machine']}. Held-out crops of chelsea, rocket, "
             "camera and grass (8 of 64 px or 2 of 128 px per photo: the same pixel count), each model at its "
             "pipeline.json's sampling settings. The training script crops 64 px; `run` tiles 64x64 latents, "
             "128 px.", "",
             "| model | crop | LR | bicubic PSNR | model PSNR (gain) | model SSIM | model GMS "
             "| HF ratio bicubic / model |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        for key, row in r["rows"].items():
            size, kind = key.split("/")
            b, m = row["bicubic"], row["model"]
            lines.append(f"| {name} | {size} px | {kind} | {b['psnr']} | {m['psnr']} ({m['psnr'] - b['psnr']:+.2f}) | "
                         f"{m['ssim']} | {m['gms']} | {b['hf_ratio']} / {m['hf_ratio']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=MODEL_DIR (an exported example-model folder)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    held, _ = load_photos(HELDOUT_PHOTOS)
    models = {}
    for spec in args.models:
        name, sep, folder = spec.partition("=")
        if not sep or not (Path(folder) / "pipeline.json").is_file():
            raise SystemExit(f"{spec}: expected NAME=MODEL_DIR with a pipeline.json")
        models[name] = evaluate(Path(folder), held)
        print(name, json.dumps(models[name]["rows"]), flush=True)
    result = {"command": COMMAND + " " + " ".join(n + "=DIR" for n in models), "machine": machine(),
              "models": models}
    out = ROOT / "bench" / "results" / "example_crop_size.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    update_benchmarks_md("example_crop_size", render(result))


if __name__ == "__main__":
    main()
