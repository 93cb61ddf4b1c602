"""Trace DiT4SR to ONNX: torch.export, then the torch ONNX exporter, held as an onnx-ir model.

Graph inputs are ``hidden_states``, ``lr_latent``, ``encoder_hidden_states``, ``pooled_projections``,
``timestep``; the output is ``sample``. Batch, the (square) latent size and the text length are dynamic.
The exporter's own graph optimiser is off: its constant folding fails on the ``chunk(2)`` splits when the
token count is symbolic; the compiler's passes do their own clean-up.
"""

from __future__ import annotations

import logging
import warnings

import onnx_ir as ir
import torch

from qdit4sr_export.model.transformer import DiT4SRTransformer

INPUT_NAMES = ("hidden_states", "lr_latent", "encoder_hidden_states", "pooled_projections", "timestep")
OUTPUT_NAME = "sample"
OPSET = 21
#: onnx 1.23 writes IR version 14 by default; onnxruntime 1.31 loads at most 13. 10 works with opset 21.
IR_VERSION = 10


def example_inputs(model: DiT4SRTransformer, *, batch: int = 2, latent_side: int = 8,
                   text_tokens: int = 8) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of the right shapes for tracing (values do not matter to the graph)."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, latent_side, latent_side, generator=g)
    return (x, torch.randn(x.shape, generator=g), torch.randn(batch, text_tokens, cfg.joint_attention_dim, generator=g),
            torch.randn(batch, cfg.pooled_projection_dim, generator=g), torch.full((batch,), 500.0))


def dynamic_shapes(model: DiT4SRTransformer) -> dict[str, dict[int, object]]:
    """Batch, square spatial size (a multiple of the patch size, up to the positional table) and text length."""
    cfg = model.config
    batch = torch.export.Dim("batch", min=1, max=1024)
    grid = torch.export.Dim("grid", min=1, max=cfg.pos_embed_max_size)
    text = torch.export.Dim("text_tokens", min=1, max=4096)
    side = cfg.patch_size * grid
    latent = {0: batch, 2: side, 3: side}
    return {"hidden_states": latent, "lr_latent": latent, "encoder_hidden_states": {0: batch, 1: text},
            "pooled_projections": {0: batch}, "timestep": {0: batch}}


def trace_to_onnx(model: DiT4SRTransformer, *, dynamic: bool = True) -> ir.Model:
    """The FP model as an ONNX graph (opset 21, IR version 10) in onnx-ir form, weights as initializers."""
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model, example_inputs(model), dynamo=True, opset_version=OPSET, optimize=False, verbose=False,
            dynamic_shapes=dynamic_shapes(model) if dynamic else None,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
        )
    onnx_model = program.model
    onnx_model.ir_version = IR_VERSION
    return onnx_model
