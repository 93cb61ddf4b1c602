"""One DiT4SR MM-DiT block: AdaLN-Zero(X), joint attention (+ attn2 in dual blocks), control feed-forward."""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, SD35AdaLayerNormZeroX
from torch import nn

from qdit4sr_export.model.attention import DiT4SRAttention
from qdit4sr_export.model.feedforward import ControlFeedForward


class DiT4SRBlock(nn.Module):
    """SD3.5 joint block on ``[x | lr]`` tokens plus text; every AdaLN modulation applies to both halves."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        *,
        context_pre_only: bool,
        use_dual_attention: bool,
        qk_norm: str | None,
        control_scale: float,
    ) -> None:
        super().__init__()
        self.context_pre_only = context_pre_only
        self.use_dual_attention = use_dual_attention
        self.norm1 = SD35AdaLayerNormZeroX(dim) if use_dual_attention else AdaLayerNormZero(dim)
        if context_pre_only:
            self.norm1_context = AdaLayerNormContinuous(
                dim, dim, elementwise_affine=False, eps=1e-6, bias=True, norm_type="layer_norm"
            )
        else:
            self.norm1_context = AdaLayerNormZero(dim)
        self.attn = DiT4SRAttention(dim, heads, head_dim, context_pre_only=context_pre_only, qk_norm=qk_norm)
        # attn2 is built with context_pre_only=False in the official code: its text weights exist, unused.
        self.attn2 = (
            DiT4SRAttention(dim, heads, head_dim, context_pre_only=False, qk_norm=qk_norm)
            if use_dual_attention
            else None
        )
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = ControlFeedForward(dim, control_scale=control_scale)
        if context_pre_only:
            self.norm2_context = None
            self.ff_context = None
        else:
            self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff_context = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        grid: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.use_dual_attention:
            norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp, norm_x2, gate_msa2 = self.norm1(hidden_states, emb=temb)
        else:
            norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)

        if self.context_pre_only:
            norm_ctx = self.norm1_context(encoder_hidden_states, temb)
        else:
            norm_ctx, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(
                encoder_hidden_states, emb=temb
            )

        attn_out, ctx_attn_out = self.attn(norm_x, norm_ctx)
        hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_out
        if self.attn2 is not None:
            attn_out2, _ = self.attn2(norm_x2)
            hidden_states = hidden_states + gate_msa2.unsqueeze(1) * attn_out2

        norm_x = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden_states = hidden_states + gate_mlp.unsqueeze(1) * self.ff(norm_x, grid)

        if self.context_pre_only:
            return None, hidden_states
        encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * ctx_attn_out
        norm_ctx = self.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * self.ff_context(norm_ctx)
        return encoder_hidden_states, hidden_states
