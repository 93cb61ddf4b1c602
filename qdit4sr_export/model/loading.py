"""``load_dit4sr`` and ``save_dit4sr``: checkpoint <-> model, with key and shape checks that name the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from safetensors.torch import save_file

from qdit4sr_export.atomic import atomic_path
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
from qdit4sr_export.model.transformer import DiT4SRTransformer, build_dit4sr

#: Deterministic buffer: loaded when the checkpoint has it (the release stores it as F16), else recomputed.
POS_EMBED_KEY = "pos_embed.pos_embed"
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


def default_pos_embed(config: DiT4SRConfig) -> torch.Tensor:
    """The sin-cos table that diffusers' PatchEmbed registers, computed on the CPU in float32."""
    table = get_2d_sincos_pos_embed(
        config.inner_dim,
        config.pos_embed_max_size,
        base_size=config.sample_size // config.patch_size,
        interpolation_scale=1,
        output_type="pt",
    )
    return table.float().unsqueeze(0)


def load_dit4sr(
    path: str | Path,
    *,
    config: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> DiT4SRTransformer:
    """Load a DiT4SR checkpoint in any accepted format, casting every tensor (mixed F16/F32 included) to ``dtype``."""
    ckpt = open_checkpoint(path)
    cfg = checkpoint_config(ckpt, config)
    model = build_dit4sr(cfg, device="meta", dtype=dtype)
    check_state_specs(model, ckpt.specs, ckpt.path)
    state = {name: tensor.to(device=device, dtype=dtype) for name, tensor in ckpt.tensors()}
    if POS_EMBED_KEY not in state:
        state[POS_EMBED_KEY] = default_pos_embed(cfg).to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


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
