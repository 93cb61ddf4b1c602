"""Average-bit budgets shared by VaSMP and VaTMP: validation and the integer total they allow."""

from __future__ import annotations

import math
from fractions import Fraction

from qdit4sr_export.errors import UserError


def check_budget(budget: float) -> float:
    """A finite float budget (average bits), or a UserError."""
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise UserError(f"budget must be a number, got {budget!r}") from None
    if not math.isfinite(value):
        raise UserError(f"budget must be finite, got {budget!r}")
    return value


def budget_total(budget: float, weight: int) -> int:
    """floor(budget * weight), rounding up when within float noise of the next integer: 4.02 * 50 is
    200.99999999999997 as floats but means 201 (the float 4.02 is off by an ulp, not by 1/50 of a bit)."""
    exact = Fraction(float(budget)) * weight
    total = math.floor(exact)
    return total + 1 if 0 < total + 1 - exact <= abs(exact) * 2.0**-50 else total
