"""Run from a source checkout: map ``qdit4sr_export.passes/.plugins/.runtime`` to the top-level folders.

Installed, setuptools' package-dir mapping puts ``passes/``, ``plugins/`` and ``runtime/`` inside the package. Python
started in the repository root imports ``qdit4sr_export`` from the source tree instead, where those folders sit
beside it; this finder (installed by the package only in that case) resolves the three names there, so
``python -m pytest`` and scripts run from the root import the same code layout as the installed package.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

MAPPED = ("passes", "plugins", "runtime")


class SourceTreeFinder:
    """Finds ``qdit4sr_export.<name>`` (and its submodules) in ``<root>/<name>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != "qdit4sr_export" or parts[1] not in MAPPED:
            return None
        base = self.root.joinpath(*parts[1:])
        if (base / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(fullname, base / "__init__.py",
                                                          submodule_search_locations=[str(base)])
        if base.with_suffix(".py").is_file():
            return importlib.util.spec_from_file_location(fullname, base.with_suffix(".py"))
        return None


def install(package_dir: Path) -> None:
    """Install the finder when ``package_dir`` is the source tree's package (the folders sit beside it)."""
    root = package_dir.parent
    if (package_dir / "runtime").exists() or not (root / "pyproject.toml").is_file():
        return
    if all((root / name / "__init__.py").is_file() for name in MAPPED):
        if not any(isinstance(f, SourceTreeFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, SourceTreeFinder(root))
