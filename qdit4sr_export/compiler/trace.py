"""Trace DiT4SR to ONNX: torch.export, then the torch ONNX exporter, held as an onnx-ir model.

Graph inputs are ``hidden_states``, ``lr_latent``, ``encoder_hidden_states``, ``pooled_projections``,
``timestep``; the output is ``sample``. Batch, the (square) latent size and the text length are dynamic.
The exporter's own graph optimiser is off: its constant folding fails on the ``chunk(2)`` splits when the
token count is symbolic; the compiler's passes do their own clean-up.

The trace never touches weights: a skeleton of the model on the meta device is traced (:func:`trace_graph`), and
each initializer then gets a lazy tensor that reads its parameter from the model's weight source when written
(:func:`attach_weights`), so a 2.7B model is traced without holding its weights, and an in-memory model and the
same checkpoint opened lazily give the same graph. The positional table is the central crop for latents up to
``max_latent`` (the whole table without it). A graph traced in float16 (the TensorRT target's) reads the same
weights converted to its initializers' types, except the ones named to stay float32.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Iterable

import numpy as np
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
                   text_tokens: int = 8, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of the right shapes for tracing (values do not matter to the graph); the timestep stays
    float32 at any ``dtype`` (fp16 would round t = 923.3 to 923.5)."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, latent_side, latent_side, generator=g)
    return (x.to(dtype), torch.randn(x.shape, generator=g).to(dtype),
            torch.randn(batch, text_tokens, cfg.joint_attention_dim, generator=g).to(dtype),
            torch.randn(batch, cfg.pooled_projection_dim, generator=g).to(dtype), torch.full((batch,), 500.0))


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


def trace_graph(config: DiT4SRConfig, *, grid: int | None = None, dynamic: bool = True,
                dtype: torch.dtype = torch.float32) -> ir.Model:
    """The graph of a DiT4SR of ``config`` whose positional table is the central ``grid`` x ``grid`` crop (None:
    all of it), traced on the meta device: initializers have names, shapes and types but no data.

    ``dtype`` float16 traces a half-precision model, so the graph computes in fp16 exactly where the model does
    (diffusers keeps its norms' statistics and the timestep embedding in float32); its interface stays float32
    (Casts after the inputs and before the output)."""
    if grid is not None and grid != config.pos_embed_max_size:
        config = dataclasses.replace(config, pos_embed_max_size=grid)
    model = build_dit4sr(config, device="meta").to(dtype)
    side = min(8, config.pos_embed_max_size * config.patch_size)
    inputs = tuple(x.to("meta") for x in example_inputs(model, latent_side=side, dtype=dtype))
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
    if dtype != torch.float32:
        float32_interface(onnx_model)
    return onnx_model


def _lazy(name: str, dtype: ir.DataType, shape: ir.Shape, read) -> ir.LazyTensor:
    """A lazy initializer of ``dtype`` whose data is ``read()`` (float32) converted, as ``model.to(dtype)`` would."""
    torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype.numpy())).dtype
    return ir.LazyTensor(lambda: ir.tensor(read().to(torch_dtype).contiguous().numpy(), name=name), dtype, shape,
                         name=name)


def attach_weights(graph: ir.Model, source: WeightSource, grid: int, *, float32: Iterable[str] = ()) -> ir.Model:
    """Give every initializer of a traced graph a lazy tensor of its type read from ``source`` when it is needed;
    those named in ``float32`` become float32 whatever the trace's type (weights a quantizer reads)."""
    names = set(source.names())
    keep = set(float32)
    for name, value in graph.graph.initializers.items():
        if name in keep and value.dtype != ir.DataType.FLOAT:
            value.type = ir.TensorType(ir.DataType.FLOAT)
        if name == POS_EMBED_KEY:
            value.const_value = _lazy(name, value.dtype, value.shape, lambda: source.positional_crop(grid))
        elif name in names:
            value.const_value = _lazy(name, value.dtype, value.shape, lambda name=name: source.tensor(name))
        else:
            raise UserError(f"traced graph has an initializer '{name}' that the model's weights lack")
    return graph


def trace_to_onnx(model: DiT4SRTransformer, *, dynamic: bool = True, max_latent: int | None = None,
                  dtype: torch.dtype = torch.float32, float32: Iterable[str] = ()) -> ir.Model:
    """The FP model as an ONNX graph (opset 21, IR version 10) in onnx-ir form, weights as lazy initializers
    (none for a weightless preset); ``max_latent`` (latent side) crops the positional table; ``dtype`` and
    ``float32`` as in :func:`trace_graph` and :func:`attach_weights`."""
    grid = max_grid(model.config, max_latent)
    graph = trace_graph(model.config, grid=grid, dynamic=dynamic, dtype=dtype)
    source = source_of(model)
    return attach_weights(graph, source, grid, float32=float32) if source is not None else graph


def float32_interface(model: ir.Model) -> None:
    """Give a reduced-precision graph float32 inputs and outputs: a Cast after each input, before each output."""
    graph = model.graph
    first = graph[0]
    for i, old in enumerate(list(graph.inputs)):
        if old.dtype in (None, ir.DataType.FLOAT) or not old.dtype.is_floating_point():
            continue
        new = ir.Value(name=old.name, shape=old.shape, type=ir.TensorType(ir.DataType.FLOAT))
        old.name = f"{new.name}__{old.dtype.name.lower()}"
        cast = ir.Node("", "Cast", [new], {"to": ir.AttrInt64("to", old.dtype)}, name=f"{new.name}/to_{old.dtype.name}")
        cast.outputs[0].name = f"{new.name}/{old.dtype.name}"
        cast.outputs[0].type = old.type
        ir.convenience.replace_all_uses_with(old, cast.outputs[0])
        graph.inputs[i] = new
        graph.insert_before(first, cast)
    for i, old in enumerate(list(graph.outputs)):
        if old.dtype in (None, ir.DataType.FLOAT) or not old.dtype.is_floating_point():
            continue
        cast = ir.Node("", "Cast", [old], {"to": ir.AttrInt64("to", ir.DataType.FLOAT)}, name=f"{old.name}/to_FLOAT")
        out = cast.outputs[0]
        out.name, old.name = old.name, f"{old.name}__{old.dtype.name.lower()}"
        out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), old.shape
        graph.append(cast)
        graph.outputs[i] = out
