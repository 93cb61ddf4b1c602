"""Where a model's weights come from: an in-memory module, or a checkpoint read one tensor at a time.

A model opened lazily (:func:`qdit4sr_export.model.loading.open_dit4sr`) is a DiT4SR skeleton on the meta device
with a :class:`CheckpointWeights` attached: every consumer (plan statistics, fingerprints, the traced graph's
initializers, the simulation) asks :func:`source_of` for one tensor at a time, converted to float32 on demand, so
the whole model is never in memory in float32. An ordinary in-memory model answers the same questions through
:class:`ModuleWeights`, so both give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import ABC, abstractmethod
from typing import Iterable

import torch
from torch import nn

from qdit4sr_export.model.checkpoint import Checkpoint
from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.model.positions import POS_EMBED_KEY, check_crop, computed_crop, crop_spans, crop_table

#: Attribute under which a lazily opened model carries its weight source.
SOURCE_ATTR = "_weight_source"


class WeightSource(ABC):
    """Named tensors in their stored dtype, read one at a time; float32 copies on demand."""

    config: DiT4SRConfig

    @abstractmethod
    def names(self) -> list[str]:
        """Every tensor's name."""

    @abstractmethod
    def read(self, name: str) -> torch.Tensor:
        """The tensor as stored (e.g. float16)."""

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor converted to ``dtype`` (the positional table in full when asked for by name)."""
        if name == POS_EMBED_KEY and name not in self.names():
            return computed_crop(self.config, self.config.pos_embed_max_size).to(dtype)
        return self.read(name).to(dtype)

    def positional_crop(self, grid: int) -> torch.Tensor:
        """The central ``grid x grid`` crop of the positional table, float32 (1, grid * grid, D)."""
        if grid == self.config.pos_embed_max_size:
            return self.tensor(POS_EMBED_KEY)
        return computed_crop(self.config, grid)

    def fingerprint(self, names: Iterable[str]) -> str:
        """sha256 over the named linears' weights as float32 bytes (one layer in memory at a time)."""
        h = hashlib.sha256()
        for name in names:
            h.update(name.encode())
            h.update(self.tensor(f"{name}.weight").contiguous().numpy().tobytes())
        return h.hexdigest()

    def __deepcopy__(self, memo) -> "WeightSource":
        return self  # read-only: a copied model reads the same weights


class CheckpointWeights(WeightSource):
    """A checkpoint read lazily; fingerprints are computed once per set of layers (the file does not change)."""

    def __init__(self, checkpoint: Checkpoint, config: DiT4SRConfig) -> None:
        self.checkpoint = checkpoint
        self.config = config
        self._names = list(checkpoint.specs)
        self._fingerprints: dict[tuple[str, ...], str] = {}

    def names(self) -> list[str]:
        return self._names

    def read(self, name: str) -> torch.Tensor:
        return self.checkpoint.read(name)

    def positional_crop(self, grid: int) -> torch.Tensor:
        if POS_EMBED_KEY not in self.checkpoint.specs or grid == self.config.pos_embed_max_size:
            return super().positional_crop(grid)
        spans = [self.checkpoint.read_rows(POS_EMBED_KEY, a, b).to(torch.float32) for a, b in
                 crop_spans(self.config, grid)]
        return torch.cat(spans, dim=1)

    def fingerprint(self, names: Iterable[str]) -> str:
        key = tuple(names)
        if key not in self._fingerprints:
            self._fingerprints[key] = super().fingerprint(key)
        return self._fingerprints[key]


class ModuleWeights(WeightSource):
    """The parameters and buffers of an in-memory model (live: later changes to the model are seen)."""

    def __init__(self, model: nn.Module) -> None:
        self.config = model.config
        self._state = dict(model.state_dict(keep_vars=True))

    def names(self) -> list[str]:
        return list(self._state)

    def read(self, name: str) -> torch.Tensor:
        return self._state[name].detach()

    def positional_crop(self, grid: int) -> torch.Tensor:
        return crop_table(self.tensor(POS_EMBED_KEY), self.config, grid)


def attach_source(model: nn.Module, source: WeightSource) -> nn.Module:
    """Make ``source`` the weights of ``model`` (a meta-device skeleton)."""
    object.__setattr__(model, SOURCE_ATTR, source)
    return model


def on_meta(model: nn.Module) -> bool:
    return next(model.parameters()).device.type == "meta"


def source_of(model: nn.Module) -> WeightSource | None:
    """The model's weight source: the attached one, the module itself, or None for a weightless preset."""
    attached = getattr(model, SOURCE_ATTR, None)
    if attached is not None:
        return attached
    return None if on_meta(model) else ModuleWeights(model)


def has_weights(model: nn.Module) -> bool:
    return source_of(model) is not None


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def materialize(model: nn.Module, *, skip: Iterable[str] = (), dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load the meta tensors of a lazily opened model from its source, in place (``skip``: module names whose
    tensors stay on meta, e.g. layers a caller builds itself). The positional table keeps the model's size."""
    source = getattr(model, SOURCE_ATTR, None)
    if source is None:
        return model
    skipped = tuple(f"{s}." for s in skip)
    for name, t in list(model.state_dict(keep_vars=True).items()):
        if t.device.type != "meta" or name.startswith(skipped):
            continue
        if name == POS_EMBED_KEY:
            grid = model.pos_embed.pos_embed_max_size
            value = source.positional_crop(grid).to(dtype)
        else:
            value = source.tensor(name, dtype)
        _assign(model, name, value.contiguous())
    return model


def materialize_part(model: nn.Module, prefix: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load the meta tensors of one submodule (``prefix``, e.g. ``transformer_blocks.3``) of a lazily opened model
    from its source, in place, and return that submodule: a pass that runs one block at a time holds one block's
    weights. ``submodule.to("meta")`` lets them go again."""
    source = getattr(model, SOURCE_ATTR, None)
    part = model.get_submodule(prefix)
    if source is None:
        return part
    for name, t in list(part.state_dict(keep_vars=True).items()):
        if t.device.type == "meta":
            _assign(model, f"{prefix}.{name}", source.tensor(f"{prefix}.{name}", dtype).contiguous())
    return part


def crop_positions_(model: nn.Module, grid: int) -> nn.Module:
    """Keep only the central ``grid x grid`` crop of an in-memory model's positional table (latents up to ``grid``
    patches run unchanged; larger ones are a one-line error)."""
    patch = model.pos_embed
    if grid == patch.pos_embed_max_size:
        return model
    table = patch.pos_embed
    if table.device.type == "meta":
        check_crop(model.config, grid)
        patch.pos_embed = torch.empty(1, grid * grid, table.shape[-1], device="meta")
    else:
        current = dataclasses.replace(model.config, pos_embed_max_size=patch.pos_embed_max_size)
        patch.pos_embed = crop_table(table, current, grid).contiguous()
    patch.pos_embed_max_size = grid
    return model


def positional_grid_for(config: DiT4SRConfig, latent_side: int) -> int:
    """The smallest crop (patches per side) that latents up to ``latent_side`` run on unchanged."""
    full = config.pos_embed_max_size
    grid = min(-(-latent_side // config.patch_size), full)
    return grid + 1 if (full - grid) % 2 else grid


def lazy_copy(model: nn.Module, *, latent_side: int | None = None) -> nn.Module:
    """A meta-device copy of ``model`` reading the same weights (nothing is copied until materialized);
    ``latent_side`` keeps only the positional crop that latents up to that side use."""
    from qdit4sr_export.model.transformer import build_dit4sr

    source = source_of(model)
    if source is None:
        raise ValueError("lazy_copy needs a model with weights")
    twin = attach_source(build_dit4sr(model.config, device="meta"), source)
    if latent_side is not None:
        crop_positions_(twin, positional_grid_for(model.config, latent_side))
    return twin
