"""Where the error starts: per-layer output SQNR of a variant graph against the FP model.

Every linear layer's output is marked as an extra graph output of the variant (the lowered main branch
followed by its bias and H-SVD branch Adds, which sum to the layer's ``x W^T + b``), the FP model's
``nn.Linear`` outputs are recorded with forward hooks, and the k-th call of a layer in the graph is matched to
its k-th call in torch (DiT4SR calls some projections twice: image and LR tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch

from qdit4sr_export.passes.linear_sites import find_linear_sites
from qdit4sr_export.passes.lower_ort import LOWERED_KEY
from qdit4sr_export.quant.accounting import quantizable_linears
from qdit4sr_export.runtime.backends import INPUTS, make_session


@dataclass(frozen=True)
class LayerError:
    """SQNR (dB) of one call of a layer; ``order`` is its position in the graph."""

    order: int
    layer: str
    call: int
    sqnr_db: float

    def to_dict(self) -> dict:
        return {"order": self.order, "layer": self.layer, "call": self.call, "sqnr_db": round(self.sqnr_db, 2)}


def layer_outputs(graph: ir.Graph, layers: list[str]) -> list[tuple[str, ir.Value]]:
    """(layer, output value) for every linear call in graph order: lowered layers by their metadata, FP layers
    by their call sites."""
    position = {id(node): i for i, node in enumerate(graph)}
    found: list[tuple[int, str, ir.Value]] = []
    for node in graph:
        layer = node.metadata_props.get(LOWERED_KEY)
        if layer is not None:
            found.append((position[id(node)], layer, _after_adds(node.outputs[0])))
    lowered = {layer for _, layer, _ in found}
    for name, sites in find_linear_sites(graph, [n for n in layers if n not in lowered]).items():
        for site in sites:
            end = site.bias_add or site.matmul
            found.append((position[id(site.matmul)], name, end.outputs[0]))
    return [(layer, value) for _, layer, value in sorted(found, key=lambda f: f[0])]


def _after_adds(value: ir.Value) -> ir.Value:
    """Follow a value through the Adds that consume it alone (bias, SVD-G and SVD-L branches)."""
    while True:
        uses = list(value.uses())
        if len(uses) != 1 or uses[0].node.op_type != "Add":
            return value
        value = uses[0].node.outputs[0]


def torch_layer_outputs(model: torch.nn.Module, layers: list[str], feed: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Outputs of each named linear in call order, from one FP forward pass."""
    outputs: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: outputs[n].append(out.detach().numpy().copy())) for n in layers]
    try:
        with torch.no_grad():
            model(*[torch.from_numpy(feed[k]) for k in INPUTS])
    finally:
        for h in hooks:
            h.remove()
    return outputs


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = ref.astype(np.float64).ravel(), out.astype(np.float64).ravel()
    noise = float(((out - ref) ** 2).sum())
    return float("inf") if noise == 0 else float(10 * np.log10(max(float((ref ** 2).sum()), 1e-30) / noise))


def variant_layer_errors(model: torch.nn.Module, variant_path: Path, feed: dict[str, np.ndarray],
                         providers: list[str] | None = None, *, plugin_ops: bool = False) -> list[LayerError]:
    """Per-call SQNR of every linear layer of one variant graph against the FP model, in graph order."""
    layers = sorted(quantizable_linears(model))
    graph_model = ir.load(str(variant_path))
    marked = layer_outputs(graph_model.graph, layers)
    proto = onnx.load(str(variant_path), load_external_data=False)
    names = []
    for i, (layer, value) in enumerate(marked):
        if not value.name:
            raise RuntimeError(f"unnamed output value for layer {layer}")
        names.append(value.name)
        if value.name not in {o.name for o in proto.graph.output}:
            elem = int(value.dtype) if value.dtype is not None else onnx.TensorProto.FLOAT
            proto.graph.output.append(onnx.helper.make_tensor_value_info(value.name, elem, None))
    # From bytes, with external data resolved against the engine folder (ORT rejects paths outside the model's
    # own folder, so the marked graph cannot live in a temp folder).
    session = make_session(proto.SerializeToString(), providers or ["CPUExecutionProvider"],
                           external_folder=variant_path.parent, plugin_ops=plugin_ops)
    values = session.run(names, {k: feed[k] for k in INPUTS})
    reference = torch_layer_outputs(model, layers, feed)
    calls: dict[str, int] = {}
    errors = []
    for order, ((layer, _), out) in enumerate(zip(marked, values)):
        k = calls.get(layer, 0)
        calls[layer] = k + 1
        if k >= len(reference[layer]):
            continue
        ref = reference[layer][k]
        errors.append(LayerError(order, layer, k, _sqnr(ref, out.astype(np.float32).reshape(ref.shape))))
    return errors


def error_onset(errors: list[LayerError], threshold_db: float) -> dict:
    """The first layer below ``threshold_db``, the largest SQNR drop from one layer to the next, the worst five."""
    first = next((e for e in errors if e.sqnr_db < threshold_db), None)
    drops = [(errors[i - 1].sqnr_db - errors[i].sqnr_db, errors[i]) for i in range(1, len(errors))
             if np.isfinite(errors[i - 1].sqnr_db)]
    drop = max(drops, key=lambda d: d[0], default=None)
    worst = sorted(errors, key=lambda e: e.sqnr_db)[:5]
    return {"first_below_threshold": first.to_dict() if first else None,
            "largest_drop": {**drop[1].to_dict(), "drop_db": round(drop[0], 2)} if drop else None,
            "worst": [e.to_dict() for e in worst], "threshold_db": threshold_db}
