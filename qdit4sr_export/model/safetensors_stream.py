"""Write safetensors files one tensor at a time (the header first, from names, dtypes and shapes), so a checkpoint
larger than memory can be written: each tensor's bytes are produced, written and dropped in turn.

The output is what ``safetensors`` reads: an 8-byte little-endian header length, a JSON header (padded with spaces
to 8 bytes) mapping names to dtype, shape and byte offsets, then the data in the given order. Deterministic.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

#: safetensors dtype names -> bytes per element.
ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


@dataclass(frozen=True)
class Entry:
    """One tensor to write: name, safetensors dtype, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_BYTES[self.dtype]


def _header(entries: Sequence[Entry], metadata: Mapping[str, str] | None) -> bytes:
    table: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for e in entries:
        table[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(table, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def write_safetensors(path: Path, entries: Sequence[Entry], produce: Callable[[Entry], torch.Tensor], *,
                      metadata: Mapping[str, str] | None = None, bar: tqdm | None = None) -> None:
    """Write ``entries`` to ``path``; ``produce(entry)`` returns each tensor (converted to the entry's dtype here)."""
    header = _header(entries, metadata)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for e in entries:
            t = produce(e).to(TORCH_DTYPES[e.dtype]).contiguous()
            if tuple(t.shape) != e.shape:
                raise ValueError(f"tensor {e.name!r} has shape {tuple(t.shape)}, {e.shape} expected")
            data = t.view(torch.uint8).numpy() if t.dtype == torch.bfloat16 else t.numpy()
            f.write(np.ascontiguousarray(data).tobytes())
            if bar is not None:
                bar.update(e.nbytes)


def shard(entries: Iterable[Entry], max_shard_bytes: int | None) -> list[list[Entry]]:
    """Split ``entries`` (in order) into shards of at most ``max_shard_bytes`` (one shard when None)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if max_shard_bytes is not None and shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards
