"""Integer code layouts shared by the kernels, their references and the engine set (torch, no Triton).

Activation codes: signed b-bit integers per channel; <= 4 bits packed two per byte along the channel axis
(byte j holds channels 2j in the low nibble and 2j+1 in the high nibble), int8 otherwise.

Weight codes are stored exactly as ``passes/lower_ort.py`` writes them for ONNX Runtime, transposed
(K = in_features rows, N = out_features columns): <= 4 bits ONNX INT4, i.e. the (K, N) codes flattened
row-major and packed two per byte, low nibble first (bytes (K, N/2) for even N); 5..7 bits int8 (K, N);
8 bits uint8 holding code + 128. The kernels read these bytes directly: no second copy, no re-quantizing.
"""

from __future__ import annotations

import numpy as np
import torch

from qdit4sr_export.errors import UserError

#: Weight storage kinds by bit width (see module doc).
INT4, INT8, UINT8 = "INT4", "INT8", "UINT8"
ZERO_POINT = 128


def weight_storage(bits: int) -> str:
    """The ONNX element type of stored weight codes at ``bits``: INT4 (<= 4), INT8 (5..7), UINT8 (8, offset 128)."""
    if not 2 <= bits <= 8:
        raise UserError(f"weight bits must be in 2..8, got {bits}")
    return INT4 if bits <= 4 else INT8 if bits < 8 else UINT8


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Signed codes in [-8, 7] (..., n), n even -> uint8 (..., n/2), element 2j in the low nibble."""
    if codes.shape[-1] % 2:
        raise UserError(f"packing two codes per byte needs an even last dimension, got {tuple(codes.shape)}")
    c = codes.to(torch.int16) & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (..., n/2) -> int8 (..., n): the inverse of :func:`pack_int4` (nibbles sign-extended)."""
    b = packed.to(torch.int16)
    lo, hi = b & 0xF, (b >> 4) & 0xF
    out = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    return ((out ^ 8) - 8).to(torch.int8)


def stored_weight_bytes(codes_kn: torch.Tensor, bits: int) -> torch.Tensor:
    """(K, N) int8 codes -> the bytes the engine set stores for them (what ``lower_ort._code_tensor`` writes)."""
    kind = weight_storage(bits)
    if kind == INT4:
        return pack_int4(codes_kn)
    if kind == INT8:
        return codes_kn.to(torch.int8).contiguous()
    return (codes_kn.to(torch.int16) + ZERO_POINT).to(torch.uint8).contiguous()


def decode_weight(stored: torch.Tensor | np.ndarray, bits: int, k: int, n: int, layer: str = "") -> torch.Tensor:
    """Stored weight bytes (see module doc) -> int8 codes (K, N); a shape that does not match is refused."""
    t = torch.as_tensor(np.asarray(stored)) if isinstance(stored, np.ndarray) else stored
    kind = weight_storage(bits)
    where = f"layer '{layer}': " if layer else ""
    if kind == INT4 and n % 2:
        raise UserError(f"{where}{n} output channels: packed INT4 weights with an odd N straddle rows; "
                        "the kernels read (K, N/2) bytes only")
    expect = (k, n // 2) if kind == INT4 else (k, n)
    want = torch.uint8 if kind != INT8 else torch.int8
    if tuple(t.shape) != expect or t.dtype != want:
        raise UserError(f"{where}stored {bits}-bit weight codes must be {want} {expect}, got {t.dtype} {tuple(t.shape)}")
    if kind == INT4:
        return unpack_int4(t)
    if kind == INT8:
        return t
    return (t.to(torch.int16) - ZERO_POINT).to(torch.int8)
