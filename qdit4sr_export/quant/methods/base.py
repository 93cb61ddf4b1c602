"""The config fields every method shares, validated once; calibrated methods add the calibration trajectory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.sampling import DEFAULT_SHIFT, DEFAULT_STEPS
from qdit4sr_export.quant.checks import check_bits


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
        check_grid(self.steps, self.shift)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CalibratedConfig(MethodConfig):
    """Plus the calibration trajectory all of the method's statistics come from: runs start at ``start_sigma``
    (the pipeline's, so only the steps a run executes are sampled; 1: pure noise, every step) with noise
    seeded by ``calib_seed``."""

    start_sigma: float = 1.0
    calib_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_start_sigma(self.start_sigma)


def check_grid(steps: int, shift: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"--grid-steps must be >= 1, got {steps}")
    if not shift > 0:
        raise UserError(f"shift must be > 0, got {shift}")


def check_start_sigma(sigma: float) -> None:
    if not 0 < sigma <= 1:
        raise UserError(f"--start-sigma must be in (0, 1], got {sigma}")
