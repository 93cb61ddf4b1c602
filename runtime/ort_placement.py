"""Where ONNX Runtime placed each node of a session, from the session's own record of its graph partitioning
(session option ``session.record_ep_graph_assignment_info``, read with ``get_provider_graph_assignment_info``), so
a CUDA session names every node the CUDA execution provider did not take instead of running it on the CPU
silently. The record is the same for every execution provider (tested here with the CPU one).
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)

RECORD_KEY = "session.record_ep_graph_assignment_info"
CUDA = "CUDAExecutionProvider"
#: Node names listed in the warning before "and N more" (the counts per op type are always complete).
LISTED = 40


def record(session_options) -> None:
    """Ask ONNX Runtime to keep the node placement of sessions made with these options."""
    session_options.add_session_config_entry(RECORD_KEY, "1")


def assignment(session) -> dict[str, list[tuple[str, str]]]:
    """Execution provider -> [(node name, op type)] of every node, in ONNX Runtime's partition order (needs
    ``record`` on the session's options; an ONNX Runtime without the record raises AttributeError)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for sub in session.get_provider_graph_assignment_info():
        out.setdefault(sub.ep_name, []).extend((n.name, n.op_type) for n in sub.get_nodes())
    return out


def not_on(placed: dict[str, list[tuple[str, str]]], provider: str) -> list[tuple[str, str, str]]:
    """(provider, node, op type) of every node placed anywhere but ``provider``."""
    return [(ep, name, op) for ep, nodes in placed.items() if ep != provider for name, op in nodes]


def describe(placed: dict[str, list[tuple[str, str]]], provider: str, what: str) -> str | None:
    """One line naming the nodes of ``what`` that ``provider`` did not take (None when it took them all)."""
    away = not_on(placed, provider)
    if not away:
        return None
    total = sum(len(nodes) for nodes in placed.values())
    where = Counter(ep for ep, _, _ in away)
    ops = Counter(op for _, _, op in away)
    names = ", ".join(name or f"<unnamed {op}>" for _, name, op in away[:LISTED])
    more = f" and {len(away) - LISTED} more" if len(away) > LISTED else ""
    return (f"{what}: {len(away)} of {total} nodes not on {provider} ("
            + ", ".join(f"{n} on {ep}" for ep, n in where.items()) + "; by op: "
            + ", ".join(f"{op} x{n}" for op, n in ops.most_common()) + f"): {names}{more}")


def report(session, providers: list[str], what: str) -> dict[str, list[tuple[str, str]]] | None:
    """For a session asked to run on CUDA: log (warning) every node placed elsewhere; the placement, or None
    when the session was not asked for CUDA."""
    if CUDA not in providers:
        return None
    try:
        placed = assignment(session)
    except AttributeError:
        log.warning("%s: this onnxruntime cannot report node placement (no get_provider_graph_assignment_info); "
                    "nodes the CUDA execution provider cannot run go to the CPU unlisted", what)
        return None
    line = describe(placed, CUDA, what)
    if line:
        log.warning("%s", line)
    return placed
