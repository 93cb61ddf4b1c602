"""Write a seeded random-weight DiT4SR pipeline folder in the released layout, one tensor at a time.

    python examples/make_random_dit4sr.py dit4sr-medium OUT [--seed N] [--heavy-tailed] [--vae auto|sd35|unshuffle|none]
                                          [--max-shard-bytes N] [--blocks N] [--force]

OUT/transformer/ (config.json + F16 safetensors with the control branch in F32, the released names), OUT/vae/
(SD3.5 AutoencoderKL config with seeded weights, or the pixel-unshuffle map), OUT/prompt_embeds.safetensors
(333 text tokens), OUT/pipeline.json and OUT/scheduler/. One tensor is made and written at a time, so memory
stays near the largest tensor. --heavy-tailed draws the block linears
from model/synthetic.py's heavy-tailed stand-in, so quantization statistics are not trivial. Works for every
preset (see `qdit4sr-export info --help`). --blocks N keeps the preset's widths with only its first N blocks (the
last one context_pre_only), to measure per-block costs of the released size cheaply.
"""

from __future__ import annotations

import argparse
import sys
import time

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import PRESETS
from qdit4sr_export.model.random_checkpoint import VAES, make_random_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heavy-tailed", action="store_true", help="Heavy-tailed block linears with outlier channels.")
    parser.add_argument("--vae", choices=VAES, default="auto", help="auto: sd35 for 16 latent channels, else unshuffle.")
    parser.add_argument("--max-shard-bytes", type=int, default=None, help="Write shards and an index (default: one file).")
    parser.add_argument("--blocks", type=int, default=None, help="Only the first N blocks (default: the preset's).")
    parser.add_argument("--force", action="store_true", help="Replace OUT.")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        config = PRESETS[args.preset] if args.blocks is None else PRESETS[args.preset].with_blocks(args.blocks)
        out = make_random_checkpoint(config, args.out, seed=args.seed, heavy_tailed=args.heavy_tailed,
                                     vae=args.vae, max_shard_bytes=args.max_shard_bytes, force=args.force,
                                     progress=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
