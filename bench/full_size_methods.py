"""Which calibrated quantization methods are practical at the released size on this CPU: the real ``qdit4sr-export
plan`` of each method on the random heavy-tailed released-size checkpoint (``bench/full_size.py --keep``, or
``examples/make_random_dit4sr.py dit4sr-medium WORKDIR/checkpoint --heavy-tailed``), and on a checkpoint with the
same widths but only 2 of its 24 blocks (made here with ``--blocks 2``), to say where the time goes.

Each plan is a subprocess in its own session: wall time, peak RSS of the whole process tree (``/proc`` sampled every
second, children included; also its anonymous part, which the RSS cap applies to: the rest is file pages, mostly the
memory-mapped checkpoint, which the kernel can drop; ``wait4``'s ``ru_maxrss`` of the plan process is kept in the
JSON), and the machine's 1-minute load average while it ran. A run past the wall-clock cap or the RSS cap is stopped
(the process group killed) and reported as stopped with the last progress-bar line it printed: how far it got, not an
extrapolation. The "2-block time x 12" column is a projection
(24 blocks / 2), labelled as such: it also multiplies what does not scale with blocks (imports, embedders, the
positional table), and the full-size rows say how close it is.

Rows are kept by (model, method) in bench/results/full_size_methods.json, so a later run of some methods replaces
only their rows; every row has its own command and time; ``render(result)`` gives its page.

Run: nice -n 10 python bench/full_size_methods.py WORKDIR [--methods svdquant,ptq4dit,...] [--full-methods ...]
     [--cap-minutes 20] [--cap-rss-gb 18] [--min-available-gb 14]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, machine, provenance, today
from full_size import timed

CALIB = ROOT / "qdit4sr_export" / "data" / "calib"
RESULT = ROOT / "bench" / "results" / "full_size_methods.json"
BLOCKS = 2
FULL_BLOCKS = 24
#: qdit4sr with the flags of bench/full_size_calibration.py (VaSMP bits); every other method uniform W4.
WBITS = {"qdit4sr": "auto"}
DEFAULT_METHODS = "qdit4sr,svdquant,ptq4dit,qdit,lrq-dit,adatsq,quarot,rtn"
DEFAULT_FULL = "svdquant,ptq4dit,qdit,lrq-dit"
CALIBRATED = {"qdit4sr", "svdquant", "ptq4dit", "qdit", "adatsq", "lrq-dit"}


def _children(pid: int) -> list[int]:
    """``pid`` and every process below it (from ``/proc/*/stat``'s parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += parents.get(p, [])
    return tree


def tree_rss(pid: int) -> tuple[int, int]:
    """Resident bytes of ``pid`` and its descendants now: all of it, and the anonymous part (the rest is file pages,
    mostly the memory-mapped checkpoint, which the kernel can drop)."""
    total = anon = 0
    for p in _children(pid):
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines()
                          if line.startswith(("VmRSS:", "RssAnon:")))
        except OSError:
            continue
        total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
    return total, anon


def available_bytes() -> int:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024


def last_progress_line(text: str) -> str:
    """The last non-empty line of a stderr where tqdm redraws with carriage returns."""
    lines = [x.strip() for x in text.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1] if lines else ""


def _kill_group(pid: int) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL what is left once it exits or 15 s later (not reaped)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.perf_counter() + 15
    while time.perf_counter() < end and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def capped(cmd: list[str], cwd: Path, cap_s: float, cap_rss: int) -> dict:
    """Run ``cmd`` in its own session; stop its process group past ``cap_s`` seconds or ``cap_rss`` bytes of
    anonymous RSS (what the machine cannot reclaim; the mapped checkpoint's pages it can)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        load0 = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True, start_new_session=True)
        peak, peak_anon, loads, stopped = 0, 0, [], None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            total, anon = tree_rss(proc.pid)
            peak, peak_anon = max(peak, total), max(peak_anon, anon)
            loads.append(os.getloadavg()[0])
            if stopped is None and (time.perf_counter() - start > cap_s or peak_anon > cap_rss):
                stopped = "wall-clock cap" if peak_anon <= cap_rss else "RSS cap"
                _kill_group(proc.pid)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(1.0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read()
    return {"seconds": round(wall, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "peak_anon_rss_mb": round(peak_anon / 2**20, 1),
            "wait4_maxrss_mb": round(usage.ru_maxrss / 1024, 1), "stopped": stopped,
            "returncode": proc.returncode, "load_at_start": round(load0, 2),
            "load_mean": round(sum(loads) / len(loads), 2) if loads else round(load0, 2),
            "load_max": round(max(loads), 2) if loads else round(load0, 2),
            "last_progress_line": last_progress_line(stderr)[-300:], "stderr_tail": stderr[-1500:]}


def plan_cmd(ckpt: Path, method: str, steps: int, calib_count: int, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "qdit4sr_export", "plan", str(ckpt), "--method", method,
           "--wbits", WBITS.get(method, "4"), "--abits", "4", "--steps", str(steps), "-o", str(out)]
    if method in CALIBRATED:
        cmd += ["--calib", str(CALIB), "--calib-count", str(calib_count)]
    return cmd


def shown_command(cmd: list[str]) -> str:
    """``cmd`` as the table shows it: the CLI name, paths relative to WORKDIR and the repository, no output path."""
    i = cmd.index("-o")
    text = " ".join(["qdit4sr-export", *cmd[3:i], *cmd[i + 2:]])
    return text.replace(str(ROOT) + "/", "").replace(str(Path(cmd[4]).parent) + "/", "WORKDIR/")


def wait_for_memory(need: int) -> None:
    """Wait (printing once a minute) until ``need`` bytes are available: the machine is shared."""
    waited = 0
    while available_bytes() < need:
        if waited % 60 == 0:
            print(f"waiting: {available_bytes() / 2**30:.1f} GB available, need {need / 2**30:.0f} GB", flush=True)
        time.sleep(10)
        waited += 10


def measure(work: Path, model: str, ckpt: Path, method: str, args: argparse.Namespace) -> dict:
    wait_for_memory(int(args.min_available_gb * 2**30))
    available = round(available_bytes() / 2**30, 1)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = plan_cmd(ckpt, method, args.steps, args.calib_count, Path(tmp) / "plan.json")
        shown = shown_command(cmd)
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        row = capped(cmd, work, args.cap_minutes * 60, int(args.cap_rss_gb * 2**30))
        wrote = (Path(tmp) / "plan.json").is_file()
    if row["stopped"] is None and (row["returncode"] != 0 or not wrote):
        row["stopped"] = f"failed (exit {row['returncode']})"
    return {"model": model, "method": method, "command": shown, "started": started,
            "available_gb_at_start": available, "cap_minutes": args.cap_minutes, "cap_rss_gb": args.cap_rss_gb,
            **row}


def cell_time(row: dict | None) -> str:
    if row is None:
        return "not run"
    if row["stopped"]:
        return f"> {row['seconds']:.0f} s ({row['stopped']}, stopped)" if "cap" in row["stopped"] else row["stopped"]
    return f"{row['seconds']:.0f} s"


def rss_cell(row: dict) -> str:
    anon = f" ({row['peak_anon_rss_mb'] / 1024:.2f} anon.)" if "peak_anon_rss_mb" in row else ""
    return f"{row['peak_rss_mb'] / 1024:.2f} GB{anon}"


def _earlier_qdit4sr() -> dict | None:
    """bench/full_size_calibration.py's full-size VaTMP plan (the same flags), to set beside its 2-block row."""
    path = ROOT / "bench" / "results" / "full_size_calibration.json"
    if not path.exists():
        return None
    found = json.loads(path.read_text())
    row = next((r for r in found["rows"] if r["plan"].startswith("VaTMP")), None)
    if row is None or (found["steps"], found["calib_count"]) != (4, 2):
        return None
    return {"seconds": row["seconds"], "peak_rss_mb": row["peak_rss_mb"], "stopped": None, "load_mean": "-",
            "last_progress_line": "", "source": "bench/full_size_calibration.py"}


def render(result: dict) -> str:
    """The page: each method's plan at 2 and 24 blocks (time, peak RSS, load, how far a stopped run got)."""
    rows = {(r["model"], r["method"]): r for r in result["rows"]}
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    small, full = f"{BLOCKS} blocks", f"{FULL_BLOCKS} blocks"
    earlier = _earlier_qdit4sr()
    if earlier and (full, "qdit4sr") not in rows and (result["steps"], result["calib_count"]) == (4, 2):
        rows[(full, "qdit4sr")] = earlier
    lines = [provenance(result), "",
             "2 cores shared with other work (the load columns are the mean 1-minute load average while the run ran: above 2, it shared the cores). Each row is the real "
             "`qdit4sr-export plan` (commands below the table) on a random heavy-tailed checkpoint in the released "
             f"layout: dit4sr-medium ({FULL_BLOCKS} blocks, 2.7 B parameters) or the same widths with {BLOCKS} blocks "
             f"(`examples/make_random_dit4sr.py dit4sr-medium OUT --heavy-tailed --blocks {BLOCKS}`); "
             f"{result['calib_count']} calibration crops of 128 px, a {result['steps']}-step grid from sigma 1. Peak "
             "RSS: the plan's process tree, sampled each second (counting the checkpoint pages it has mapped; "
             "\"anon.\": the anonymous part, which the RSS cap applies to, where recorded). A run past its cap (wall "
             "clock or RSS) was stopped: its last progress line says how far it got.", "",
             f"| method | {small}: time | {small}: peak RSS | {small}: load | {small} time x 12 (projection, not "
             f"measured) | {full}: time | {full}: peak RSS | {full}: load | last progress line ({full}) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        s, f = rows.get((small, m)), rows.get((full, m))
        proj = f"~{s['seconds'] * FULL_BLOCKS / BLOCKS / 60:.0f} min" if s and not s["stopped"] else "-"
        cells = [m, cell_time(s)] + ([rss_cell(s), str(s["load_mean"])] if s else ["-", "-"])
        cells += [proj, cell_time(f) + (f" ({f['source']})" if f and "source" in f else "")]
        cells += ([rss_cell(f), str(f["load_mean"]),
                   f"`{f['last_progress_line'][:100]}`".replace("|", "\\|") if f["last_progress_line"] else "-"] if f else ["-"] * 3)
        lines.append("| " + " | ".join(cells) + " |")
    stopped = [(k, r) for k, r in rows.items() if r.get("stopped") and k[0] == small and r["last_progress_line"]]
    if stopped:
        lines += ["", f"Last progress line of the stopped {small} runs:", ""]
        lines += [f"- {m}: `{r['last_progress_line']}`" for (_, m), r in stopped]
    lines += ["", f"Commands (WORKDIR/checkpoint is the full model; at {BLOCKS} blocks, "
              f"WORKDIR/checkpoint-{BLOCKS}blocks):", ""]
    lines += [f"- {m}: `{c}`" for m, c in dict.fromkeys((r["method"], r["command"].replace(f"-{BLOCKS}blocks", ""))
                                                        for r in result["rows"])]
    return "# Full size: methods\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="methods to run at 2 blocks (comma list; '' none)")
    parser.add_argument("--full-methods", default=DEFAULT_FULL, help="methods to run at full size (comma list)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--calib-count", type=int, default=2)
    parser.add_argument("--cap-minutes", type=float, default=20.0, help="per-run wall-clock cap")
    parser.add_argument("--cap-rss-gb", type=float, default=18.0, help="per-run cap on the tree's anonymous RSS")
    parser.add_argument("--min-available-gb", type=float, default=14.0, help="wait for this much free memory first")
    args = parser.parse_args()
    result = json.loads(RESULT.read_text()) if RESULT.exists() else {"rows": []}
    result.update({"command": "nice -n 10 python bench/full_size_methods.py WORKDIR", "machine": machine(),
                   "date": today(), "steps": args.steps, "calib_count": args.calib_count})
    result.pop("date_source", None)  # this run's date replaces a stamped one
    small_ckpt, full_ckpt = args.workdir / f"checkpoint-{BLOCKS}blocks", args.workdir / "checkpoint"
    runs = [(f"{BLOCKS} blocks", small_ckpt, m) for m in filter(None, args.methods.split(","))]
    runs += [(f"{FULL_BLOCKS} blocks", full_ckpt, m) for m in filter(None, args.full_methods.split(","))]
    if any(c == full_ckpt for _, c, _ in runs) and not (full_ckpt / "transformer").is_dir():
        raise SystemExit(f"{args.workdir}: expected checkpoint/ (bench/full_size.py --keep, or "
                         "examples/make_random_dit4sr.py dit4sr-medium WORKDIR/checkpoint --heavy-tailed)")
    if any(c == small_ckpt for _, c, _ in runs) and not (small_ckpt / "transformer").is_dir():
        _, wall, peak = timed([sys.executable, str(ROOT / "examples" / "make_random_dit4sr.py"), "dit4sr-medium",
                               str(small_ckpt), "--heavy-tailed", "--blocks", str(BLOCKS)], args.workdir)
        print(f"made {small_ckpt} in {wall:.1f} s, peak RSS {peak / 2**30:.2f} GB", flush=True)
    for model, ckpt, method in runs:
        row = measure(args.workdir, model, ckpt, method, args)
        print(json.dumps({k: v for k, v in row.items() if k != "stderr_tail"}), flush=True)
        result["rows"] = [r for r in result["rows"] if (r["model"], r["method"]) != (model, method)] + [row]
        RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))


if __name__ == "__main__":
    main()
