"""Quantization methods, registered by name (``--method``): Q-DiT4SR, the comparators and the FP baseline.
Importing this package loads no torch: builders import what they need when they run."""

from qdit4sr_export.quant.methods.registry import Method, get_method, make_config, method_names, register

# Importing a method's module registers it; the order here is the order `--list-methods` shows.
from qdit4sr_export.quant.methods import qdit4sr as _qdit4sr  # noqa: E402,F401  isort: skip
from qdit4sr_export.quant.methods import rtn as _rtn  # noqa: E402,F401  isort: skip
from qdit4sr_export.quant.methods import quarot as _quarot  # noqa: E402,F401  isort: skip
from qdit4sr_export.quant.methods import svdquant as _svdquant  # noqa: E402,F401  isort: skip
from qdit4sr_export.quant.methods import ptq4dit as _ptq4dit  # noqa: E402,F401  isort: skip
from qdit4sr_export.quant.methods import qdit as _qdit  # noqa: E402,F401  isort: skip
from qdit4sr_export.quant.methods import adatsq as _adatsq  # noqa: E402,F401  isort: skip
from qdit4sr_export.quant.methods import lrq_dit as _lrq_dit  # noqa: E402,F401  isort: skip
from qdit4sr_export.quant.methods import fp as _fp  # noqa: E402,F401  isort: skip

__all__ = ["Method", "get_method", "make_config", "method_names", "register"]
