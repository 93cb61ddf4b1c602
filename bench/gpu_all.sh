#!/usr/bin/env bash
# Everything a session with an NVIDIA GPU (H100/H200) should run for issue 14, within about 10 minutes:
# the gpu-marked tests (kernels compiled at dit4sr-medium widths, the triton backend with CUDA graphs), then the
# kernel and whole-step benchmarks, which write bench/results/gpu_*.json and their BENCHMARKS.md sections.
# Needs a CUDA build of torch, triton, onnxruntime (the package's dependencies) and `pip install -e '.[dev,gpu]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET  # compiled kernels: the interpreter must stay off
python - <<'PY'
import torch, triton
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print(torch.cuda.get_device_name(0), "torch", torch.__version__, "triton", triton.__version__)
PY
status=0
timeout 300 pytest -m gpu tests/plugins tests/runtime -q -p no:cacheprovider || status=$?
timeout 150 python bench/gpu_kernels.py || status=$?
timeout 150 python bench/gpu_step.py || status=$?
exit $status
