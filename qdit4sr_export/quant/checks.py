"""Type checks for user-supplied numbers that numpy scalars pass and bools do not."""

from __future__ import annotations

import math

import numpy as np


def is_int(value: object) -> bool:
    """True for ints (numpy ints included), False for bools and everything else."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: object) -> bool:
    """True for finite real numbers (not bools)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(value)
