"""The DiT4SR transformer: SD3.5 MM-DiT whose blocks run on ``[x | lr]`` tokens, and ``build_dit4sr``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings, PatchEmbed
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import nn

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.block import DiT4SRBlock
from qdit4sr_export.model.config import DiT4SRConfig, resolve_config


@dataclass
class DiT4SROutput:
    """What ``forward(..., return_dict=True)`` returns, like diffusers' Transformer2DModelOutput."""

    sample: torch.Tensor


class DiT4SRTransformer(nn.Module):
    """DiT4SR (Duan et al., ICCV 2025) with the released checkpoint's parameter names.

    The LR latent goes through the same ``pos_embed`` as the noisy latent; every block runs on the 2N
    tokens; after the last block the LR half is dropped and ``norm_out``/``proj_out`` run on the x half.
    """

    def __init__(self, config: DiT4SRConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.pos_embed = PatchEmbed(
            height=config.sample_size,
            width=config.sample_size,
            patch_size=config.patch_size,
            in_channels=config.in_channels,
            embed_dim=dim,
            pos_embed_max_size=config.pos_embed_max_size,
        )
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(
            embedding_dim=dim, pooled_projection_dim=config.pooled_projection_dim
        )
        self.context_embedder = nn.Linear(config.joint_attention_dim, config.caption_projection_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                DiT4SRBlock(
                    dim,
                    config.num_attention_heads,
                    config.attention_head_dim,
                    context_pre_only=i == config.num_layers - 1,
                    use_dual_attention=i in config.dual_attention_layers,
                    qk_norm=config.qk_norm,
                    control_scale=config.control_scale,
                )
                for i in range(config.num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, config.patch_size * config.patch_size * config.out_channels)

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        lr_latent: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
    ) -> None:
        cfg = self.config
        shape = tuple(hidden_states.shape)
        if hidden_states.dim() != 4 or shape[1] != cfg.in_channels:
            raise UserError(f"hidden_states must be (batch, {cfg.in_channels}, height, width), got {shape}")
        if tuple(lr_latent.shape) != shape:
            raise UserError(
                f"x/LR latent shape mismatch: hidden_states {shape} vs lr_latent {tuple(lr_latent.shape)} "
                "(the LR image is upscaled to the output size before encoding, so both latents match)"
            )
        height, width = shape[-2:]
        p = cfg.patch_size
        if height % p or width % p:
            raise UserError(f"latent height and width must be multiples of patch_size {p}, got {height}x{width}")
        if height != width:
            raise UserError(
                f"DiT4SR needs a square token grid, got a {height}x{width} latent: the cross-stream convolution "
                "reshapes tokens to a square grid; tile non-square images into square tiles"
            )
        grid = self.pos_embed.pos_embed_max_size  # the config's, or a smaller crop kept for an engine set
        if height // p > grid:
            raise UserError(
                f"latent {height}x{width} is larger than the positional table allows "
                f"({grid * p}x{grid * p}); tile the image"
            )
        batch = shape[0]
        ctx = tuple(encoder_hidden_states.shape)
        if encoder_hidden_states.dim() != 3 or ctx[0] != batch or ctx[2] != cfg.joint_attention_dim:
            raise UserError(
                f"encoder_hidden_states must be ({batch}, tokens, {cfg.joint_attention_dim}), got {ctx}"
            )
        pooled = tuple(pooled_projections.shape)
        if pooled != (batch, cfg.pooled_projection_dim):
            raise UserError(f"pooled_projections must be ({batch}, {cfg.pooled_projection_dim}), got {pooled}")

    def forward(
        self,
        hidden_states: torch.Tensor,
        lr_latent: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | float | None = None,
        *,
        controlnet_image: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        """Predict the flow-matching velocity; returns a tensor shaped like ``hidden_states``.

        ``controlnet_image`` is the official name of ``lr_latent``. ``return_dict`` behaves as in the
        official model when given (True: an object with ``.sample``; False: a 1-tuple).
        """
        if controlnet_image is not None:
            if lr_latent is not None:
                raise UserError("give the LR latent once: lr_latent or controlnet_image, not both")
            lr_latent = controlnet_image
        if lr_latent is None or encoder_hidden_states is None or pooled_projections is None or timestep is None:
            raise UserError(
                "forward needs hidden_states, lr_latent, encoder_hidden_states, pooled_projections and timestep"
            )
        self._check_inputs(hidden_states, lr_latent, encoder_hidden_states, pooled_projections)
        batch = hidden_states.shape[0]
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)

        height, width = hidden_states.shape[-2:]
        x = self.pos_embed(hidden_states)
        temb = self.time_text_embed(timestep, pooled_projections)
        context = self.context_embedder(encoder_hidden_states)
        tokens = torch.cat([x, self.pos_embed(lr_latent)], dim=-2)

        p = self.config.patch_size
        h, w = height // p, width // p
        for block in self.transformer_blocks:
            context, tokens = block(tokens, context, temb, (h, w))

        x = tokens.chunk(2, dim=1)[0]  # the LR half is dropped after the last block
        x = self.proj_out(self.norm_out(x, temb))

        x = x.reshape(batch, h, w, p, p, self.config.out_channels)
        sample = torch.einsum("nhwpqc->nchpwq", x).reshape(batch, self.config.out_channels, h * p, w * p)
        if return_dict is None:
            return sample
        return DiT4SROutput(sample=sample) if return_dict else (sample,)


def build_dit4sr(
    preset_or_config: "DiT4SRConfig | str | Path | Mapping[str, Any]",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> DiT4SRTransformer:
    """Build a randomly initialised DiT4SR; ``device="meta"`` allocates nothing (shapes only)."""
    config = resolve_config(preset_or_config)
    with torch.device(device):
        model = DiT4SRTransformer(config)
    return model.to(dtype=dtype).eval()
