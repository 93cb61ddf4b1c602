#!/usr/bin/env bash
# Everything a session with one NVIDIA GPU (H100/H200) runs, with time limits adding up to 8 minutes, into ONE JSON
# (bench/results/gpu_all.json): the gpu-marked tests, the kernel GEMM vs torch bf16 at dit4sr-medium shapes and the
# low-rank epilogue overhead, a dit4sr-medium step (2 blocks, 1024x1024 output) triton W4A4 vs bf16, ONNX Runtime's
# CUDA execution provider vs its CPU one, and the PTX report. Each part has its own time limit (bench/gpu_all.py).
# Needs a CUDA build of torch, triton and onnxruntime-gpu: pip install -e '.[dev,gpu]' (docs/gpu.md).
# `bench/gpu_all.sh --quick` runs the CPU form of every part (plumbing check, bench/results/gpu_all_quick.json).
set -euo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET  # compiled kernels: the interpreter must stay off (parts opt in with --interpret)
exec python bench/gpu_all.py "$@"
