"""DiT4SR joint attention over three streams: noisy latent x, LR latent, and (optionally) text."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.normalization import RMSNorm
from torch import nn


class DiT4SRAttention(nn.Module):
    """SD3 joint attention with DiT4SR's LR stream (parameter names follow the released checkpoint).

    ``hidden_states`` holds ``[x | lr]`` along the sequence (each N tokens). The LR queries and values go
    through the shared x projection and then a control linear; the LR keys are the x keys normalised twice
    (an official-code quirk reproduced here), so ``to_k_control`` is computed and its result discarded.
    The added-KV projections exist in every instance (so ``attn2`` carries unused text weights), but are
    only used when ``encoder_hidden_states`` is given.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, *, context_pre_only: bool, qk_norm: str | None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.context_pre_only = context_pre_only

        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        self.norm_q = RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_k = RMSNorm(head_dim, eps=1e-6) if qk_norm else None

        self.add_q_proj = nn.Linear(dim, inner)
        self.add_k_proj = nn.Linear(dim, inner)
        self.add_v_proj = nn.Linear(dim, inner)
        self.norm_added_q = RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.norm_added_k = RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.to_add_out = None if context_pre_only else nn.Linear(inner, dim)

        self.to_q_control = nn.Linear(dim, inner)
        self.to_k_control = nn.Linear(dim, inner)
        self.to_v_control = nn.Linear(dim, inner)
        self.to_out_control = nn.Linear(inner, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, H*D) -> (B, H, L, D)."""
        b = t.shape[0]
        return t.view(b, -1, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = hidden_states.shape[0]
        total_tokens = hidden_states.shape[1]
        x, lr = hidden_states.chunk(2, dim=1)
        lr_in = lr

        query = self._heads(self.to_q(x))
        key = self._heads(self.to_k(x))
        value = self._heads(self.to_v(x))

        query_c = self._heads(self.to_q_control(self.to_q(lr)))
        # Official quirk: computed, then overwritten below (its output never reaches the result).
        key_c = self._heads(self.to_k_control(self.to_k(lr)))
        value_c = self._heads(self.to_v_control(self.to_v(lr)))

        if self.norm_q is not None:
            query = self.norm_q(query)
            query_c = self.norm_q(query_c)
        if self.norm_k is not None:
            key = self.norm_k(key)
            key_c = self.norm_k(key)  # the LR keys: the x keys with RMSNorm applied a second time

        if encoder_hidden_states is not None:
            q_t = self._heads(self.add_q_proj(encoder_hidden_states))
            k_t = self._heads(self.add_k_proj(encoder_hidden_states))
            v_t = self._heads(self.add_v_proj(encoder_hidden_states))
            if self.norm_added_q is not None:
                q_t = self.norm_added_q(q_t)
            if self.norm_added_k is not None:
                k_t = self.norm_added_k(k_t)
            query = torch.cat([query, query_c, q_t], dim=2)
            key = torch.cat([key, key_c, k_t], dim=2)
            value = torch.cat([value, value_c, v_t], dim=2)
        else:
            query = torch.cat([query, query_c], dim=2)
            key = torch.cat([key, key_c], dim=2)
            value = torch.cat([value, value_c], dim=2)

        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * self.head_dim).to(query.dtype)

        context_out = None
        if encoder_hidden_states is not None:
            out, context_out = out[:, :total_tokens], out[:, total_tokens:]
            if self.to_add_out is not None:
                context_out = self.to_add_out(context_out)

        out_x, out_lr = out.chunk(2, dim=1)
        out_x = self.to_out[1](self.to_out[0](out_x))
        out_lr = self.to_out_control(out_lr + lr_in)
        return torch.cat([out_x, out_lr], dim=1), context_out
