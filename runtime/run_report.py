"""The run report: one JSON object that says, while a run goes on and after it stops, which inputs are done (with
their output's sha256), which failed and why, and how long each took on which worker; and ``--resume``'s reading of
it.

The file is replaced atomically (temp name, then rename) as images finish, so a Ctrl-C or a kill leaves a whole
report of what was done. Rewriting costs grow with the report, so after the first image it is rewritten only once
twenty times its last write's duration has passed (every image in practice: a 1,000-image report writes in about
30 ms); it is always written at the end and on Ctrl-C. A kill -9 can therefore miss the images finished since the
last write: their outputs are whole, and ``--resume`` runs them again (same bytes).

Local runs and Ray runs write the same format. ``identity`` holds what decides an output's bytes (engine set or
model, backend, device, plan, sampling options, alpha); ``--resume`` refuses a report made with another identity.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from qdit4sr_export.errors import UserError
from qdit4sr_export.runtime.image_job import DONE, FAILED

REPORT_SCHEMA = "qdit4sr-export/run-report"
#: 2: records carry status, sha256 and worker, and the report a summary and the run's identity.
REPORT_VERSION = 2
#: Rewrite when this many times the last write's duration has passed since it.
REWRITE_RATIO = 20
_clock = time.monotonic


class RunReport:
    """The report of one run over ``inputs`` (in that order), written to ``path`` (None: kept in memory only).
    ``carried`` are the verified records of a resumed run, kept as they were."""

    def __init__(self, path: Path | None, header: dict[str, Any], inputs: Iterable[str],
                 carried: dict[str, dict[str, Any]] | None = None) -> None:
        self.path = path
        self.header = header
        self.inputs = list(inputs)
        self.carried = dict(carried or {})
        self.records: dict[str, dict[str, Any]] = dict(self.carried)
        self._last_write = 0.0
        self._write_cost = 0.0

    def add(self, record: dict[str, Any]) -> None:
        """Record one finished input (the first record of an input stands) and rewrite the report if due."""
        self.records.setdefault(record["input"], record)
        if _clock() - self._last_write >= REWRITE_RATIO * self._write_cost:
            self.write()

    def summary(self) -> dict[str, Any]:
        done = sum(1 for r in self.records.values() if r["status"] == DONE)
        failed = sum(1 for r in self.records.values() if r["status"] == FAILED)
        return {"inputs": len(self.inputs), "done": done, "failed": failed,
                "pending": len(self.inputs) - done - failed, "skipped_verified": len(self.carried),
                "complete": done + failed == len(self.inputs)}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, "version": REPORT_VERSION, **self.header, "summary": self.summary(),
                "images": [self.records[i] for i in self.inputs if i in self.records]}

    def write(self) -> None:
        """Replace the report file atomically with what is recorded now."""
        if self.path is None:
            return
        from qdit4sr_export.engine.atomic import atomic_path

        start = _clock()
        with atomic_path(self.path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        self._last_write = _clock()
        self._write_cost = self._last_write - start


def _first_difference(recorded: dict[str, Any], wanted: dict[str, Any]) -> str:
    for key in sorted(set(recorded) | set(wanted)):
        if recorded.get(key) != wanted.get(key):
            if isinstance(recorded.get(key), dict) and isinstance(wanted.get(key), dict):
                return f"{key}.{_first_difference(recorded[key], wanted[key])}"
            return f"{key} {json.dumps(recorded.get(key))} there, {json.dumps(wanted.get(key))} now"
    return ""


def verified_records(path: Path, identity: dict[str, Any], jobs: list[tuple[Path, Path]]
                     ) -> dict[str, dict[str, Any]]:
    """``--resume``: by input (as this run spells it), the done records of report ``path`` whose input and output
    are one of ``jobs`` (paths compared resolved) and whose output file exists with the recorded sha256. A report
    made with another identity is an error (its outputs would not be what this run writes)."""
    from qdit4sr_export.engine.checksum import sha256_file
    from qdit4sr_export.engine.jsonfile import read_json_object

    report = read_json_object(path, "run report")
    if report.get("schema") != REPORT_SCHEMA:
        raise UserError(f"--resume: {path} is not a run report (schema {report.get('schema')!r})")
    if report.get("identity") != identity:
        raise UserError(f"--resume: {path} was made with other settings ("
                        f"{_first_difference(report.get('identity') or {}, identity)}); give the same ones, or "
                        "--force to start over")
    wanted = {(Path(src).resolve(), Path(dst).resolve()): (src, dst) for src, dst in jobs}
    carried = {}
    for record in report.get("images", []):
        if record.get("status") != DONE or not record.get("output"):
            continue
        job = wanted.get((Path(record["input"]).resolve(), Path(record["output"]).resolve()))
        if job is not None and job[1].is_file() and record.get("sha256") == sha256_file(job[1]):
            carried[str(job[0])] = {**record, "input": str(job[0]), "output": str(job[1])}
    return carried
