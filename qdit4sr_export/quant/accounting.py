"""Model-size and compute accounting of a QuantPlan: the paper's Params (M) and bit-operations per step.

Params (M) counts every parameter in 32-bit units: a b-bit weight is b/32 of a parameter, FP branches
(SVD-G, SVD-L) and every unquantized parameter count 1. Bit-operations (BOPs) per denoising step are
sum over linears of MACs * w_bits * a_bits (an FP32 MAC costs 32*32), with MACs from the token count each
linear really sees in one forward pass (measured on the meta device: no compute, no memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from qdit4sr_export.model.transformer import DiT4SRTransformer, build_dit4sr
from qdit4sr_export.quant.hsvd import local_params
from qdit4sr_export.quant.plan import QuantPlan

FP_BITS = 32


def quantizable_linears(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every ``nn.Linear`` inside ``transformer_blocks`` (the paper quantizes all MM-DiT blocks): name -> (out, in)."""
    return {
        name: (m.out_features, m.in_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("transformer_blocks.")
    }


def tokens_per_linear(model: DiT4SRTransformer, *, latent_side: int, text_tokens: int, batch: int = 1) -> dict[str, int]:
    """Rows each linear multiplies in one forward pass, measured by a forward pass on a meta copy of ``model``."""
    cfg = model.config
    meta = build_dit4sr(cfg, device="meta")
    counts: dict[str, int] = {}

    def hook(name):
        def record(module, args):
            counts[name] = counts.get(name, 0) + math.prod(args[0].shape[:-1])
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in meta.named_modules() if isinstance(m, nn.Linear)]
    with torch.device("meta"), torch.no_grad():
        x = torch.empty(batch, cfg.in_channels, latent_side, latent_side)
        meta(x, torch.empty_like(x), torch.empty(batch, text_tokens, cfg.joint_attention_dim),
             torch.empty(batch, cfg.pooled_projection_dim), torch.full((batch,), 500.0))
    for h in handles:
        h.remove()
    return counts


@dataclass(frozen=True)
class PlanAccounting:
    params: float  # in 32-bit units
    fp_params: int
    quantized_weights: int
    fp_branch_params: int
    avg_wbits: float
    bops_per_step: float  # activation bits averaged over the timestep grid (see module docstring)
    fp_bops_per_step: float
    latent_side: int  # latent size the BOPs were counted at

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def size_ratio(self) -> float:
        return self.fp_params / self.params

    def summary(self) -> dict[str, float]:
        return {
            "params_m": round(self.params_m, 4),
            "fp_params_m": round(self.fp_params / 1e6, 4),
            "size_ratio": round(self.size_ratio, 4),
            "avg_wbits": round(self.avg_wbits, 4),
            "fp_branch_params_m": round(self.fp_branch_params / 1e6, 4),
            "gbops_per_step": round(self.bops_per_step / 1e9, 3),
            "fp_gbops_per_step": round(self.fp_bops_per_step / 1e9, 3),
            "bops_latent_side": self.latent_side,
        }


def mean_wbits(plan: QuantPlan) -> float:
    """Mean weight bits per quantized weight (layers weighted by their weight count): the one definition that
    ``inspect``'s text and its weight-bit plot share."""
    counts = [(lp.out_features * lp.in_features, lp.wbits) for lp in plan.layers.values() if lp.wbits is not None]
    total = sum(n for n, _ in counts)
    return sum(n * b for n, b in counts) / total if total else float("nan")


def account(plan: QuantPlan, model: DiT4SRTransformer, *, latent_side: int = 64, text_tokens: int = 333,
            batch: int = 1) -> PlanAccounting:
    """Params and BOPs of ``plan`` on ``model`` (shapes only; ``model`` may live on the meta device).

    BOPs use each layer's mean activation bits over the timestep grid (FP activations count 32 bits); the
    FP SVD branches run at 32x32. Defaults: a 512x512 output (64x64 latent), 333 text tokens, batch 1; the
    latent is capped at the largest the model's positional table allows.
    """
    cfg = model.config
    latent_side = min(latent_side, cfg.pos_embed_max_size * cfg.patch_size)
    fp_params = sum(p.numel() for p in model.parameters())
    tokens = tokens_per_linear(model, latent_side=latent_side, text_tokens=text_tokens, batch=batch)
    qweights = 0
    branch = 0
    bits_sum = 0.0
    bops = 0.0
    fp_bops = 0.0
    for name, lp in plan.layers.items():
        n = lp.out_features * lp.in_features
        qweights += n
        bits_sum += n * lp.wbits
        layer_branch = lp.svd_rank * (lp.out_features + lp.in_features)
        if lp.local_block:
            layer_branch += local_params(lp.out_features, lp.in_features, *lp.local_block)
        branch += layer_branch
        rows = tokens.get(name, 0)
        abits = [FP_BITS if b is None else b for b in lp.abits] or [FP_BITS]
        bops += rows * (n * lp.wbits * (sum(abits) / len(abits)) + layer_branch * FP_BITS * FP_BITS)
        fp_bops += rows * n * FP_BITS * FP_BITS
    unquantized = fp_params - qweights
    params = unquantized + bits_sum / FP_BITS + branch
    return PlanAccounting(
        params=params,
        fp_params=fp_params,
        quantized_weights=qweights,
        fp_branch_params=branch,
        avg_wbits=mean_wbits(plan),
        bops_per_step=bops,
        fp_bops_per_step=fp_bops,
        latent_side=latent_side,
    )
