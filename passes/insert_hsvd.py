"""InsertHSVDPass: split each planned linear's (rotated) weight into the FP H-SVD branches and a residual.

The weight initializer becomes the residual ``W_H - W_G - W_L`` (what LowerOrtPass quantizes) and the FP
branches are added as nodes beside the MatMul, both in the same two thin MatMuls (``emit_fp_branch``: SVD-G's
``B^T`` beside SVD-L's block-diagonal spread of ``v``, then ``A^T`` over the spread of ``s u``; block (p, q) of
W_L is ``s u v^T``), so the stored parameters stay factored. Run after FoldHadamardPass; the decomposition is
the one the simulation computes (``hsvd`` on the same weight). All of it is lazy: a layer is decomposed once,
when the first of its tensors is written (see ``passes/lazy.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir
import torch
from onnx_ir.passes import InPlacePass, PassResult
from qdit4sr_export.passes.graph_edit import LAYER_KEY, Emitter, constant, move_graph_output, set_initializer
from qdit4sr_export.passes.lazy import LayerCache, float_weight, lazy
from qdit4sr_export.passes.linear_sites import matmul_sites
from qdit4sr_export.passes.registry import register_pass

from qdit4sr_export.quant.hsvd import HSVD, hsvd
from qdit4sr_export.quant.plan import QuantPlan


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy().astype(np.float32))


@dataclass(frozen=True)
class BranchFactors:
    """The stored FP-branch factors of one layer, eager or lazy: SVD-G as ``B^T`` (in, r) and ``A^T`` (r, out),
    SVD-L as ``v`` (P, Q, s_i) and sigma-scaled ``u`` (P, Q, s_o); None where the branch is absent."""

    g_b: ir.TensorProtocol | None
    g_a: ir.TensorProtocol | None
    l_v: ir.TensorProtocol | None
    l_u: ir.TensorProtocol | None

    @classmethod
    def of(cls, dec: HSVD, name: str) -> "BranchFactors":
        """The factors of a computed decomposition."""
        return cls.lazy(name, dec.global_.rank, dec.local.block if dec.local is not None else None,
                        dec.residual.shape, lambda: dec, eager=True)

    @classmethod
    def lazy(cls, name: str, rank: int, block: tuple[int, int] | None, shape, decompose: Callable[[], HSVD], *,
             eager: bool = False) -> "BranchFactors":
        """Factors of known shapes whose data ``decompose()`` gives when they are read (``eager``: now)."""
        out, in_ = shape

        def make(key: str, dims, pick) -> ir.TensorProtocol:
            t = lazy(f"{name}.{key}", ir.DataType.FLOAT, dims, lambda: _f32(pick(decompose())))
            return ir.tensor(t.numpy(), name=t.name) if eager else t

        g_b = g_a = l_v = l_u = None
        if rank > 0:
            g_b = make("svd_g.b", (in_, rank), lambda d: d.global_.b.T)
            g_a = make("svd_g.a", (rank, out), lambda d: d.global_.a.T)
        if block is not None:
            s_o, s_i = block
            p, q = out // s_o, in_ // s_i
            l_v = make("svd_l.v", (p, q, s_i), lambda d: d.local.v)
            l_u = make("svd_l.u", (p, q, s_o), lambda d: d.local.u * d.local.s[..., None])
        return cls(g_b, g_a, l_v, l_u)

    def named(self, name: str) -> dict[str, ir.TensorProtocol]:
        """The present factors by stored name: ``<name>.svd_g.b``, ``.svd_g.a``, ``.svd_l.v``, ``.svd_l.u``."""
        keys = {"svd_g.b": self.g_b, "svd_g.a": self.g_a, "svd_l.v": self.l_v, "svd_l.u": self.l_u}
        return {f"{name}.{k}": t for k, t in keys.items() if t is not None}


def _eye(em: Emitter, n: int, shape: tuple[int, ...]) -> ir.Value:
    """The n x n identity (EyeLike, nothing stored) reshaped to ``shape`` for broadcasting."""
    eye = em.op("EyeLike", [em.op("ConstantOfShape", [em.const(f"shape.{n}x{n}", np.array([n, n], np.int64))])])
    dims = "x".join(map(str, shape))
    return em.op("Reshape", [eye, em.const(f"shape.{dims}", np.array(shape, np.int64))])


def _matrix(em: Emitter, spread: ir.Value, rows: int, cols: int) -> ir.Value:
    return em.op("Reshape", [spread, em.const(f"shape.{rows}x{cols}", np.array([rows, cols], np.int64))])


def emit_fp_branch(em: Emitter, z: ir.Value, dec: HSVD | BranchFactors, name: str, *,
                   tokens: bool = True) -> ir.Value | None:
    """The FP branch ``z (W_G + W_L)^T`` as two GEMMs, or None when both branches are empty.

    Down: ``z [B^T | V]``, up: ``[h | t] [A^T ; U]``. V (in x P*Q) and U (P*Q x out) are SVD-L's factors spread
    into block-diagonal matrices, ``V[(q, i), (p, q')] = v[p, q, i] [q == q']`` and
    ``U[(p, q), (p', o)] = s u[p, q, o] [p == p']``, so ``t = z V`` holds every block's ``v . z_q`` and ``t U``
    sums them into the output blocks. The stored parameters stay the factors (:class:`BranchFactors`); the spread
    matrices are built in the graph each run (in * P*Q + P*Q * out values, small next to the GEMMs). On ONNX
    Runtime's CPU kernels this is about twice as fast as Einsums over the block grid, and SVD-G shares the two GEMMs.

    When the factors hold at least as many values as the dense matrix (rank 32 plus 64 SVD-L blocks on a
    128-wide layer) and ``z`` holds many tokens, the graph multiplies the factors into the dense ``in x out``
    matrix first (once per run, in * (r + P*Q) * out multiply-adds) and applies that: one GEMM of in * out per
    token instead of two of (in + out) * (r + P*Q).
    """
    f = dec if isinstance(dec, BranchFactors) else BranchFactors.of(dec, name)
    downs, ups = [], []
    width = 0
    if f.g_b is not None:
        downs.append(em.const(f"{name}.svd_g.b", f.g_b))
        ups.append(em.const(f"{name}.svd_g.a", f.g_a))
        width += int(f.g_b.shape[1])
    if f.l_v is not None:
        p, q, s_i = (int(d) for d in f.l_v.shape)
        s_o = int(f.l_u.shape[2])
        v = em.const(f"{name}.svd_l.v", f.l_v)
        u = em.const(f"{name}.svd_l.u", f.l_u)
        vt = em.op("Unsqueeze", [em.op("Transpose", [v], {"perm": [1, 2, 0]}),  # (q, i, p, 1)
                                 em.const("axes.3", np.array([3], np.int64))])
        downs.append(_matrix(em, em.op("Mul", [vt, _eye(em, q, (q, 1, 1, q))]), q * s_i, p * q))
        u4 = em.op("Unsqueeze", [u, em.const("axes.2", np.array([2], np.int64))])  # (p, q, 1, o)
        ups.append(_matrix(em, em.op("Mul", [u4, _eye(em, p, (p, 1, p, 1))]), p * q, p * s_o))
        width += p * q
    if not downs:
        return None
    down = downs[0] if len(downs) == 1 else em.op("Concat", downs, {"axis": 1})
    up = ups[0] if len(ups) == 1 else em.op("Concat", ups, {"axis": 0})
    in_f = int(f.g_b.shape[0]) if f.g_b is not None else q * s_i
    out_f = int(f.g_a.shape[1]) if f.g_a is not None else p * s_o
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


@register_pass("insert-hsvd",
               "Split off the H-SVD branches (SVD-G low rank, SVD-L block rank-1) in FP; the residual is the weight to quantize")
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
        cache = LayerCache()  # this graph's decompositions, each computed once when its tensors are written
        modified = False
        for name in names:
            if not sites[name]:
                continue
            lp = self.plan.layers[name]
            source = graph.initializers[f"{name}.weight"].const_value
            decompose = functools.partial(cache.get, name, functools.partial(decompose_layer, source, lp))
            factors = BranchFactors.lazy(name, lp.svd_rank, lp.local_block, tuple(source.shape), decompose)
            set_initializer(graph, f"{name}.weight", lazy(f"{name}.weight", ir.DataType.FLOAT, source.shape,
                                                          lambda d=decompose: _f32(d().residual)))
            modified = True
            if not self.emit:
                for tname, tensor in factors.named(name).items():
                    constant(graph, tname, tensor)
                for site in sites[name]:
                    site.matmul.metadata_props[LAYER_KEY] = name
                continue
            for i, site in enumerate(sites[name]):
                em = Emitter(graph, site.matmul, f"{name}/hsvd{i}")
                branch = emit_fp_branch(em, site.input, factors, name, tokens=site.matmul.op_type == "MatMul")
                if branch is not None:
                    add_after(site.matmul, branch, f"{name}/hsvd{i}/add")
                site.matmul.metadata_props[LAYER_KEY] = name
        return PassResult(model, modified)


def decompose_layer(source: ir.TensorProtocol, lp) -> HSVD:
    """H-SVD of one layer's (rotated) weight, as the simulation computes it."""
    return hsvd(float_weight(source), rank=lp.svd_rank, local_rank=1 if lp.local_block else 0, block=lp.local_block)
