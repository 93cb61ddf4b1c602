"""The two plugin ops of the TensorRT graph, as plain Python: names, attributes, inputs and output shapes.

``qdit4sr::RotateQuantize`` (x -> activation codes, scales and the H-SVD down-projections) and
``qdit4sr::LowbitGemm`` (codes x stored weight codes -> y, with the H-SVD up-projections and the bias in its
epilogue) are what ``LowerTrtPass`` writes, what the TensorRT plugins (``trt_plugins``) and the ONNX Runtime
reference ops (``ort_reference``) implement, and what they all read their attributes with. Nothing here imports
TensorRT. Attribute types are the ones TensorRT's ONNX parser passes to Python plugins: int, float, str.

Every input and output is always present (TensorRT plugins have a fixed arity, and each output one type): an
absent input is the 1-element placeholder :data:`NONE`, an unused output has one element. A step whose activations
stay float passes the rotated z (``bits`` 0) instead of codes and scales. Code tensors are UINT8 bytes: packed nibbles for <= 4 bits, the int8 codes' bytes for 5..8-bit
activations and 5..7-bit weights, code + 128 for 8-bit weights (the engine set's bytes; see ``packing``).
Scales and the down-projections between the two ops are float32; x and y have the graph's float type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from qdit4sr_export.errors import UserError

NAMESPACE = "qdit4sr"
PLUGIN_VERSION = "1"
DOMAIN = NAMESPACE
ROTATE_QUANTIZE = "RotateQuantize"
LOWBIT_GEMM = "LowbitGemm"
#: The shared 1-element float32 initializer standing for an absent input.
NONE = "trt.none"
ROTATE_QUANTIZE_INPUTS = ("x", "smooth", "signs", "hk", "h1", "h2", "svd_g_b", "svd_l_v")
ROTATE_QUANTIZE_OUTPUTS = ("codes", "scales", "h", "t", "z")
LOWBIT_GEMM_INPUTS = ("codes", "scales", "z", "w_codes", "w_scales", "h", "svd_g_a", "t", "svd_l_u", "bias")
CLIPS = ("gaussian", "minmax")


def plugin_attributes(aot: bool = True) -> dict[str, Any]:
    """What TensorRT's parser needs on every plugin node (the AOT implementation unless ``aot`` is False)."""
    return {"plugin_namespace": NAMESPACE, "plugin_version": PLUGIN_VERSION, "aot": int(aot)}


def _from_attributes(cls, attrs: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    missing = names - set(attrs)
    if missing:
        raise UserError(f"{cls.__name__}: missing attribute(s) {', '.join(sorted(missing))}")
    return cls(**{k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items() if k in names})


@dataclass(frozen=True)
class RotateQuantizeAttrs:
    """Static description of one layer's input path (see ``activation_spec``): ``bits`` 0 = float output z.

    ``rotation_n`` 0: no rotation; ``rotation_seed`` -1: no random signs; ``rotation_block`` 0: full Hadamard.
    ``group_size`` 0: per token. ``rank`` of SVD-G (0: none); ``svd_l_p``/``svd_l_q`` the SVD-L block grid (0: none);
    ``b_transposed`` 1: the SVD-G down factor comes as B^T (rank x n), the layout the kernel reads it in when B's
    tile does not fit in registers.
    """

    n: int
    bits: int
    clip: str = "gaussian"
    group_size: int = 0
    rotation_n: int = 0
    rotation_seed: int = -1
    rotation_block: int = 0
    smooth: int = 0
    rank: int = 0
    svd_l_p: int = 0
    svd_l_q: int = 0
    b_transposed: int = 0

    def __post_init__(self) -> None:
        if self.bits and not 2 <= self.bits <= 8:
            raise UserError(f"RotateQuantize: bits {self.bits} not in 2..8 (or 0 for float)")
        if self.clip not in CLIPS:
            raise UserError(f"RotateQuantize: clip {self.clip!r} not one of {CLIPS}")
        if self.group_size and self.n % self.group_size:
            raise UserError(f"RotateQuantize: group size {self.group_size} does not divide {self.n}")
        if self.bits and self.bits <= 4 and self.n % 2:
            raise UserError(f"RotateQuantize: {self.bits}-bit codes pack two per byte; {self.n} channels is odd")

    def to_attributes(self, *, aot: bool = True) -> dict[str, Any]:
        return {**dataclasses.asdict(self), **plugin_attributes(aot)}

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any]) -> "RotateQuantizeAttrs":
        return _from_attributes(cls, attrs)

    @property
    def groups(self) -> int:
        return self.n // self.group_size if self.group_size else 1

    def output_shapes(self, lead: tuple) -> list[tuple]:
        """Shapes of (codes, scales, h, t, z) for an input of shape ``lead + (n,)`` (``lead`` may be symbolic);
        an unused output is ``(1,)``."""
        if self.bits:
            codes, scales, z = (*lead, self.n // 2 if self.bits <= 4 else self.n), (*lead, self.groups), (1,)
        else:
            codes, scales, z = (1,), (1,), (*lead, self.n)
        h = (*lead, self.rank) if self.rank else (1,)
        t = (*lead, self.svd_l_p, self.svd_l_q) if self.svd_l_p else (1,)
        return [codes, scales, h, t, z]

    @staticmethod
    def output_types() -> list[str]:
        """ONNX element types of (codes, scales, h, t, z)."""
        return ["UINT8", "FLOAT", "FLOAT", "FLOAT", "FLOAT"]


@dataclass(frozen=True)
class LowbitGemmAttrs:
    """Static description of one layer's GEMM: ``abits`` 0 = float activations; ``group_size`` 0 = per channel;
    ``rank`` of SVD-G; ``svd_l_p/q/so`` the SVD-L grid (0: none); ``bias`` 1 when the layer has one."""

    k: int
    n: int
    abits: int
    wbits: int
    group_size: int = 0
    rank: int = 0
    svd_l_p: int = 0
    svd_l_q: int = 0
    svd_l_so: int = 0
    bias: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.wbits <= 8 or (self.abits and not 2 <= self.abits <= 8):
            raise UserError(f"LowbitGemm: bits W{self.wbits}A{self.abits} out of range")
        if self.wbits <= 4 and self.n % 2:
            raise UserError(f"LowbitGemm: packed INT4 weights need an even N, got {self.n}")
        if self.group_size and self.k % self.group_size:
            raise UserError(f"LowbitGemm: group size {self.group_size} does not divide K = {self.k}")

    def to_attributes(self, *, aot: bool = True) -> dict[str, Any]:
        return {**dataclasses.asdict(self), **plugin_attributes(aot)}

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any]) -> "LowbitGemmAttrs":
        return _from_attributes(cls, attrs)

    def weight_shape(self) -> tuple[int, int]:
        """Stored weight bytes (K, N/2) packed, or (K, N)."""
        return (self.k, self.n // 2) if self.wbits <= 4 else (self.k, self.n)

    def output_shape(self, lead: tuple) -> tuple:
        return (*lead, self.n)
