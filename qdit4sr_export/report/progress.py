"""Progress bars for long work: on a terminal only, never in a log or a pipe, always on stderr."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that shows only when ``enabled`` and stderr is a terminal (tqdm's ``disable=None``)."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
