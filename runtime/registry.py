"""Backends by name: what each reads (an engine set or an FP checkpoint), which devices it runs on, and a
factory that opens a runner (``activate / infer / deactivate``, see :mod:`qdit4sr_export.runtime.backends`).

``run`` and ``compare`` look backends up here, so a new backend registers itself and needs no CLI edit.
Importing this module is cheap: factories import their heavy dependencies when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from qdit4sr_export.errors import UserError
from qdit4sr_export.registry import Registry

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


BACKENDS: Registry[Backend] = Registry("backend", BACKEND_MODULES)


def register_backend(name: str, *, summary: str, reads: str, devices: tuple[str, ...] = ("cpu",),
                     runs_graphs: bool = False, prepare: Callable[[str], None] | None = None
                     ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``open`` as backend ``name``."""
    if reads not in (ENGINE_SET, CHECKPOINT):
        raise ValueError(f"reads must be {ENGINE_SET!r} or {CHECKPOINT!r}")

    def wrap(open_: Callable[..., Any]) -> Callable[..., Any]:
        BACKENDS.add(name, Backend(name, summary, reads, tuple(devices), open_, runs_graphs, prepare))
        return open_
    return wrap


def backend_names() -> list[str]:
    return BACKENDS.names()


def get_backend(name: str) -> Backend:
    return BACKENDS.get(name)


def default_backend(reads: str) -> Backend:
    """The first registered backend that reads ``reads`` (ort for engine sets, torch for checkpoints)."""
    return next(b for b in BACKENDS if b.reads == reads)
