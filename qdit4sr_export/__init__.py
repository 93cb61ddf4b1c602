"""qdit4sr-export: post-training quantization and deployment of DiT4SR super-resolution transformers."""

from pathlib import Path as _Path

__version__ = "0.1.0"

__all__ = ["__version__"]

# In a source checkout passes/, plugins/ and runtime/ sit beside this folder (installed, setuptools' package-dir puts
# them inside it), so the checkout's root joins the package's search path: qdit4sr_export.passes is <root>/passes.
_here = _Path(__file__).resolve().parent
if not (_here / "runtime").is_dir() and (_here.parent / "runtime" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 (a package's __path__)
