"""Trace DiT4SR to ONNX: torch.export, then the torch ONNX exporter, held as an onnx-ir model.

Graph inputs are ``hidden_states``, ``lr_latent``, ``encoder_hidden_states``, ``pooled_projections``,
``timestep``; the output is ``sample``. Batch, the (square) latent size and the text length are dynamic.
The exporter's own graph optimiser is off: its constant folding fails on the ``chunk(2)`` splits when the
token count is symbolic; the compiler's passes do their own clean-up.

The trace never touches weights: a skeleton of the model on the meta device is traced (:func:`trace_graph`), and
each initializer then gets a lazy tensor that reads its parameter from the model's weight source when written
(:func:`attach_weights`), so a 2.7B model is traced without holding its weights, and an in-memory model and the
same checkpoint opened lazily give the same graph. The positional table is the central crop for latents up to
``max_latent`` (the whole table without it).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import onnx_ir as ir
import torch

from qdit4sr_export.errors import UserError
from qdit4sr_export.model.config import DiT4SRConfig
from qdit4sr_export.model.positions import POS_EMBED_KEY, max_grid
from qdit4sr_export.model.transformer import DiT4SRTransformer, build_dit4sr
from qdit4sr_export.model.weights import WeightSource, source_of

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


def trace_graph(config: DiT4SRConfig, *, grid: int | None = None, dynamic: bool = True) -> ir.Model:
    """The graph of a DiT4SR of ``config`` whose positional table is the central ``grid`` x ``grid`` crop (None:
    all of it), traced on the meta device: initializers have names, shapes and types but no data."""
    if grid is not None and grid != config.pos_embed_max_size:
        config = dataclasses.replace(config, pos_embed_max_size=grid)
    model = build_dit4sr(config, device="meta")
    side = min(8, config.pos_embed_max_size * config.patch_size)
    inputs = tuple(x.to("meta") for x in example_inputs(model, latent_side=side))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model, inputs, dynamo=True, opset_version=OPSET, optimize=False, verbose=False,
            dynamic_shapes=dynamic_shapes(model) if dynamic else None,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
        )
    onnx_model = program.model
    onnx_model.ir_version = IR_VERSION
    return onnx_model


def _lazy(name: str, shape: ir.Shape, read) -> ir.LazyTensor:
    return ir.LazyTensor(lambda: ir.tensor(read().contiguous().numpy(), name=name), ir.DataType.FLOAT, shape,
                         name=name)


def attach_weights(graph: ir.Model, source: WeightSource, grid: int) -> ir.Model:
    """Give every initializer of a traced graph a lazy float32 tensor read from ``source`` when it is needed."""
    names = set(source.names())
    for name, value in graph.graph.initializers.items():
        if name == POS_EMBED_KEY:
            value.const_value = _lazy(name, value.shape, lambda: source.positional_crop(grid))
        elif name in names:
            value.const_value = _lazy(name, value.shape, lambda name=name: source.tensor(name))
        else:
            raise UserError(f"traced graph has an initializer '{name}' that the model's weights lack")
    return graph


def trace_to_onnx(model: DiT4SRTransformer, *, dynamic: bool = True, max_latent: int | None = None) -> ir.Model:
    """The FP model as an ONNX graph (opset 21, IR version 10) in onnx-ir form, weights as lazy initializers
    (none for a weightless preset); ``max_latent`` (latent side) crops the positional table."""
    grid = max_grid(model.config, max_latent)
    graph = trace_graph(model.config, grid=grid, dynamic=dynamic)
    source = source_of(model)
    return attach_weights(graph, source, grid) if source is not None else graph
