"""qdit4sr-export: post-training quantization and deployment of DiT4SR super-resolution transformers."""

from pathlib import Path as _Path

from qdit4sr_export import _source_tree

__version__ = "0.1.0"

__all__ = ["__version__"]

_source_tree.install(_Path(__file__).resolve().parent)
