"""Test helpers: small seeded DiT4SR models and matching random inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from qdit4sr_export.model import DiT4SRTransformer, build_dit4sr
from qdit4sr_export.model.autoencoder import PixelUnshuffleAutoencoder
from qdit4sr_export.model.config import PRESETS
from qdit4sr_export.model.loading import save_dit4sr


def make_inputs(model: DiT4SRTransformer, *, batch: int = 2, side: int = 8, text_tokens: int = 5, seed: int = 0):
    """Random (hidden_states, lr_latent, encoder_hidden_states, pooled_projections, timestep) for ``model``."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, side, side, generator=g)
    lr = torch.randn(batch, cfg.in_channels, side, side, generator=g)
    ctx = torch.randn(batch, text_tokens, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    return x, lr, ctx, pooled, t


def seeded_model(preset: str, seed: int = 0) -> DiT4SRTransformer:
    torch.manual_seed(seed)
    model = build_dit4sr(preset)
    # Default init leaves RMSNorm weights at 1 (double normalisation would then be invisible); randomise them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def heavy_tailed_model(preset: str = "dit4sr-small", seed: int = 0) -> DiT4SRTransformer:
    """A seeded model whose block weights look trained (heavy tails, outlier channels); see model.synthetic."""
    from qdit4sr_export.model.synthetic import heavy_tailed_

    return heavy_tailed_(seeded_model(preset, seed), seed=seed)


def make_pipeline_folder(root: Path, seed: int = 0, steps: int = 6) -> DiT4SRTransformer:
    """A tiny DiT4SR pipeline folder: 12-channel transformer, pixel-unshuffle(2) vae/, prompt embeddings, pipeline.json."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(PRESETS["dit4sr-tiny"], in_channels=12, out_channels=12)
    torch.manual_seed(seed)
    model = build_dit4sr(cfg).eval()
    save_dit4sr(model, root / "transformer")
    PixelUnshuffleAutoencoder(2).save(root / "vae")
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(1, 4, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    save_file({"prompt_embeds": text, "pooled_prompt_embeds": pooled,
               "negative_prompt_embeds": torch.zeros_like(text), "negative_pooled_prompt_embeds": torch.zeros_like(pooled)},
              str(root / "prompt_embeds.safetensors"))
    (root / "pipeline.json").write_text(json.dumps({"format": "qdit4sr-export/pipeline", "version": 1, "steps": steps,
                                                    "guidance_scale": 2.0, "start_sigma": 1.0, "color_fix": "adain", "min_lr_side": 16,
                                                    "upscale": 4}))
    return model


def rehash_engine_set(folder: Path) -> None:
    """Re-record the file table of a deliberately altered engine set (as if it had been built that way)."""
    from qdit4sr_export.engine.format import write_manifest

    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("schema", "version", "tool_version", "files"):
        manifest.pop(key)
    write_manifest(folder, manifest)


def overwrite_tensor(folder: Path, name: str, values) -> None:
    """Overwrite tensor ``name`` in an engine set's weights.bin in place (same size) and rehash the set."""
    import numpy as np

    from qdit4sr_export.engine.format import WeightsFile, read_manifest

    weights = WeightsFile.of(folder, read_manifest(folder))
    entry = weights.entries[name]
    old = weights.array(name)
    new = np.broadcast_to(np.asarray(values, dtype=old.dtype), old.shape).tobytes()
    weights.close()
    with open(folder / "weights.bin", "r+b") as f:
        f.seek(entry.offset)
        f.write(new)
    rehash_engine_set(folder)


def simulation_sqnr_per_step(model, folder: Path, plan, *, side: int = 8) -> list[float]:
    """Output SQNR (dB) of an engine set through the runtime's ORT sessions against the simulation of ``plan``, at
    every timestep of the plan's grid (same seeded inputs)."""
    import copy

    import numpy as np
    from qdit4sr_export.runtime.backends import OrtRunner
    from qdit4sr_export.runtime.engine_set import EngineSet

    from qdit4sr_export.quant.simulate import apply_plan

    engine = EngineSet.load(folder)
    runner = OrtRunner(engine)
    sim = copy.deepcopy(model)
    apply_plan(sim, plan)
    x, lr, ctx, pooled, _ = make_inputs(model, batch=1, side=side)
    out = []
    for t in plan.timesteps:
        runner.activate(engine.variant_for_timestep(t).index)
        got = runner.infer(x, lr, ctx, pooled, torch.tensor([t])).numpy()
        with torch.no_grad():
            want = sim(x, lr, ctx, pooled, torch.tensor([t]), return_dict=False)[0].numpy()
        out.append(float(10 * np.log10((want ** 2).sum() / ((want - got) ** 2).sum())))
    return out


def lowered_layer_bytes(graph) -> dict[str, int]:
    """Bytes each lowered layer's stored tensors (codes, scales, H-SVD factors) take in an onnx-ir graph."""
    stored: dict[str, int] = {}
    for name, value in graph.graph.initializers.items():
        for marker in (".wq", ".wscale", ".svd_"):
            if marker in name:
                layer = name[:name.index(marker)]
                stored[layer] = stored.get(layer, 0) + value.const_value.nbytes
    return stored


def step_feeds(engine, t):
    """One step's seeded inputs (an 8x8 latent, batch 2) for ``engine`` at timestep ``t``, by input name."""
    cfg = engine.config()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg["in_channels"], 8, 8, generator=g)
    return {"hidden_states": x, "lr_latent": torch.randn(x.shape, generator=g),
            "encoder_hidden_states": torch.randn(2, 4, cfg["joint_attention_dim"], generator=g),
            "pooled_projections": torch.randn(2, cfg["pooled_projection_dim"], generator=g),
            "timestep": torch.full((2,), t)}
