"""One image, start to finish: load, check, upscale, write atomically, record. ``run`` calls it in its own process
and every Ray worker calls it (:mod:`qdit4sr_export.runtime.distributed`), so both write the same bytes under the
same names and report the same fields.

A record is a JSON-ready dict: ``input``, ``output`` (None when it failed), ``status`` ("done" or "failed"),
``error`` (failed only: the one-line reason), ``sha256`` of the written file, ``seconds`` (load to write),
``worker`` (``host:pid``), and the pipeline's own per-image report (sizes, tiles, per-step variant and time).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qdit4sr_export.errors import UserError

DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class ImageSettings:
    """What every image of a run shares: the sampling options (a ``PipelineOptions``) and what to do with alpha."""

    options: Any
    alpha: str = "keep"


def worker_name() -> str:
    """Who does the work: ``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def failure(source: str | Path, error: str, *, worker: str | None = None) -> dict[str, Any]:
    """The record of an input that produced nothing (``error``: the one-line reason)."""
    return {"input": str(source), "output": None, "status": FAILED, "error": error,
            "worker": worker or worker_name()}


def super_resolve_image(pipe, source: str | Path, target: str | Path, settings: ImageSettings, *,
                        data: bytes | None = None, on_step: Callable[[int, int], None] | None = None
                        ) -> dict[str, Any]:
    """Super-resolve ``source`` (or ``data``, its bytes) into ``target`` and return its record. Bad input (an
    unreadable or too small image, a non-finite result) is a failed record, never an exception; the output is
    written atomically, so it exists whole or not at all."""
    from qdit4sr_export.engine.checksum import sha256_file
    from qdit4sr_export.runtime.images import load_image, save_image
    from qdit4sr_export.runtime.resize import to_output_size

    start = time.perf_counter()
    worker = worker_name()
    try:
        image = load_image(source, data)
        out, rep = pipe.upscale(image.rgb, settings.options, on_step=on_step)
        out_alpha = None
        if image.alpha is not None and settings.alpha == "keep":
            out_alpha = to_output_size(image.alpha, pipe.resize_plan(image.rgb))
        save_image(target, out, out_alpha, grey=image.info.grey, bit_depth=image.info.bit_depth)
    except UserError as exc:
        message = str(exc) if str(source) in str(exc) else f"{source}: {exc}"
        return {**failure(source, message, worker=worker), "seconds": round(time.perf_counter() - start, 3)}
    return {"input": str(source), **rep.to_dict(), "output": str(target), "status": DONE,
            "sha256": sha256_file(target), "seconds": round(time.perf_counter() - start, 3), "worker": worker,
            "input_mode": image.info.mode, "bit_depth": image.info.bit_depth}
