"""Backends by name: what each reads (an engine set or an FP checkpoint), which devices it runs on, and a
factory that opens a runner (``activate / infer / deactivate``, see :mod:`qdit4sr_export.runtime.backends`).

``run`` and ``compare`` look backends up here, so a new backend registers itself and needs no CLI edit.
Importing this module is cheap: factories import their heavy dependencies when called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from qdit4sr_export.errors import UserError

ENGINE_SET = "engine set"
CHECKPOINT = "checkpoint"
#: Modules whose import registers backends; the order is the order listed in --help.
BACKEND_MODULES = ("qdit4sr_export.runtime.builtin_backends", "qdit4sr_export.runtime.triton_backend")


@dataclass(frozen=True)
class Backend:
    """A registered backend. ``open(source, *, device, threads, **options)`` returns a runner; ``source`` is an
    :class:`EngineSet` for engine-set backends and a checkpoint path for checkpoint backends."""

    name: str
    summary: str
    reads: str
    devices: tuple[str, ...]
    open: Callable[..., Any]
    #: Where the backend compares through polygraphy's own runner (ONNX Runtime), the variant graphs are used.
    runs_graphs: bool = False
    #: Called by ``check_device`` before anything heavy is imported: a one-line error for a missing dependency
    #: or device, and whatever must happen first (the triton backend selects Triton's CPU interpreter).
    prepare: Callable[[str], None] | None = None

    def check_device(self, device: str | None) -> str:
        """The device to run on (``None``: the backend's first, e.g. cuda for trt), checked and prepared."""
        device = self.devices[0] if device is None else device
        if device not in self.devices:
            raise UserError(f"--backend {self.name} runs on {', '.join(self.devices)}, not --device {device}")
        if self.prepare is not None:
            self.prepare(device)
        return device


_REGISTRY: dict[str, Backend] = {}
_loaded = False


def register_backend(name: str, *, summary: str, reads: str, devices: tuple[str, ...] = ("cpu",),
                     runs_graphs: bool = False, prepare: Callable[[str], None] | None = None
                     ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``open`` as backend ``name``."""
    if reads not in (ENGINE_SET, CHECKPOINT):
        raise ValueError(f"reads must be {ENGINE_SET!r} or {CHECKPOINT!r}")

    def wrap(open_: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"backend {name!r} registered twice")
        _REGISTRY[name] = Backend(name, summary, reads, tuple(devices), open_, runs_graphs, prepare)
        return open_
    return wrap


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BACKEND_MODULES:
            importlib.import_module(module)


def backend_names() -> list[str]:
    _load()
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown backend '{name}'; valid: {', '.join(_REGISTRY)}") from None


def default_backend(reads: str) -> Backend:
    """The first registered backend that reads ``reads`` (ort for engine sets, torch for checkpoints)."""
    _load()
    return next(b for b in _REGISTRY.values() if b.reads == reads)
