"""The config fields every method shares, validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import check_bits
from qdit4sr_export.sampling import DEFAULT_SHIFT, DEFAULT_STEPS


@dataclass(frozen=True)
class MethodConfig:
    """Weight bits (uniform), activation bits (static), the timestep grid."""

    version: int = 1
    wbits: int = 4
    abits: float = 4.0
    steps: int = DEFAULT_STEPS
    shift: float = DEFAULT_SHIFT

    def __post_init__(self) -> None:
        check_bits(self.wbits, "--wbits")
        if not 2 <= self.abits <= 8:
            raise UserError(f"--abits must be in 2..8, got {self.abits}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise UserError(f"--steps must be >= 1, got {self.steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
