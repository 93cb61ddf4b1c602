"""Where the Triton kernels run: compiled on a CUDA GPU, or interpreted on the CPU (``TRITON_INTERPRET=1``).

Triton decides compiled vs interpreted when a function is decorated, its own ``triton.language`` helpers
(``tl.sum``, ``tl.max``...) included, so CPU execution needs the variable set before triton is first imported
(diffusers imports it): :func:`prepare` sets it when it still can and says so in one line when it is too late.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from qdit4sr_export.errors import UserError

INSTALL_HINT = "pip install 'qdit4sr-export[gpu]'"


def interpreting() -> bool:
    """Whether kernels decorated now run in Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def require_triton() -> None:
    """One-line error when triton is not installed (checked without importing it)."""
    if importlib.util.find_spec("triton") is None:
        raise UserError(f"the triton backend needs the triton package, which is not installed ({INSTALL_HINT})")


def prepare(device: str) -> None:
    """Check what ``device`` needs (triton; CUDA for "cuda") and select interpretation for "cpu"."""
    require_triton()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available to torch (this torch build or machine has "
                            "no GPU); use --device cpu to run the kernels in Triton's interpreter")
        if interpreting():
            raise UserError("--device cuda with TRITON_INTERPRET=1 set: unset it to compile the kernels for the GPU")
        return
    if device != "cpu":
        raise UserError(f"unknown device {device!r} (cpu or cuda)")
    if not interpreting():
        if "triton" in sys.modules:
            raise UserError("--device cpu runs the kernels in Triton's interpreter, which must be chosen before "
                            "triton is imported: set TRITON_INTERPRET=1 in the environment")
        os.environ["TRITON_INTERPRET"] = "1"


def dot_precision(device_type: str) -> str:
    """fp32 tl.dot precision: 3xTF32 on a GPU (about fp32 accuracy on tensor cores), plain fp32 interpreted."""
    return "ieee" if device_type == "cpu" or interpreting() else "tf32x3"


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
