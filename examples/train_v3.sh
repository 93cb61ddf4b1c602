#!/usr/bin/env bash
# Trains the shipped example model (v3) from scratch: six runs, each fine-tuning the one before; the last one's
# record is kept as examples/dit4sr-tiny-metrics.json.
# Usage: bash examples/train_v3.sh OUT   (about 2 h 15 min of training plus 5 min of evaluation per stage on 2 CPU
# cores; needs the `examples` extra, apt-get, dpkg)
# The model ends up in OUT/ft128j/dit4sr-tiny; each stage's metrics.json beside its model.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: bash examples/train_v3.sh OUT" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
train() { python "$here/train_tiny.py" --objective path-self --log-every 25 "$@"; }
tile=(--self-after 0 --crop 128 --batch 6 --steps 400 --lr 3e-4 --warmup 20)

# 1. 1,400 steps at 64 px on the sampler's own path (one thread, as the shipped model's first stage ran).
OMP_NUM_THREADS=1 train --out "$out/path-self"
# 2-4. 400 steps each at the runtime's 128 px tile size, new crops each time; the last with all of the LR clean,
# start levels near the sampler's 0.5 and the per-crop log-MSE loss.
OMP_NUM_THREADS=2 train --out "$out/ft128" --init "$out/path-self/dit4sr-tiny" "${tile[@]}"
OMP_NUM_THREADS=2 train --out "$out/ft128b" --init "$out/ft128/dit4sr-tiny" "${tile[@]}" --data-seed 1
last=(--clean-p 1.0 --s0-range 0.4 0.6 --loss log-mse)
OMP_NUM_THREADS=2 train --out "$out/ft128h" --init "$out/ft128b/dit4sr-tiny" "${tile[@]}" --data-seed 2 "${last[@]}"
# 5-6. 200 steps each at a third of the learning rate on new crops, start levels in [0.45, 0.55].
low=(--self-after 0 --crop 128 --batch 6 --steps 200 --lr 1e-4 --warmup 10 --clean-p 1.0 --s0-range 0.45 0.55
     --loss log-mse)
OMP_NUM_THREADS=2 train --out "$out/ft128i" --init "$out/ft128h/dit4sr-tiny" "${low[@]}" --data-seed 3
OMP_NUM_THREADS=2 train --out "$out/ft128j" --init "$out/ft128i/dit4sr-tiny" "${low[@]}" --data-seed 4
