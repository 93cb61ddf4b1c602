#!/usr/bin/env bash
# Trains the shipped example model (v3) from scratch: the four runs whose records are kept in examples/
# (dit4sr-tiny-v3-path-self, -v3-ft128, -v3-ft128b and dit4sr-tiny-metrics.json), each fine-tuning the one before.
# Usage: bash examples/train_v3.sh OUT   (about 2 h 10 min on 2 CPU cores; needs the `examples` extra, apt-get, dpkg)
# The model ends up in OUT/ft128g/dit4sr-tiny; each stage's metrics.json beside its model.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: bash examples/train_v3.sh OUT" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
train() { python "$here/train_tiny.py" --objective path-self --log-every 25 "$@"; }
tile=(--self-after 0 --crop 128 --batch 6 --steps 400 --lr 3e-4 --warmup 20)

# 1. 1,400 steps at 64 px on the sampler's own path (one thread, as the kept record ran).
OMP_NUM_THREADS=1 train --out "$out/path-self"
# 2-4. 400 steps each at the runtime's 128 px tile size, new crops each time; the last with 90% of the LR clean,
# start levels near the sampler's 0.5 and the per-crop log-MSE loss.
OMP_NUM_THREADS=2 train --out "$out/ft128" --init "$out/path-self/dit4sr-tiny" "${tile[@]}"
OMP_NUM_THREADS=2 train --out "$out/ft128b" --init "$out/ft128/dit4sr-tiny" "${tile[@]}" --data-seed 1
OMP_NUM_THREADS=2 train --out "$out/ft128g" --init "$out/ft128b/dit4sr-tiny" "${tile[@]}" --data-seed 2 --clean-p 0.9 \
    --s0-range 0.4 0.6 --loss log-mse
