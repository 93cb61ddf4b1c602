"""InsertHSVDPass: split each planned linear's (rotated) weight into the FP H-SVD branches and a residual.

The weight initializer becomes the residual ``W_H - W_G - W_L`` (what LowerOrtPass quantizes) and the FP
branches are added as nodes beside the MatMul: SVD-G as two thin MatMuls ``(z B^T) A^T`` and SVD-L as two
Einsums over the block grid (block (p, q) of W_L is ``s u v^T``), so their parameters stay factored. Run
after FoldHadamardPass; the decomposition is the one the simulation computes (``hsvd`` on the same weight).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch
from onnx_ir.passes import InPlacePass, PassResult

from qdit4sr_export.passes.graph_edit import (LAYER_KEY, Emitter, constant, initializer_array, move_graph_output,
                                              set_initializer)
from qdit4sr_export.passes.linear_sites import matmul_sites
from qdit4sr_export.quant.hsvd import HSVD, hsvd
from qdit4sr_export.quant.plan import QuantPlan


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy().astype(np.float32))


def branch_tensors(dec: HSVD, name: str) -> dict[str, np.ndarray]:
    """The FP branches' factors as stored: ``svd_g.b`` (in x r), ``svd_g.a`` (r x out), ``svd_l.v`` (P, Q, s_i),
    ``svd_l.u`` (P, Q, s_o, sigma folded in); only the branches the decomposition has."""
    out = {}
    if dec.global_.rank > 0:
        out[f"{name}.svd_g.b"] = _f32(dec.global_.b.T)
        out[f"{name}.svd_g.a"] = _f32(dec.global_.a.T)
    if dec.local is not None:
        out[f"{name}.svd_l.v"] = _f32(dec.local.v)
        out[f"{name}.svd_l.u"] = _f32(dec.local.u * dec.local.s[..., None])
    return out


def emit_fp_branch(em: Emitter, z: ir.Value, dec: HSVD, name: str) -> ir.Value | None:
    """The FP branch ``z (W_G + W_L)^T`` as nodes, or None when both branches are empty."""
    branch = None
    factors = branch_tensors(dec, name)
    if dec.global_.rank > 0:
        h = em.op("MatMul", [z, em.const(f"{name}.svd_g.b", factors[f"{name}.svd_g.b"])])
        branch = em.op("MatMul", [h, em.const(f"{name}.svd_g.a", factors[f"{name}.svd_g.a"])])
    local = dec.local
    if local is not None:
        p, q, s_o = local.u.shape
        s_i = local.v.shape[2]
        blocks = em.op("Reshape", [z, em.const(f"shape.-1x{q}x{s_i}", np.array([-1, q, s_i], np.int64))])
        t = em.op("Einsum", [blocks, em.const(f"{name}.svd_l.v", factors[f"{name}.svd_l.v"])],
                  {"equation": "nqi,pqi->npq"})
        t = em.op("Einsum", [t, em.const(f"{name}.svd_l.u", factors[f"{name}.svd_l.u"])], {"equation": "npq,pqo->npo"})
        lead = em.op("Shape", [z], {"end": -1})
        shape = em.op("Concat", [lead, em.const(f"shape.{p * s_o}", np.array([p * s_o], np.int64))], {"axis": 0})
        t = em.op("Reshape", [t, shape])
        branch = t if branch is None else em.op("Add", [branch, t])
    return branch


def add_after(node: ir.Node, other: ir.Value, name: str) -> ir.Value:
    """Insert ``Add(node.output, other)`` right after ``node`` and move the output's other uses onto it."""
    out = node.outputs[0]
    users = [(use.node, use.idx) for use in out.uses()]
    add = ir.Node("", "Add", [out, other], num_outputs=1, name=name)
    add.outputs[0].name = name
    node.graph.insert_after(node, add)
    for user, idx in users:
        user.replace_input_with(idx, add.outputs[0])
    move_graph_output(node.graph, out, add.outputs[0])
    return add.outputs[0]


class InsertHSVDPass(InPlacePass):
    """Add the SVD-G / SVD-L FP branches of every planned layer that has them; keep the residual as weight.

    ``emit=False`` stores the branch factors as initializers without nodes, for a lowering that computes the
    branches inside its own ops (the TensorRT plugins)."""

    def __init__(self, plan: QuantPlan, *, emit: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.emit = emit

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        names = [n for n, lp in self.plan.layers.items() if lp.svd_rank > 0 or lp.local_block is not None]
        sites = matmul_sites(graph, names)
        modified = False
        for name in names:
            if not sites[name]:
                continue
            lp = self.plan.layers[name]
            w_h = torch.from_numpy(np.array(initializer_array(graph.initializers[f"{name}.weight"]), np.float32))
            dec = hsvd(w_h, rank=lp.svd_rank, local_rank=1 if lp.local_block else 0, block=lp.local_block)
            set_initializer(graph, f"{name}.weight", _f32(dec.residual))
            if not self.emit:
                for tname, array in branch_tensors(dec, name).items():
                    constant(graph, tname, array)
                for site in sites[name]:
                    site.matmul.metadata_props[LAYER_KEY] = name
                modified = True
                continue
            for i, site in enumerate(sites[name]):
                em = Emitter(graph, site.matmul, f"{name}/hsvd{i}")
                branch = emit_fp_branch(em, site.input, dec, name)
                if branch is not None:
                    add_after(site.matmul, branch, f"{name}/hsvd{i}/add")
                site.matmul.metadata_props[LAYER_KEY] = name
            modified = True
        return PassResult(model, modified)
