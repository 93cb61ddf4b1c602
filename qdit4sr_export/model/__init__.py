"""The DiT4SR transformer, its configs and presets, and checkpoint loading/saving.

Names load on first use (PEP 562), so ``qdit4sr_export.model.config`` (the presets) imports without torch."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "PRESETS": "config",
    "DiT4SRConfig": "config",
    "resolve_config": "config",
    "load_dit4sr": "loading",
    "save_dit4sr": "loading",
    "DiT4SROutput": "transformer",
    "DiT4SRTransformer": "transformer",
    "build_dit4sr": "transformer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
