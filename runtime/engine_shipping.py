"""Ship an engine set to Ray workers through Ray's object store, once per node.

The driver puts every file of the set into the object store in chunks (``ray.put``: one copy in the cluster, held
while the run holds the :class:`ShippedEngineSet`). A worker asks for the set with :func:`materialize`: the first
worker on a node fetches the chunks (Ray moves each object to that node once) and writes the set under the node's
temporary folder, keyed by the manifest's sha256, behind a file lock; every later worker on that node (a second
actor, a restarted one, the next run of the same set) finds it there and fetches nothing. The folder is written
atomically and checked against the manifest's checksums when the pipeline loads it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Object-store chunk: bounds the memory a file of several GB needs on the driver and on each worker.
CHUNK_BYTES = 64 << 20
#: Where workers unpack shipped sets (under the node's temporary folder; QDIT4SR_ENGINE_CACHE overrides).
CACHE_ENV = "QDIT4SR_ENGINE_CACHE"


@dataclass(frozen=True)
class ShippedEngineSet:
    """An engine set in the object store: its manifest's sha256 (the cache key), folder name and each file's chunk
    references (relative path -> object refs, in order)."""

    key: str
    name: str
    files: dict[str, list[Any]] = field(compare=False)


def ship(folder: str | Path) -> ShippedEngineSet:
    """Put every file of engine set ``folder`` into Ray's object store (the driver must be connected)."""
    import ray

    folder = Path(folder)
    key = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    files: dict[str, list[Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        refs = []
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
                refs.append(ray.put(chunk))
        files[path.relative_to(folder).as_posix()] = refs
    return ShippedEngineSet(key, folder.name, files)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "qdit4sr-engine-sets")


def materialize(shipped: ShippedEngineSet) -> Path:
    """The shipped set as a folder on this node: fetched and written by the first worker here, reused after."""
    import fcntl

    import ray

    from qdit4sr_export.engine.atomic import atomic_path

    root = cache_root() / shipped.key
    root.mkdir(parents=True, exist_ok=True)
    target = root / shipped.name
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            with atomic_path(target, folder=True) as tmp:
                for relative, refs in shipped.files.items():
                    path = tmp / relative
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "wb") as f:
                        for ref in refs:
                            f.write(ray.get(ref))
    return target
