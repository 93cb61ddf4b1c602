"""Type checks for user-supplied numbers that numpy scalars pass and bools do not (no numpy or torch import,
so the CLI can validate options before loading either)."""

from __future__ import annotations

import math
import numbers

from qdit4sr_export.errors import UserError

#: Bit-widths a quantizer supports.
BITS = range(2, 9)


def is_int(value: object) -> bool:
    """True for ints (numpy ints included), False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def is_real(value: object) -> bool:
    """True for finite real numbers (not bools)."""
    return isinstance(value, numbers.Real) and not _is_bool(value) and math.isfinite(value)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_ without importing numpy


def check_bits(bits: int, what: str = "bits") -> int:
    """Return `bits` as an int if it is an integer in 2..8, else raise UserError naming `what`."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise UserError(f"{what} must be an integer in {BITS.start}..{BITS.stop - 1}, got {bits!r}")
    if int(bits) not in BITS:
        raise UserError(f"{what} must be in {BITS.start}..{BITS.stop - 1}, got {int(bits)}")
    return int(bits)
