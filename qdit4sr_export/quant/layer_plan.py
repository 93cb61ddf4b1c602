"""LayerPlan: how one ``nn.Linear`` is quantized, in a form every method and every lowering can read.

Order of operations on the layer input ``x`` (each step optional):
smoothing ``x / s`` -> rotation ``z = x R`` -> per-token (or per-token-per-group) activation quantization,
with the weight transformed the same way (``W s``, then ``W R``), split into FP branches (SVD-G, SVD-L)
and a quantized residual (integer grid per row or per group, TLQ log levels, or weights stored in the
plan, e.g. by GPTQ).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from qdit4sr_export.errors import UserError

CLIPS = ("gaussian", "minmax")
WEIGHT_FORMATS = ("int", "tlq")
ROTATION_KINDS = ("hadamard", "outlier")
_TUPLES = ("abits", "act_variance", "wbits_schedule", "local_block")


def _bits_ok(b: Any) -> bool:
    return isinstance(b, int) and not isinstance(b, bool) and 2 <= b <= 8


@dataclass(frozen=True)
class LayerPlan:
    """Per-layer plan. ``abits[i]`` (and ``wbits_schedule[i]`` when set) apply at the plan's i-th timestep;
    an ``abits`` entry of None keeps that step's activations in float."""

    in_features: int
    out_features: int
    wbits: int
    abits: tuple[int | None, ...]
    rotation: Mapping[str, Any] | None = None  # {"kind": "hadamard", n, seed, block} or {"kind": "outlier"}
    svd_rank: int = 0
    local_block: tuple[int, int] | None = None
    active: bool = True  # False for layers whose output never reaches the model output
    clip: str = "gaussian"  # scale estimator of both quantizers: "gaussian" (optimal clip) or "minmax" (RTN)
    group_size: int | None = None  # input-channel groups sharing a scale (weights and activations)
    smoothing: bool = False  # per-input-channel divisor s in the plan tensors under "<layer>.smooth"
    weight_format: str = "int"  # "int": integer grid; "tlq": LRQ-DiT's twin-log levels (params in `tlq`)
    tlq: Mapping[str, Any] | None = None
    wbits_schedule: tuple[int, ...] | None = None  # per-timestep weight bits (AdaTSQ); None: `wbits` always
    stored_weight: bool = False  # quantized residual stored in the plan tensors ("<layer>.weight.<bits>")
    weight_variance: float | None = None  # VaSMP's statistic (mean output-channel variance of W_H)
    act_variance: tuple[float | None, ...] | None = None  # VaTMP's v(l, t) per grid timestep (None: step not run)

    def __post_init__(self) -> None:
        problems = []
        if not _bits_ok(self.wbits):
            problems.append(f"wbits {self.wbits!r} not in 2..8")
        if any(b is not None and not _bits_ok(b) for b in self.abits):
            problems.append(f"abits {list(self.abits)} has entries outside 2..8")
        if self.wbits_schedule is not None and any(not _bits_ok(b) for b in self.wbits_schedule):
            problems.append(f"wbits_schedule {list(self.wbits_schedule)} has entries outside 2..8")
        if self.wbits_schedule is not None and len(self.wbits_schedule) != len(self.abits):
            problems.append("wbits_schedule and abits differ in length")
        if self.clip not in CLIPS:
            problems.append(f"clip {self.clip!r} not one of {CLIPS}")
        if self.weight_format not in WEIGHT_FORMATS:
            problems.append(f"weight_format {self.weight_format!r} not one of {WEIGHT_FORMATS}")
        if self.weight_format == "tlq" and self.tlq is None:
            problems.append("weight_format 'tlq' needs 'tlq' parameters")
        if self.group_size is not None and (self.group_size < 1 or self.in_features % self.group_size):
            problems.append(f"group_size {self.group_size} does not divide in_features {self.in_features}")
        if self.rotation is not None and self.rotation.get("kind", "hadamard") not in ROTATION_KINDS:
            problems.append(f"rotation kind {self.rotation.get('kind')!r} not one of {ROTATION_KINDS}")
        if not 0 <= self.svd_rank <= min(self.in_features, self.out_features):
            problems.append(f"svd_rank {self.svd_rank} outside 0..{min(self.in_features, self.out_features)}")
        if problems:
            raise UserError("; ".join(problems))

    def weight_bits_at(self, step: int) -> int:
        return self.wbits_schedule[step] if self.wbits_schedule is not None else self.wbits

    def distinct_weight_bits(self) -> list[int]:
        return sorted(set(self.wbits_schedule)) if self.wbits_schedule is not None else [self.wbits]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in _TUPLES:
            d[key] = list(d[key]) if d[key] is not None else None
        for key in ("rotation", "tlq"):
            d[key] = dict(d[key]) if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str) -> "LayerPlan":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"plan layer '{name}': unknown key(s) {', '.join(unknown)}")
        kwargs = {k: (tuple(v) if k in _TUPLES and v is not None else v) for k, v in d.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise UserError(f"plan layer '{name}': malformed entry ({exc})") from None
        except UserError as exc:
            raise UserError(f"plan layer '{name}': {exc}") from None
