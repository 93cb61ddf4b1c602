"""A seeded random-weight DiT4SR pipeline folder in the released layout, written one tensor at a time.

``transformer/`` holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or shards and an index) with
the released names and dtypes: the LR control branch in F32, everything else (the positional table included) in
F16, as in the 6.6 GB release. ``vae/`` is SD3.5's AutoencoderKL config with seeded weights (16-channel presets) or
the exact pixel-unshuffle map (12-channel ones); ``prompt_embeds.safetensors`` carries 333 text tokens (77 CLIP +
256 T5, as the real pipeline); ``pipeline.json`` and ``scheduler/`` the official sampling settings. Each tensor is
drawn from its own seeded generator, so the folder is byte-identical for a seed and memory stays at one tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qdit4sr_export.engine.atomic import atomic_path
from qdit4sr_export.errors import UserError
from qdit4sr_export.model.checkpoint import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME
from qdit4sr_export.model.config import DiT4SRConfig, resolve_config
from qdit4sr_export.model.parts import CONTROL, parameter_part
from qdit4sr_export.model.positions import POS_EMBED_KEY, table_rows
from qdit4sr_export.model.safetensors_stream import Entry, shard, write_safetensors
from qdit4sr_export.model.synthetic import heavy_tailed_weight
from qdit4sr_export.model.transformer import build_dit4sr
from qdit4sr_export.report.progress import progress_bar

TEXT_TOKENS = 333  # 77 CLIP-L/G tokens + 256 T5-XXL tokens
VAES = ("auto", "sd35", "unshuffle", "none")
#: SD3.5's AutoencoderKL (the released DiT4SR pipeline's vae/config.json).
SD35_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 1024,
    "scaling_factor": 1.5305, "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False,
    "mid_block_add_attention": True, "force_upcast": True,
}
PIPELINE = {"format": "qdit4sr-export/pipeline", "version": 1, "steps": 40, "guidance_scale": 8.0,
            "start_sigma": 1.0, "color_fix": "adain", "upscale": 4}
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


def _entries(model: nn.Module) -> list[Entry]:
    """Every checkpoint tensor: control branch F32, the rest F16 (the release's layout)."""
    return [Entry(name, "F32" if parameter_part(name) == CONTROL else "F16", tuple(t.shape))
            for name, t in model.state_dict().items()]


def _draw(model: nn.Module, config: DiT4SRConfig, entry: Entry, seed: int, heavy_tailed: bool) -> torch.Tensor:
    """One tensor's values (float32): PyTorch's default init for linears and convolutions, heavy-tailed block
    linears on request, norm gains around 1 (so double normalisation stays visible), the sin-cos table."""
    if entry.name == POS_EMBED_KEY:
        return table_rows(config, 0, config.pos_embed_max_size).unsqueeze(0)
    owner, _, attr = entry.name.rpartition(".")
    module = model.get_submodule(owner)
    g = _generator(seed, entry.name)
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        fan_in = math.prod(module.weight.shape[1:])
        if heavy_tailed and attr == "weight" and isinstance(module, nn.Linear) and owner.startswith("transformer_blocks."):
            return heavy_tailed_weight(*entry.shape, g)
        bound = 1 / math.sqrt(fan_in)
        return (torch.rand(entry.shape, generator=g) * 2 - 1) * bound
    if len(entry.shape) == 1 and attr == "weight":
        return 0.5 + torch.rand(entry.shape, generator=g)
    if len(entry.shape) == 1 and attr == "bias":
        return torch.zeros(entry.shape)
    return torch.randn(entry.shape, generator=g) * 0.02


def _write_vae(folder: Path, kind: str, config: DiT4SRConfig, seed: int) -> None:
    if kind == "unshuffle":
        from qdit4sr_export.model.autoencoder import PixelUnshuffleAutoencoder

        factor = math.isqrt(config.in_channels // 3)
        if 3 * factor * factor != config.in_channels:
            raise UserError(f"--vae unshuffle needs 3 * f^2 latent channels, the model has {config.in_channels}")
        PixelUnshuffleAutoencoder(factor).save(folder)
    elif kind == "sd35":
        from diffusers import AutoencoderKL

        if config.in_channels != SD35_VAE_CONFIG["latent_channels"]:
            raise UserError(f"--vae sd35 has 16 latent channels, the model has {config.in_channels}")
        torch.manual_seed(seed)
        AutoencoderKL(**{k: v for k, v in SD35_VAE_CONFIG.items()}).save_pretrained(str(folder))


def _prompts(config: DiT4SRConfig, seed: int) -> dict[str, torch.Tensor]:
    g = _generator(seed, "prompt_embeds")
    text = torch.randn(2, TEXT_TOKENS, config.joint_attention_dim, generator=g)
    pooled = torch.randn(2, config.pooled_projection_dim, generator=g)
    return {"prompt_embeds": text[1:], "pooled_prompt_embeds": pooled[1:],
            "negative_prompt_embeds": text[:1], "negative_pooled_prompt_embeds": pooled[:1]}


def predicted_bytes(config: DiT4SRConfig, vae: str) -> int:
    """Bytes the folder will take (the SD3.5 VAE at float32, 84 M parameters)."""
    model = build_dit4sr(config, device="meta")
    vae_bytes = 84_000_000 * 4 if vae == "sd35" else 0
    text = 2 * (TEXT_TOKENS * config.joint_attention_dim + config.pooled_projection_dim) * 4
    return sum(e.nbytes for e in _entries(model)) + vae_bytes + text + (1 << 20)


def make_random_checkpoint(preset: str | DiT4SRConfig, out: str | Path, *, seed: int = 0, heavy_tailed: bool = False,
                           vae: str = "auto", max_shard_bytes: int | None = None, force: bool = False,
                           progress: bool = False) -> Path:
    """Write the pipeline folder ``out`` atomically (a temporary folder renamed at the end; removed on error or
    Ctrl-C). ``vae`` "auto": sd35 for 16 latent channels, unshuffle otherwise."""
    from qdit4sr_export.engine.writer import check_disk

    config = resolve_config(preset)
    out = Path(out)
    if vae not in VAES:
        raise UserError(f"--vae must be one of {', '.join(VAES)}, got {vae!r}")
    if vae == "auto":
        vae = "sd35" if config.in_channels == 16 else "unshuffle"
    if out.exists() and not force:
        raise UserError(f"{out} already exists (pass --force to replace it)")
    check_disk(out, predicted_bytes(config, vae))
    model = build_dit4sr(config, device="meta")
    entries = _entries(model)
    shards = shard(entries, max_shard_bytes)
    with atomic_path(out, overwrite=force, folder=True) as tmp:
        folder = tmp / "transformer"
        folder.mkdir()
        (folder / CONFIG_NAME).write_text(json.dumps({"_class_name": "SD3Transformer2DModel", **config.to_dict()},
                                                     indent=2, sort_keys=True) + "\n")
        produce = lambda e: _draw(model, config, e, seed, heavy_tailed)
        with progress_bar(total=sum(e.nbytes for e in entries), desc="transformer", unit="B", unit_scale=True,
                  enabled=progress) as bar:
            if len(shards) == 1:
                write_safetensors(folder / WEIGHTS_NAME, entries, produce, metadata={"format": "pt"}, bar=bar)
            else:
                weight_map = {}
                for i, part in enumerate(shards, start=1):
                    name = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
                    write_safetensors(folder / name, part, produce, metadata={"format": "pt"}, bar=bar)
                    weight_map.update({e.name: name for e in part})
                index = {"metadata": {"total_size": sum(e.nbytes for e in entries)},
                         "weight_map": dict(sorted(weight_map.items()))}
                (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if vae != "none":
            _write_vae(tmp / "vae", vae, config, seed)
        from safetensors.torch import save_file

        save_file(_prompts(config, seed), str(tmp / "prompt_embeds.safetensors"))
        (tmp / "pipeline.json").write_text(json.dumps(PIPELINE, indent=1) + "\n")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=1) + "\n")
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        tmp.chmod(0o755)
    return out
