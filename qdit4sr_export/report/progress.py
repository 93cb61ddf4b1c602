"""Progress bars for long work: on stderr, shown on a terminal only (a log or a pipe gets none), unless the
environment asks for them everywhere with ``QDIT4SR_PROGRESS=1`` (or for none with ``QDIT4SR_PROGRESS=0``)."""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that shows only when ``enabled`` and stderr is a terminal (tqdm's ``disable=None``), or when
    ``QDIT4SR_PROGRESS`` says always (1) or never (0)."""
    forced = os.environ.get("QDIT4SR_PROGRESS")
    shown = None if forced not in ("0", "1") else forced == "1"
    return tqdm(iterable, disable=True if not enabled else (None if shown is None else not shown), **kwargs)
