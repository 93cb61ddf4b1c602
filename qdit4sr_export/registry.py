"""One lookup table per extension point (methods, passes, lowering targets, backends): entries by name in the
order they registered, modules imported on first lookup so listing stays cheap, and a one-line error for an
unknown name that lists the valid ones."""

from __future__ import annotations

import importlib
from typing import Generic, Iterator, TypeVar

from qdit4sr_export.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind. ``modules`` are imported before the first lookup (their import registers
    entries); ``kind`` names the entries in errors ("unknown target 'x'; valid: ort, trt")."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.modules = modules
        self._entries: dict[str, T] = {}
        self._loaded = not modules

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (tests that register a throw-away entry)."""
        self._entries.pop(name, None)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.modules:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter(list(self._entries.values()))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} '{name}'; valid: {', '.join(self._entries)}") from None
