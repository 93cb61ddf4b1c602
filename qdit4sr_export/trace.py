"""Trace DiT4SR to ONNX: torch.export, then the torch ONNX exporter, held as an onnx-ir model.

Graph inputs are ``hidden_states``, ``lr_latent``, ``encoder_hidden_states``, ``pooled_projections``,
``timestep``; the output is ``sample``. Batch, the (square) latent size and the text length are dynamic.
The exporter's own graph optimiser is off: its constant folding fails on the ``chunk(2)`` splits when the
token count is symbolic; the compiler's passes do their own clean-up.
"""

from __future__ import annotations

import copy
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


def trace_to_onnx(model: DiT4SRTransformer, *, dynamic: bool = True, dtype: torch.dtype = torch.float32) -> ir.Model:
    """The FP model as an ONNX graph (opset 21, IR version 10) in onnx-ir form, weights as initializers.

    ``dtype`` float16 traces a half-precision copy, so the graph computes in fp16 exactly where the model does
    (diffusers keeps its norms' statistics and the timestep embedding in float32); its interface stays float32
    (Casts after the inputs and before the output)."""
    model = model.eval()
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model, example_inputs(model, dtype=dtype), dynamo=True, opset_version=OPSET, optimize=False,
            verbose=False, dynamic_shapes=dynamic_shapes(model) if dynamic else None,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
        )
    onnx_model = program.model
    onnx_model.ir_version = IR_VERSION
    if dtype != torch.float32:
        float32_interface(onnx_model)
    return onnx_model


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
