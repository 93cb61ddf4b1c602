"""DiT4SR configuration: a frozen dataclass that reads and writes diffusers' ``config.json`` keys."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from qdit4sr_export.engine.jsonfile import read_json_object
from qdit4sr_export.errors import UserError

log = logging.getLogger(__name__)

#: Inference-time weight of the LR branch of the cross-stream convolution in the official code.
OFFICIAL_CONTROL_SCALE = 1.2


@dataclass(frozen=True)
class DiT4SRConfig:
    """Architecture of a DiT4SR transformer; field names are those of diffusers' SD3Transformer2DModel config."""

    sample_size: int = 128
    patch_size: int = 2
    in_channels: int = 16
    num_layers: int = 24
    attention_head_dim: int = 64
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    caption_projection_dim: int = 1536
    pooled_projection_dim: int = 2048
    out_channels: int = 16
    pos_embed_max_size: int = 384
    dual_attention_layers: tuple[int, ...] = tuple(range(13))
    qk_norm: str | None = "rms_norm"
    #: Not in the released config.json: the factor on the LR half of ``ff.control_conv`` (1.2 at inference).
    control_scale: float = OFFICIAL_CONTROL_SCALE

    def __post_init__(self) -> None:
        object.__setattr__(self, "dual_attention_layers", tuple(int(i) for i in self.dual_attention_layers))
        for name in ("sample_size", "patch_size", "in_channels", "num_layers", "attention_head_dim",
                     "num_attention_heads", "joint_attention_dim", "caption_projection_dim",
                     "pooled_projection_dim", "out_channels", "pos_embed_max_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"config key '{name}' must be a positive integer, got {value!r}")
        if self.caption_projection_dim != self.inner_dim:
            raise UserError(
                f"config key 'caption_projection_dim' ({self.caption_projection_dim}) must equal "
                f"num_attention_heads * attention_head_dim ({self.inner_dim})"
            )
        if self.qk_norm not in (None, "rms_norm"):
            raise UserError(f"config key 'qk_norm' must be 'rms_norm' or null, got {self.qk_norm!r}")
        bad = [i for i in self.dual_attention_layers if not 0 <= i < self.num_layers - 1]
        if bad:
            raise UserError(
                f"config key 'dual_attention_layers' has {bad}: each must be a block index below the "
                f"last block ({self.num_layers - 1}), which is context_pre_only"
            )

    @property
    def inner_dim(self) -> int:
        """Hidden width of every token stream."""
        return self.num_attention_heads * self.attention_head_dim

    def with_blocks(self, blocks: int) -> "DiT4SRConfig":
        """The same widths with only the first ``blocks`` blocks (the last one context_pre_only, as released), to
        measure per-block costs of a large preset without the whole model."""
        if not isinstance(blocks, int) or isinstance(blocks, bool) or not 1 <= blocks <= self.num_layers:
            raise UserError(f"blocks must be an integer from 1 to {self.num_layers}, got {blocks!r}")
        return dataclasses.replace(self, num_layers=blocks,
                                   dual_attention_layers=tuple(i for i in self.dual_attention_layers if i < blocks - 1))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict in diffusers' key names (plus ``control_scale``)."""
        d = dataclasses.asdict(self)
        d["dual_attention_layers"] = list(self.dual_attention_layers)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "DiT4SRConfig":
        """Build from a diffusers config dict; keys starting with '_' are diffusers bookkeeping and ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key.startswith("_"):
                continue
            if key not in known:
                log.warning("%s: ignoring config key '%s' that DiT4SR does not use", source, key)
                continue
            kwargs[key] = tuple(value) if key == "dual_attention_layers" else value
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - defensive, all fields have defaults
            raise UserError(f"{source}: {exc}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "DiT4SRConfig":
        path = Path(path)
        data = read_json_object(path, "config file")
        return cls.from_dict(data, source=str(path))


PRESETS: dict[str, DiT4SRConfig] = {
    # The released DiT4SR (SD3.5-Medium MM-DiT + LR control branch).
    "dit4sr-medium": DiT4SRConfig(),
    # Small presets with the same structure (dual-attention blocks, a context_pre_only last block)
    # for tests and examples. 192 = 12 * 16 exercises the non-power-of-two Hadamard path.
    "dit4sr-small": DiT4SRConfig(
        sample_size=32, num_layers=4, attention_head_dim=48, num_attention_heads=4,
        joint_attention_dim=256, caption_projection_dim=192, pooled_projection_dim=128,
        pos_embed_max_size=64, dual_attention_layers=(0, 1),
    ),
    "dit4sr-tiny": DiT4SRConfig(
        sample_size=16, num_layers=3, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=64, pooled_projection_dim=32,
        pos_embed_max_size=32, dual_attention_layers=(0,),
    ),
    # The trained example model (examples/dit4sr-tiny): 12-channel pixel-unshuffle(2) latents, about 3 M parameters.
    "dit4sr-example": DiT4SRConfig(
        sample_size=64, in_channels=12, out_channels=12, num_layers=4, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=128, pooled_projection_dim=64,
        pos_embed_max_size=64, dual_attention_layers=(0, 1),
    ),
}


def resolve_config(config: "DiT4SRConfig | str | Path | Mapping[str, Any]") -> DiT4SRConfig:
    """Accept a config object, a preset name, a config.json path or a dict."""
    if isinstance(config, DiT4SRConfig):
        return config
    if isinstance(config, Mapping):
        return DiT4SRConfig.from_dict(config)
    text = str(config)
    if text in PRESETS:
        return PRESETS[text]
    if text.endswith(".json") or Path(text).is_file():
        return DiT4SRConfig.from_json_file(text)
    raise UserError(f"unknown preset '{text}'; known presets: {', '.join(sorted(PRESETS))} (or give a config.json path)")


__all__ = ["DiT4SRConfig", "PRESETS", "OFFICIAL_CONTROL_SCALE", "resolve_config"]
