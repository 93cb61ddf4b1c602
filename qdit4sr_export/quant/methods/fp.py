"""The FP baseline as a method: no quantization. It makes no plan; ``build --method fp`` packages the unquantized
model as an engine set on the timestep grid, so it compares against every quantized set."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qdit4sr_export.model.sampling import DEFAULT_SHIFT, DEFAULT_STEPS
from qdit4sr_export.quant.methods.base import check_grid
from qdit4sr_export.quant.methods.registry import register


@dataclass(frozen=True)
class FPConfig:
    """Only the timestep grid (the engine set's timesteps)."""

    version: int = 1
    steps: int = DEFAULT_STEPS
    shift: float = DEFAULT_SHIFT

    def __post_init__(self) -> None:
        check_grid(self.steps, self.shift)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@register("fp", summary="no quantization: the FP model (build only: it makes no plan)", config=FPConfig,
          quantizes=False)
def build_fp(model, config: FPConfig, *, calibration=None, progress: bool = False) -> None:
    """No plan: the model stays FP."""
    return None
