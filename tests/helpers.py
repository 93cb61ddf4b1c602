"""Test helpers: small seeded DiT4SR models and matching random inputs."""

from __future__ import annotations

import torch

from qdit4sr_export.model import DiT4SRTransformer, build_dit4sr


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
