"""Read DiT4SR checkpoints lazily: diffusers folders (single or sharded), ``.safetensors`` and ``.pt`` files.

A :class:`Checkpoint` exposes tensor names, shapes and stored dtypes without reading the data (so
``info`` on the 6.6 GB release is instant), then streams tensors one at a time for loading, or reads any one
tensor by name (what the lazy, layer-by-layer build uses).
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.model.folder import CHECKPOINT_SUFFIXES

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
CONFIG_NAME = "config.json"
TORCH_SUFFIXES = CHECKPOINT_SUFFIXES[1:]
#: safetensors metadata key under which single-file checkpoints written by this tool carry their config.
CONFIG_METADATA_KEY = "dit4sr_config"

_TORCH_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class TensorSpec:
    """Shape and stored dtype (safetensors spelling: F16, F32, BF16, ...) of one checkpoint tensor."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Checkpoint:
    """An opened checkpoint: where it is, its format, its config (if it carries one) and its tensors."""

    path: Path
    format: str
    config: DiT4SRConfig | None
    specs: dict[str, TensorSpec]
    _reader: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    _read_one: Callable[[str], torch.Tensor] | None = None
    _read_rows: Callable[[str, int, int], torch.Tensor] | None = None

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` in the stored dtype, one at a time."""
        return self._reader()

    def read(self, name: str) -> torch.Tensor:
        """One tensor by name, in its stored dtype (a one-line error when the file cannot deliver it)."""
        if name not in self.specs:
            raise UserError(f"{self.path}: no tensor named '{name}'")
        if self._read_one is None:
            return dict(self.tensors())[name]
        return self._read_one(name)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` along the second axis of a 3-D tensor (e.g. a span of the positional table), read
        without the rest of it where the format allows."""
        if self._read_rows is None:
            return self.read(name)[:, start:stop]
        return self._read_rows(name, start, stop)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open any accepted checkpoint format; raise :class:`UserError` naming the problem otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file or folder: {path}")
    if path.is_dir():
        return _open_folder(path)
    if path.suffix == ".safetensors":
        return _open_safetensors([path], path, "safetensors", config=None)
    if path.suffix in TORCH_SUFFIXES:
        return _open_torch(path)
    raise UserError(
        f"{path}: unsupported checkpoint format '{path.suffix or '(no suffix)'}'; expected a diffusers folder, "
        f"a .safetensors file or a {'/'.join(TORCH_SUFFIXES)} state dict"
    )


def _open_folder(folder: Path) -> Checkpoint:
    if not (folder / CONFIG_NAME).is_file() and (folder / "transformer").is_dir():
        folder = folder / "transformer"
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise UserError(
            f"{folder}: not a DiT4SR checkpoint folder (expected {CONFIG_NAME} with {WEIGHTS_NAME} or "
            f"{INDEX_NAME}, or a transformer/ subfolder holding them)"
        )
    config = DiT4SRConfig.from_json_file(config_path)
    if (folder / INDEX_NAME).is_file():
        return _open_safetensors(_shard_files(folder / INDEX_NAME), folder, "diffusers-sharded", config)
    if (folder / WEIGHTS_NAME).is_file():
        return _open_safetensors([folder / WEIGHTS_NAME], folder, "diffusers", config)
    raise UserError(f"{folder}: has {CONFIG_NAME} but neither {WEIGHTS_NAME} nor {INDEX_NAME}")


def _shard_files(index_path: Path) -> list[Path]:
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{index_path}: not valid JSON: {exc}") from None
    except (KeyError, TypeError):
        raise UserError(f"{index_path}: missing key 'weight_map'") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index_path}: 'weight_map' must be a non-empty object")
    files = [index_path.parent / name for name in sorted(set(weight_map.values()))]
    for f in files:
        if not f.is_file():
            raise UserError(f"{index_path}: shard {f.name} is missing")
    return files


def _open_safetensors(files: list[Path], path: Path, fmt: str, config: DiT4SRConfig | None) -> Checkpoint:
    specs: dict[str, TensorSpec] = {}
    owner: dict[str, Path] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                metadata = handle.metadata() or {}
                for name in handle.keys():
                    if name in owner:
                        raise UserError(f"{path}: tensor '{name}' appears in both {owner[name].name} and {f.name}")
                    sl = handle.get_slice(name)
                    specs[name] = TensorSpec(tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
                    owner[name] = f
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{f}: not a readable safetensors file, truncated or damaged ({exc})") from None
        if config is None and CONFIG_METADATA_KEY in metadata:
            try:
                config = DiT4SRConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]), source=str(f))
            except json.JSONDecodeError as exc:
                raise UserError(f"{f}: metadata '{CONFIG_METADATA_KEY}' is not valid JSON: {exc}") from None

    def read() -> Iterator[tuple[str, torch.Tensor]]:
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)

    handles: dict[Path, Any] = {}

    def handle(name: str):
        f = owner[name]
        if f not in handles:
            handles[f] = safe_open(str(f), framework="pt")
        return handles[f]

    def guarded(name: str, get: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        try:
            return get(handle(name))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise UserError(f"{owner[name]}: cannot read tensor '{name}' (truncated or changed since it was opened? "
                            f"{exc})") from None

    return Checkpoint(path, fmt, config, specs, read, lambda name: guarded(name, lambda h: h.get_tensor(name)),
                      lambda name, a, b: guarded(name, lambda h: h.get_slice(name)[:, a:b]))


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (non-zip) files cannot be memory-mapped
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def _open_torch(path: Path) -> Checkpoint:
    try:
        obj = _torch_load(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a PyTorch state dict loadable with weights_only=True ({reason})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    config = None
    if isinstance(obj.get("config"), dict):
        config = DiT4SRConfig.from_dict(obj["config"], source=str(path))
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            if name == "config":
                continue
            raise UserError(f"{path}: entry '{name}' is a {type(value).__name__}, not a tensor")
        state[str(name)] = value
    if not state:
        raise UserError(f"{path}: holds no tensors")
    specs = {n: TensorSpec(tuple(t.shape), _TORCH_DTYPE_NAMES.get(t.dtype, str(t.dtype))) for n, t in state.items()}
    return Checkpoint(path, "torch", config, specs, lambda: iter(state.items()), state.__getitem__)
