"""The engine-set format, in one place: schema and version, the manifest (read, validate, write), file
checksums (full and sampled) and the index of the tensors in ``weights.bin``.

An engine set is a folder: ``manifest.json``, one ONNX graph per variant, ``weights.bin`` (every parameter-like
initializer once, 64-byte aligned, shared by all variants as ONNX external data), the plan, and what the
pipeline needs (``vae/``, ``prompt_embeds.safetensors``, ``scheduler/``, ``pipeline.json``). Every backend reads
the same bytes: ONNX Runtime through the graphs' external data, the kernels through :class:`WeightsFile`.

Integrity: the manifest records each file's size and sha256; files up to :data:`FULL_CHECK_MAX_BYTES` are
hashed in full on every load (milliseconds for the example model), larger ones by a sampled digest over
:data:`SAMPLE_BLOCKS` evenly spaced 4 KiB blocks. ``verify="full"`` (``run --verify``) hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from qdit4sr_export.engine.checksum import sha256_file
from qdit4sr_export.errors import UserError

SCHEMA = "qdit4sr-export/engine-set"
VERSION = 2
MANIFEST = "manifest.json"
WEIGHTS_FILE = "weights.bin"
ALIGN = 64
#: Files up to this size get a full sha256 check on every load; larger ones a sampled one.
FULL_CHECK_MAX_BYTES = 256 << 20
SAMPLE_BLOCK_BYTES = 4096
SAMPLE_BLOCKS = 4096
VERIFY_LEVELS = ("size", "quick", "full")
REQUIRED_KEYS = ("model", "timesteps", "step_variant", "variants", "files", "weights", "quantized_layers")

#: ONNX element types stored in weights.bin -> numpy dtype of the stored bytes (INT4: packed pairs in uint8).
STORED_DTYPES = {"FLOAT": np.float32, "FLOAT16": np.float16, "BFLOAT16": np.uint16, "DOUBLE": np.float64,
                 "INT4": np.uint8, "UINT4": np.uint8, "INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16,
                 "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def sampled_sha256(path: str | Path, *, block: int = SAMPLE_BLOCK_BYTES, blocks: int | None = None) -> str:
    """sha256 over the file size and ``blocks`` (default :data:`SAMPLE_BLOCKS`) evenly spaced blocks of ``block``
    bytes (all of a small file)."""
    path = Path(path)
    blocks = SAMPLE_BLOCKS if blocks is None else blocks
    size = path.stat().st_size
    total = max(1, -(-size // block))
    picks = range(total) if total <= blocks else (i * total // blocks for i in range(blocks))
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in picks:
            f.seek(i * block)
            h.update(f.read(block))
    return h.hexdigest()


def file_entry(folder: Path, path: Path) -> dict[str, Any]:
    """The manifest's record of one file: relative path, size, sha256, and the sampled digest of a large file."""
    entry: dict[str, Any] = {"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size,
                             "sha256": sha256_file(path)}
    if entry["bytes"] > FULL_CHECK_MAX_BYTES:
        entry["sampled_sha256"] = sampled_sha256(path)
    return entry


def file_table(folder: Path) -> list[dict[str, Any]]:
    """Every file under ``folder`` but the manifest, sorted by path."""
    return [file_entry(folder, p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}.")]


def check_files(folder: Path, files: Iterable[Mapping[str, Any]], verify: str = "quick") -> None:
    """Every listed file present with its size; ``quick``: full sha256 of small files, sampled of large ones;
    ``full``: sha256 of everything. A mismatch is a one-line error naming the file."""
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
    for entry in files:
        file = folder / entry["path"]
        if not file.is_file():
            raise UserError(f"{folder}: file {entry['path']} listed in the manifest is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise UserError(f"{folder}: file {entry['path']} has {size} bytes, the manifest says {entry['bytes']}")
        if verify == "size":
            continue
        if verify == "quick" and "sampled_sha256" in entry:
            if sampled_sha256(file) != entry["sampled_sha256"]:
                raise UserError(f"{folder}: file {entry['path']} is damaged (its sampled sha256 does not match "
                                "the manifest); rebuild or re-copy the engine set")
        elif sha256_file(file) != entry["sha256"]:
            raise UserError(f"{folder}: file {entry['path']} is damaged (its sha256 does not match the manifest); "
                            "rebuild or re-copy the engine set")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """``manifest.json`` of an engine-set folder, with schema, version and required keys checked."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder}: no such engine-set folder")
    if not path.is_file():
        raise UserError(f"{folder}: not an engine set (no {MANIFEST}); build one with `qdit4sr-export build`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise UserError(f"{path}: schema is not {SCHEMA!r}")
    if manifest.get("version") != VERSION:
        raise UserError(f"{path}: engine set version {manifest.get('version')!r} is not supported (this tool reads "
                        f"{VERSION}); rebuild it with this version of qdit4sr-export")
    for key in REQUIRED_KEYS:
        if key not in manifest:
            raise UserError(f"{path}: missing key '{key}'")
    return manifest


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` with schema, version, tool version and the file table of ``folder``."""
    from qdit4sr_export import __version__

    full = {"schema": SCHEMA, "version": VERSION, "tool_version": __version__, **manifest,
            "files": file_table(folder)}
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    try:  # replaced in one rename: a reader sees the old manifest or the new one, never half of one
        tmp.write_text(json.dumps(full, indent=1) + "\n")
        os.replace(tmp, folder / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)
    return full


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in weights.bin: ONNX element type name, logical shape, byte offset and length."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset,
                "bytes": self.nbytes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorEntry":
        return cls(str(d["name"]), str(d["dtype"]), tuple(int(s) for s in d["shape"]), int(d["offset"]),
                   int(d["bytes"]))


class WeightsFile:
    """Read-only, memory-mapped view of ``weights.bin`` by tensor name (no copy of the weights is made).

    INT4/UINT4 tensors come back as their packed bytes (two codes per byte, low nibble first, in the flattened
    order of the logical shape), shaped ``(*shape[:-1], shape[-1] // 2)`` when the last dimension is even.
    """

    def __init__(self, path: str | Path, entries: Iterable[TensorEntry]) -> None:
        self.path = Path(path)
        self.entries = {e.name: e for e in entries}
        self._map: np.memmap | None = None

    @classmethod
    def of(cls, folder: Path, manifest: Mapping[str, Any]) -> "WeightsFile":
        w = manifest["weights"]
        return cls(folder / w["file"], (TensorEntry.from_dict(t) for t in w["tensors"]))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def array(self, name: str) -> np.ndarray:
        """The stored bytes of tensor ``name`` as a read-only numpy view."""
        entry = self.entries.get(name)
        if entry is None:
            raise UserError(f"{self.path}: no tensor named {name!r}")
        if entry.dtype not in STORED_DTYPES:
            raise UserError(f"{self.path}: tensor {name!r} has an unsupported type {entry.dtype}")
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._map[entry.offset:entry.offset + entry.nbytes]
        flat = raw.view(STORED_DTYPES[entry.dtype])
        if entry.dtype in ("INT4", "UINT4"):
            if entry.shape and entry.shape[-1] % 2 == 0:
                return flat.reshape(*entry.shape[:-1], entry.shape[-1] // 2)
            return flat
        return flat.reshape(entry.shape)

    def close(self) -> None:
        self._map = None
