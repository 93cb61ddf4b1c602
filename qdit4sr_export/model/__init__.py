"""The DiT4SR transformer, its configs and presets, and checkpoint loading/saving."""

from qdit4sr_export.model.config import PRESETS, DiT4SRConfig, resolve_config
from qdit4sr_export.model.loading import load_dit4sr, save_dit4sr
from qdit4sr_export.model.transformer import DiT4SROutput, DiT4SRTransformer, build_dit4sr

__all__ = [
    "PRESETS",
    "DiT4SRConfig",
    "DiT4SROutput",
    "DiT4SRTransformer",
    "build_dit4sr",
    "load_dit4sr",
    "resolve_config",
    "save_dit4sr",
]
