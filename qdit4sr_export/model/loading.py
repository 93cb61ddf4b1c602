"""``load_dit4sr`` and ``save_dit4sr``: checkpoint <-> model, with key and shape checks that name the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from qdit4sr_export.engine.atomic import atomic_path
from qdit4sr_export.errors import UserError
from qdit4sr_export.model.checkpoint import (
    CONFIG_METADATA_KEY,
    CONFIG_NAME,
    INDEX_NAME,
    TORCH_SUFFIXES,
    WEIGHTS_NAME,
    Checkpoint,
    TensorSpec,
    open_checkpoint,
)
from qdit4sr_export.model.config import DiT4SRConfig, resolve_config
from qdit4sr_export.model.positions import POS_EMBED_KEY
from qdit4sr_export.model.transformer import DiT4SRTransformer, build_dit4sr
from qdit4sr_export.model.weights import CheckpointWeights, attach_source, materialize

_SHOW = 5


def checkpoint_config(ckpt: Checkpoint, config: Any = None) -> DiT4SRConfig:
    """The config to build: ``config`` when given, else the one the checkpoint carries."""
    if config is not None:
        return resolve_config(config)
    if ckpt.config is None:
        raise UserError(
            f"{ckpt.path} carries no config: pass config= (CLI: --config) with a preset name or a config.json path"
        )
    return ckpt.config


def check_state_specs(model: torch.nn.Module, specs: Mapping[str, TensorSpec], source: str | Path) -> None:
    """Raise a one-line error for missing keys, unexpected keys or a shape mismatch (in that order)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in specs and k != POS_EMBED_KEY]
    if missing:
        raise UserError(
            f"{source}: missing {len(missing)} key(s) the model needs, first: {', '.join(missing[:_SHOW])}"
        )
    unexpected = [k for k in specs if k not in expected]
    if unexpected:
        raise UserError(
            f"{source}: {len(unexpected)} unexpected key(s) not in a DiT4SR of this config, first: "
            f"{', '.join(unexpected[:_SHOW])}"
        )
    for name, spec in specs.items():
        if tuple(spec.shape) != expected[name]:
            raise UserError(
                f"{source}: shape mismatch for '{name}': expected {list(expected[name])}, got {list(spec.shape)}"
            )


def open_dit4sr(path: str | Path, *, config: Any = None) -> DiT4SRTransformer:
    """Open a DiT4SR checkpoint lazily: a meta-device model whose tensors are read one at a time, in their stored
    dtype, when something asks for them (see :mod:`qdit4sr_export.model.weights`). Names and shapes are checked
    now; nothing is loaded."""
    ckpt = open_checkpoint(path)
    cfg = checkpoint_config(ckpt, config)
    model = build_dit4sr(cfg, device="meta")
    check_state_specs(model, ckpt.specs, ckpt.path)
    return attach_source(model, CheckpointWeights(ckpt, cfg)).eval()


def load_dit4sr(
    path: str | Path,
    *,
    config: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DiT4SRTransformer:
    """Load a DiT4SR checkpoint in any accepted format into memory, casting every tensor (mixed F16/F32 included)
    to ``dtype``, one tensor at a time."""
    model = materialize(open_dit4sr(path, config=config), dtype=dtype)
    return model.to(device=device).eval()


def _state_for_saving(model: DiT4SRTransformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _shards(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _write_folder(folder: Path, model: DiT4SRTransformer, max_shard_bytes: int | None) -> None:
    state = _state_for_saving(model)
    config = {"_class_name": "SD3Transformer2DModel", **model.config.to_dict()}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if max_shard_bytes is None:
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return
    shards = _shards(state, max_shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def save_dit4sr(
    model: DiT4SRTransformer,
    path: str | Path,
    *,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Save atomically; the format follows the path: ``.safetensors`` (config in its metadata),
    ``.pt``/``.pth`` (``{"config", "state_dict"}``), anything else a diffusers folder (sharded if
    ``max_shard_bytes`` is given)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        # One key only: safetensors writes a multi-key metadata map in random order (not byte-deterministic).
        metadata = {CONFIG_METADATA_KEY: model.config.to_json()}
        with atomic_path(path, overwrite=overwrite) as tmp:
            save_file(_state_for_saving(model), str(tmp), metadata=metadata)
    elif path.suffix in TORCH_SUFFIXES:
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save({"config": model.config.to_dict(), "state_dict": _state_for_saving(model)}, tmp)
    else:
        with atomic_path(path, overwrite=overwrite, folder=True) as tmp:
            _write_folder(tmp, model, max_shard_bytes)
    return path
