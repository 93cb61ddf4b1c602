"""Wall time and peak resident memory (RSS) of each stage of a long command (load, plan, trace, passes, lowering,
write), for the build summary and ``bench/full_size.py``.

A daemon thread samples this process's RSS every few milliseconds; a stage's peak is the larger of the samples
taken during it and the process's high-water mark (``ru_maxrss``) when the stage raised it, so a short spike that
sets a new high is never missed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from dataclasses import dataclass
from typing import Iterator

_PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss() -> int:
    """Resident bytes of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the high-water mark is the best there is
        return peak_rss()


def peak_rss() -> int:
    """This process's peak resident bytes so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class StageRecord:
    name: str
    seconds: float
    peak_rss_bytes: int

    def to_dict(self) -> dict:
        return {"stage": self.name, "seconds": round(self.seconds, 2),
                "peak_rss_mb": round(self.peak_rss_bytes / 2**20, 1)}


class Stages:
    """Times stages and samples RSS; ``with stages.stage("trace"): ...``."""

    def __init__(self, interval: float = 0.02) -> None:
        self.records: list[StageRecord] = []
        self.interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, current_rss())

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()
        high_before = peak_rss()
        self._peak = current_rss()
        start = time.perf_counter()
        try:
            yield
        finally:
            high = peak_rss()
            peak = max(self._peak, current_rss(), high if high > high_before else 0)
            self.records.append(StageRecord(name, time.perf_counter() - start, peak))

    def close(self) -> None:
        self._stop.set()

    def to_list(self) -> list[dict]:
        return [r.to_dict() for r in self.records]
