"""What every benchmark script shares: the machine line, writing a result (``write_result``), the provenance line its
``render()`` shows, and SQNR."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def invocation() -> str:
    """The command line of this bench script's run, as a result records it."""
    return "python " + " ".join(["bench/" + Path(sys.argv[0]).name, *sys.argv[1:]])


def today() -> str:
    """Today's date (UTC), as a result records it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def commit_date(path: Path | str) -> str | None:
    """The date (YYYY-MM-DD) of the last git commit that wrote ``path``, or None (not committed, or no git)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=Path(path).resolve().parent,
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def write_result(name: str, result: dict) -> Path:
    """Write ``bench/results/<name>.json`` with the command that made it, the machine and the date (UTC) first;
    ``bench/render.py`` turns the results into the docs' benchmark pages. Returns the path."""
    # this run's date: the date_source of an earlier result's later stamp does not carry over
    stamped = {"command": invocation(), "machine": machine(), "date": today(),
               **{k: v for k, v in result.items() if k not in ("command", "machine", "date", "date_source")}}
    path = ROOT / "bench" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped, indent=1) + "\n")
    return path


def publish(name: str, result: dict, render: Callable[[dict], str]) -> Path:
    """``write_result``, then print the page ``render`` makes of the result as written; returns the path."""
    path = write_result(name, result)
    print(render(json.loads(path.read_text())))
    print(f"wrote {path}")
    return path


def provenance(result: dict) -> str:
    """The line a page shows under its title: the result's command, machine and date."""
    date = result.get("date") or "not recorded"
    return f"Command: `{result['command']}`. Machine: {result['machine']}. Date: {date}."


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table's lines: the header, the rule, then one line per row (cells as given, str() of each)."""
    lines = [f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
    return lines + [f"| {' | '.join(map(str, r))} |" for r in rows]


def joined(values, fmt: str = ".1f") -> str:
    """A list of numbers as one cell: ``1.0, 2.5``."""
    return ", ".join(format(v, fmt) for v in values)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - approx).pow(2).sum()))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn``."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)
