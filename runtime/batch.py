"""A batch of images: the jobs (input -> output), the records of one local process, and the collector that puts
records from anywhere (this process or Ray workers) into the run report with a progress bar in images/s."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from qdit4sr_export.errors import UserError
from qdit4sr_export.runtime.image_job import DONE, ImageSettings, super_resolve_image


def check_unique_outputs(jobs: list[tuple[Path, Path]]) -> None:
    """Two inputs must not write one output (``a/x.png`` and ``b/x.png`` into one folder)."""
    seen: dict[Path, Path] = {}
    for src, dst in jobs:
        if dst in seen:
            raise UserError(f"{seen[dst]} and {src} would both write {dst}; run them into separate folders")
        seen[dst] = src


def local_records(pipe, jobs: Iterable[tuple[Path, Path]], settings: ImageSettings) -> Iterator[dict[str, Any]]:
    """Each job's record, computed in this process (with a per-image bar of sampling steps on a terminal)."""
    from qdit4sr_export.report.progress import progress_bar

    for src, dst in jobs:
        steps_bar = progress_bar(desc=Path(src).name, unit="step", leave=False)
        try:
            yield super_resolve_image(pipe, src, dst, settings, on_step=lambda i, n: (
                setattr(steps_bar, "total", n), steps_bar.update()))
        finally:
            steps_bar.close()


def collect(records: Iterable[dict[str, Any]], report, *, total: int) -> int:
    """Put each record into ``report`` (a :class:`~qdit4sr_export.runtime.run_report.RunReport`) as it arrives,
    say ``wrote OUT`` (stdout) or ``error: ...`` (stderr), and show a bar in images/s; returns the number failed."""
    from tqdm import tqdm

    from qdit4sr_export.report.progress import progress_bar

    failed = 0
    with progress_bar(total=total, desc="images", unit="img") as bar:
        for record in records:
            report.add(record)
            if record["status"] == DONE:
                tqdm.write(f"wrote {record['output']}")
            else:
                failed += 1
                tqdm.write(f"error: {record['error']}", file=sys.stderr)
            bar.update()
    return failed
