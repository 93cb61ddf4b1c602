"""Which part of DiT4SR a parameter belongs to (base MM-DiT, LR control branch, unused attn2 text weights)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

BASE = "base"
CONTROL = "control"
UNUSED_ATTN2_ADDED_KV = "unused_attn2_added_kv"
PARTS = (BASE, CONTROL, UNUSED_ATTN2_ADDED_KV)

_CONTROL = re.compile(
    r"^transformer_blocks\.\d+\.(attn2?\.(to_q_control|to_k_control|to_v_control|to_out_control)|ff\.control_conv)\."
)
_UNUSED = re.compile(
    r"^transformer_blocks\.\d+\.attn2\.(add_q_proj|add_k_proj|add_v_proj|norm_added_q|norm_added_k|to_add_out)\."
)


def parameter_part(name: str) -> str:
    """Classify a state-dict key: the control branch DiT4SR adds, attn2's never-used added-KV weights, or base."""
    if _CONTROL.match(name):
        return CONTROL
    if _UNUSED.match(name):
        return UNUSED_ATTN2_ADDED_KV
    return BASE


@dataclass(frozen=True)
class LinearInfo:
    """One ``nn.Linear``: its module name, features and part."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    part: str

    @property
    def in_blocks(self) -> bool:
        return self.name.startswith("transformer_blocks.")


def list_linears(model: nn.Module) -> list[LinearInfo]:
    """Every ``nn.Linear`` in module order (the quantizable layers live under ``transformer_blocks``)."""
    return [
        LinearInfo(name, m.in_features, m.out_features, m.bias is not None, parameter_part(name + ".weight"))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
