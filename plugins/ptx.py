"""PTX text as the TensorRT plugins hand it over: the ``.entry`` parameters, ``.version`` and ``.target``, the
unused trailing parameters Triton appends, what the code uses (async copies, TMA, int8 ``wgmma``, loops), and
``ptxas -v`` of the ptxas Triton ships (registers, spills) -- all without a GPU.

Only the PTX that ``triton.compile`` writes is parsed (one ``.visible .entry`` per module, parameters one per
line); anything else is refused with an error naming what was not found.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_PARAM = re.compile(r"^\s*\.param\s+(\.[a-z]\d+)((?:\s+\.[a-z_]+(?:\s+\d+)?)*)\s+([A-Za-z_$][\w$]*)\s*,?\s*$")
_VERSION = re.compile(r"^\.version\s+(\d+)\.(\d+)\s*$", re.MULTILINE)
_TARGET = re.compile(r"^\.target\s+(\S+?)\s*$", re.MULTILINE)
#: Instructions that exist only on the architecture-specific target sm_90a (PTX ISA, "Target ISA notes" of
#: wgmma.*, setmaxnreg): without them the PTX can say sm_90 and also JIT-compile for later GPUs.
ARCH_SPECIFIC = ("wgmma.", "setmaxnreg.")


@dataclass(frozen=True)
class EntryParam:
    """One ``.param`` of the entry: its PTX type (``.u64``, ``.u32``...), whether it is declared a pointer, its name."""

    ptx_type: str
    pointer: bool
    name: str


def _entry_span(ptx: str, name: str) -> tuple[int, int, int]:
    """(start of the parameter list, its end, end of the entry's body) for entry ``name``."""
    head = re.search(rf"\.visible\s+\.entry\s+{re.escape(name)}\s*\(", ptx)
    if head is None:
        raise ValueError(f"PTX has no .visible .entry {name}")
    close = ptx.index(")", head.end())
    body_open = ptx.index("{", close)
    depth, i = 0, body_open
    while True:
        depth += {"{": 1, "}": -1}.get(ptx[i], 0)
        if depth == 0:
            return head.end(), close, i
        i += 1


def entry_params(ptx: str, name: str) -> list[EntryParam]:
    """The parameters of entry ``name`` in order."""
    start, close, _ = _entry_span(ptx, name)
    params = []
    for line in ptx[start:close].splitlines():
        if not line.strip():
            continue
        m = _PARAM.match(line)
        if m is None:
            raise ValueError(f"unparsed parameter line in entry {name}: {line.strip()!r}")
        params.append(EntryParam(m.group(1), ".ptr" in m.group(2), m.group(3)))
    return params


def version(ptx: str) -> tuple[int, int]:
    m = _VERSION.search(ptx)
    if m is None:
        raise ValueError("PTX has no .version directive")
    return int(m.group(1)), int(m.group(2))


def target(ptx: str) -> str:
    m = _TARGET.search(ptx)
    if m is None:
        raise ValueError("PTX has no .target directive")
    return m.group(1)


def uses_arch_specific(ptx: str) -> bool:
    """Whether the code uses an instruction that needs the ``a`` target (e.g. ``wgmma`` on sm_90a)."""
    return any(op in ptx for op in ARCH_SPECIFIC)


def retarget(ptx: str, new_target: str) -> str:
    """The PTX with its ``.target`` replaced (one directive)."""
    out, count = _TARGET.subn(f".target {new_target}", ptx)
    if count != 1:
        raise ValueError(f"expected one .target directive, found {count}")
    return out


def strip_trailing_params(ptx: str, name: str, count: int) -> str:
    """Entry ``name`` without its last ``count`` parameters, which must be unreferenced in the module."""
    if count == 0:
        return ptx
    params = entry_params(ptx, name)
    if count > len(params):
        raise ValueError(f"entry {name} has {len(params)} parameters, cannot drop {count}")
    dropped = params[-count:]
    start, close, _ = _entry_span(ptx, name)
    for p in dropped:
        if len(re.findall(rf"\b{re.escape(p.name)}\b", ptx)) != 1:  # the declaration itself is the one use
            raise ValueError(f"entry {name}: parameter {p.name} is referenced in the body; it cannot be removed")
    lines = [line for line in ptx[start:close].splitlines() if line.strip()]
    kept = [line.rstrip().rstrip(",") for line in lines[: len(lines) - count]]
    new_list = "\n" + ",\n".join(kept) + "\n" if kept else ""
    return ptx[:start] + new_list + ptx[close:]


def loop_regions(ptx: str) -> list[tuple[int, int]]:
    """(first line, last line) of each loop in the PTX: a branch back to a label above it."""
    lines = ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^\s*(\$[\w$]+):", line))}
    loops = []
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$[\w$]+)\s*;", line)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            loops.append((labels[m.group(1)], i))
    return loops


#: What the kernels' speed depends on, as PTX instruction prefixes: non-bulk async copies (sm_80+), TMA tensor
#: copies, and the Hopper int8 warpgroup MMA.
FEATURES = {"cp_async": re.compile(r"\bcp\.async\.c[ag]\b"),
            "tma": re.compile(r"\bcp\.async\.bulk\.tensor\b"),
            "wgmma_int8": re.compile(r"\bwgmma\.mma_async\S*\.s32\.[su]8\.[su]8\b")}


def features(ptx: str) -> dict[str, dict[str, bool]]:
    """For each of :data:`FEATURES`: whether the PTX uses it at all, and inside a loop."""
    lines = ptx.splitlines()
    loops = loop_regions(ptx)
    out = {}
    for key, pattern in FEATURES.items():
        hits = [i for i, line in enumerate(lines) if pattern.search(line)]
        out[key] = {"any": bool(hits), "in_loop": any(a <= i <= b for i in hits for a, b in loops)}
    return out


@dataclass(frozen=True)
class PtxasInfo:
    """What ``ptxas -v`` says of one entry."""

    ptxas: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    static_shared_bytes: int


def ptxas_path() -> Path:
    """The ptxas that Triton uses for sm_90 (its bundled CUDA 13 ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return Path(get_ptxas(90).path)


def ptxas_info(ptx: str, gpu_name: str, ptxas: Path | None = None) -> PtxasInfo:
    """Assemble ``ptx`` for ``gpu_name`` (e.g. sm_90a) with ptxas -v; an assembler error raises with its log."""
    ptxas = ptxas or ptxas_path()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        run = subprocess.run([str(ptxas), "-v", f"--gpu-name={gpu_name}", str(src), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True)
    log = run.stdout + run.stderr
    if run.returncode:
        raise RuntimeError(f"ptxas ({ptxas}) rejected the PTX for {gpu_name}:\n{log.strip()}")

    def num(pattern: str) -> int:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return PtxasInfo(str(ptxas), num(r"Used (\d+) registers"), num(r"(\d+) bytes spill stores"),
                     num(r"(\d+) bytes spill loads"), num(r"(\d+) bytes stack frame"), num(r"(\d+) bytes smem"))
