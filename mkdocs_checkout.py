"""Griffe extension for the docs build (mkdocs.yml loads it): the API pages document the source checkout.

In a checkout ``passes/``, ``plugins/`` and ``runtime/`` sit beside ``qdit4sr_export/`` and import as
``qdit4sr_export.passes`` / ``.plugins`` / ``.runtime`` because the package extends its ``__path__`` at import time.
Griffe reads the tree statically and only sees ``qdit4sr_export/``, so this attaches the three folders where Python
finds them. An installed package (where they sit inside it) is left as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import griffe

SUBPACKAGES = ("passes", "plugins", "runtime")


def _visit(name: str, path: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
    code = path.read_text(encoding="utf-8")
    loader.lines_collection[path] = code.splitlines()
    return griffe.visit(name, path, code, parent=parent, extensions=loader.extensions,
                        docstring_parser=loader.docstring_parser, docstring_options=loader.docstring_options,
                        lines_collection=loader.lines_collection, modules_collection=loader.modules_collection)


class CheckoutSubpackages(griffe.Extension):
    """Attach the checkout's top-level ``passes/``, ``plugins/`` and ``runtime/`` to ``qdit4sr_export``."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "qdit4sr_export" or not isinstance(pkg.filepath, Path):
            return
        root = pkg.filepath.parent.parent
        for name in SUBPACKAGES:
            init = root / name / "__init__.py"
            if name in pkg.members or not init.is_file():
                continue
            sub = _visit(name, init, pkg, loader)
            pkg.set_member(name, sub)
            for path in sorted((root / name).glob("*.py")):
                if path.name != "__init__.py":
                    sub.set_member(path.stem, _visit(path.stem, path, sub, loader))
