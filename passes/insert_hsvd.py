"""InsertHSVDPass: split each planned linear's (rotated) weight into the FP H-SVD branches and a residual.

The weight initializer becomes the residual ``W_H - W_G - W_L`` (what LowerOrtPass quantizes) and the FP
branches are added as nodes beside the MatMul, both in the same two thin MatMuls (``emit_fp_branch``: SVD-G's
``B^T`` beside SVD-L's block-diagonal spread of ``v``, then ``A^T`` over the spread of ``s u``; block (p, q) of
W_L is ``s u v^T``), so the stored parameters stay factored. Run after FoldHadamardPass; the decomposition is
the one the simulation computes (``hsvd`` on the same weight).
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


def _eye(em: Emitter, n: int, shape: tuple[int, ...]) -> ir.Value:
    """The n x n identity (EyeLike, nothing stored) reshaped to ``shape`` for broadcasting."""
    eye = em.op("EyeLike", [em.op("ConstantOfShape", [em.const(f"shape.{n}x{n}", np.array([n, n], np.int64))])])
    dims = "x".join(map(str, shape))
    return em.op("Reshape", [eye, em.const(f"shape.{dims}", np.array(shape, np.int64))])


def _matrix(em: Emitter, spread: ir.Value, rows: int, cols: int) -> ir.Value:
    return em.op("Reshape", [spread, em.const(f"shape.{rows}x{cols}", np.array([rows, cols], np.int64))])


def emit_fp_branch(em: Emitter, z: ir.Value, dec: HSVD, name: str, *, tokens: bool = True) -> ir.Value | None:
    """The FP branch ``z (W_G + W_L)^T`` as two GEMMs, or None when both branches are empty.

    Down: ``z [B^T | V]``, up: ``[h | t] [A^T ; U]``. V (in x P*Q) and U (P*Q x out) are SVD-L's factors spread
    into block-diagonal matrices, ``V[(q, i), (p, q')] = v[p, q, i] [q == q']`` and
    ``U[(p, q), (p', o)] = s u[p, q, o] [p == p']``, so ``t = z V`` holds every block's ``v . z_q`` and ``t U``
    sums them into the output blocks. The stored parameters stay the factors (:func:`branch_tensors`); the spread
    matrices are built in the graph each run (in * P*Q + P*Q * out values, small next to the GEMMs). On ONNX
    Runtime's CPU kernels this is about twice as fast as Einsums over the block grid, and SVD-G shares the two GEMMs.

    When the factors hold at least as many values as the dense matrix (rank 32 plus 64 SVD-L blocks on a
    128-wide layer) and ``z`` holds many tokens, the graph multiplies the factors into the dense ``in x out``
    matrix first (once per run, in * (r + P*Q) * out multiply-adds) and applies that: one GEMM of in * out per
    token instead of two of (in + out) * (r + P*Q).
    """
    factors = branch_tensors(dec, name)
    downs, ups = [], []
    if dec.global_.rank > 0:
        downs.append(em.const(f"{name}.svd_g.b", factors[f"{name}.svd_g.b"]))
        ups.append(em.const(f"{name}.svd_g.a", factors[f"{name}.svd_g.a"]))
    local = dec.local
    if local is not None:
        p, q, s_o = local.u.shape
        s_i = local.v.shape[2]
        v = em.const(f"{name}.svd_l.v", factors[f"{name}.svd_l.v"])
        u = em.const(f"{name}.svd_l.u", factors[f"{name}.svd_l.u"])
        vt = em.op("Unsqueeze", [em.op("Transpose", [v], {"perm": [1, 2, 0]}),  # (q, i, p, 1)
                                 em.const("axes.3", np.array([3], np.int64))])
        downs.append(_matrix(em, em.op("Mul", [vt, _eye(em, q, (q, 1, 1, q))]), q * s_i, p * q))
        u4 = em.op("Unsqueeze", [u, em.const("axes.2", np.array([2], np.int64))])  # (p, q, 1, o)
        ups.append(_matrix(em, em.op("Mul", [u4, _eye(em, p, (p, 1, p, 1))]), p * q, p * s_o))
    if not downs:
        return None
    down = downs[0] if len(downs) == 1 else em.op("Concat", downs, {"axis": 1})
    up = ups[0] if len(ups) == 1 else em.op("Concat", ups, {"axis": 0})
    out_f, in_f = dec.residual.shape
    width = dec.global_.rank + (local.u.shape[0] * local.u.shape[1] if local is not None else 0)
    if tokens and (in_f + out_f) * width >= in_f * out_f:
        return em.op("MatMul", [z, em.op("MatMul", [down, up])])
    return em.op("MatMul", [em.op("MatMul", [z, down]), up])


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
                branch = emit_fp_branch(em, site.input, dec, name, tokens=site.matmul.op_type == "MatMul")
                if branch is not None:
                    add_after(site.matmul, branch, f"{name}/hsvd{i}/add")
                site.matmul.metadata_props[LAYER_KEY] = name
            modified = True
        return PassResult(model, modified)
