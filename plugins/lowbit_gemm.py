"""lowbit_gemm (Triton): packed activation codes x the engine set's packed weight codes on INT8 tensor cores.

Tile (BM, BN) of the output, K in steps of BK (tile choice: ``gemm_configs``). Hopper has no INT4 MMA, so 4-bit
codes are unpacked in registers (``& 0xF``, ``>> 4``, sign-extend) to int8 and multiplied with
``tl.dot(int8, int8) -> int32`` (int8 ``wgmma``). Nibble pairs are never interleaved: packed activation bytes
hold (even k, odd k) and packed weight bytes (even n, odd n), so a K step of packed x packed is four dots of
(BM, BK/2) x (BK/2, BN/2) -- even/odd k against even/odd n -- and the two column halves stay apart until the
store. Int8 storage (int8 codes, uint8 + 128 weights) is read as whole tiles in natural order (one dot per half),
16 bytes a load. The main loop is one flat ``tl.range`` over every K step of every group, software-pipelined by
the launch's ``num_stages``: Triton turns its loads into ``cp.async`` copies into shared memory (the pointers must
be 16-byte aligned, which Triton's launcher specializes on and the ahead-of-time compile must declare).
Group-wise layers accumulate int32 per input group and rescale per group in float (token-group scale x
weight-group scale); per-channel layers rescale once. Epilogue, in the accumulators' layout: + h @ A (SVD-G up)
and + the SVD-L block term (sum over input blocks q of t[m, p(n), q] u[p(n), q, o(n)], a dot over the tile's
(p, q) pairs), both tensor-core dots of LC inner columns at a time, + bias; out fp32/bf16/fp16.
Float activations (a step kept unquantized) use the same loop with fp32 dots on the integer weight codes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from qdit4sr_export.plugins.activation_spec import ActivationCodes
from qdit4sr_export.plugins.gemm_configs import GemmTile, gemm_tile
from qdit4sr_export.plugins.packing import INT4, INT8, weight_storage
from qdit4sr_export.plugins.triton_env import dot_precision, interpreting
from qdit4sr_export.plugins.weight_spec import WeightSpec

from qdit4sr_export.errors import UserError


@triton.jit
def _lo(b):
    return (((b.to(tl.int32) & 15) ^ 8) - 8).to(tl.int8)


@triton.jit
def _hi(b):
    return ((((b.to(tl.int32) >> 4) & 15) ^ 8) - 8).to(tl.int8)


@triton.jit
def _a_tile(a_ptr, rm64, rmask, k0, k_end, K: tl.constexpr, A_MODE: tl.constexpr, BK: tl.constexpr,
            EVEN_K: tl.constexpr):
    """Activations of input channels k0 .. k0 + BK (those < k_end): (even k, odd k) int8 halves of packed codes,
    else the (BM, BK) tile (twice). Whole 16-byte rows: the loads vectorize and pipeline as async copies."""
    if A_MODE == 0:
        kb = k0 // 2 + tl.arange(0, BK // 2)
        m = rmask[:, None] if EVEN_K else rmask[:, None] & (2 * kb < k_end)[None, :]
        b = tl.load(a_ptr + rm64[:, None] * (K // 2) + kb[None, :], mask=m, other=0)
        a0, a1 = _lo(b), _hi(b)
    else:
        k = k0 + tl.arange(0, BK)
        m = rmask[:, None] if EVEN_K else rmask[:, None] & (k < k_end)[None, :]
        a0 = tl.load(a_ptr + rm64[:, None] * K + k[None, :], mask=m, other=0)
        a1 = a0
    return a0, a1


@triton.jit
def _w_tile(w_ptr, rows, kmask, pid_n, flip, N: tl.constexpr, W_MODE: tl.constexpr, BN: tl.constexpr,
            EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, IN_T: tl.constexpr):
    """Weight rows ``rows`` of the tile's columns: (even columns, odd columns) of packed INT4, else the
    (rows, BN) tile (twice), as IN_T. INT8/UINT8 bytes are xor-ed with ``flip`` (see the kernel)."""
    if W_MODE == 0:
        c = pid_n * (BN // 2) + tl.arange(0, BN // 2)
        n_ok = c < N // 2
        width = N // 2
    else:
        c = pid_n * BN + tl.arange(0, BN)
        n_ok = c < N
        width = N
    if EVEN_K and EVEN_N:
        b = tl.load(w_ptr + rows[:, None] * width + c[None, :])
    else:
        b = tl.load(w_ptr + rows[:, None] * width + c[None, :], mask=kmask[:, None] & n_ok[None, :], other=0)
    if W_MODE == 0:
        w0, w1 = _lo(b).to(IN_T), _hi(b).to(IN_T)
    else:
        w0 = (b ^ flip).to(tl.int8, bitcast=True).to(IN_T)
        w1 = w0
    return w0, w1


@triton.jit
def _half_cols(pid_n, NS: tl.constexpr, BN: tl.constexpr):
    """Output columns of the two accumulators: (even, odd) columns of the tile for INT4 weights, else the tile."""
    c = tl.arange(0, BN // NS)
    if NS == 2:
        c0 = pid_n * BN + 2 * c
        c1 = c0 + 1
    else:
        c0 = pid_n * BN + c
        c1 = c0
    return c0, c1


@triton.jit
def _rescale(acc0, acc1, y0, y1, as_ptr, ws_ptr, rm64, rmask, gi, pid_n, N: tl.constexpr, NG: tl.constexpr,
             A_MODE: tl.constexpr, NS: tl.constexpr, BN: tl.constexpr):
    """y += acc * token scale (group gi) * weight scale (group gi), per accumulator half."""
    f0 = acc0.to(tl.float32)
    f1 = acc1.to(tl.float32)
    if A_MODE != 2:
        sa = tl.load(as_ptr + rm64 * NG + gi, mask=rmask, other=0.0)
        f0 = f0 * sa[:, None]
        f1 = f1 * sa[:, None]
    c0, c1 = _half_cols(pid_n, NS, BN)
    y0 += f0 * tl.load(ws_ptr + gi * N + c0, mask=c0 < N, other=0.0)[None, :]
    if NS == 2:
        y1 += f1 * tl.load(ws_ptr + gi * N + c1, mask=c1 < N, other=0.0)[None, :]
    return y0, y1


@triton.jit
def _u_tile(u_ptr, pq, pj, jm, cols, N: tl.constexpr, S_O: tl.constexpr):
    """SVD-L's u for (p, q) pairs ``pq`` = p Q + q and output columns ``cols``: zero where a column's block is not p."""
    pc = cols // S_O
    return tl.load(u_ptr + pq[:, None] * S_O + (cols - pc * S_O)[None, :],
                   mask=jm[:, None] & (pj[:, None] == pc[None, :]) & (cols < N)[None, :], other=0.0)


@triton.jit
def _lowbit_gemm_kernel(
    a_ptr, as_ptr, w_ptr, ws_ptr, h_ptr, ga_ptr, t_ptr, u_ptr, bias_ptr, out_ptr, M,
    N: tl.constexpr, K: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr,
    A_MODE: tl.constexpr, W_MODE: tl.constexpr, RANK: tl.constexpr,
    L_P: tl.constexpr, L_Q: tl.constexpr, S_O: tl.constexpr, HAS_BIAS: tl.constexpr,
    IN_T: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LC: tl.constexpr,
    GROUP_M: tl.constexpr, PREC: tl.constexpr,
):
    # Grouped launch order: GROUP_M row tiles share the weight columns they read while in L2.
    pid = tl.program_id(0)
    n_tiles: tl.constexpr = (N + BN - 1) // BN
    per_group = GROUP_M * n_tiles
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(tl.cdiv(M, BM) - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rm = pid_m * BM + tl.arange(0, BM)
    rmask = rm < M
    rm64 = rm.to(tl.int64)
    EVEN_K: tl.constexpr = GS % BK == 0  # K steps never straddle a group: no masks along K
    EVEN_N: tl.constexpr = N % BN == 0
    SPG: tl.constexpr = (GS + BK - 1) // BK  # K steps per group
    KS: tl.constexpr = 2 if A_MODE == 0 else 1  # packed activations: even / odd k apart
    NS: tl.constexpr = 2 if W_MODE == 0 else 1  # packed weights: even / odd columns apart
    ACC_T: tl.constexpr = tl.float32 if A_MODE == 2 else tl.int32
    # UINT8 weights hold code + 128: xor 0x80 is the int8 code. INT8 weights are xor-ed with a zero the compiler
    # cannot fold (M is never negative): their tile then takes the register path that Triton pipelines with
    # async copies (a tile loaded straight into the MMA's K-major buffer would be transposed by a blocking load).
    if W_MODE == 2:
        flip = tl.full((), 0x80, tl.uint8)
    else:
        flip = ((M >> 31) & 0x80).to(tl.int8)
    kk = tl.arange(0, BK // KS)
    acc0 = tl.zeros((BM, BN // NS), dtype=ACC_T)
    acc1 = tl.zeros((BM, BN // NS), dtype=ACC_T)
    y0 = tl.zeros((BM, BN // NS), dtype=tl.float32)
    y1 = tl.zeros((BM, BN // NS), dtype=tl.float32)
    # One flat, software-pipelined loop over every K step of every group (the launch's num_stages).
    for j in tl.range(0, NG * SPG):
        gi = j // SPG
        if EVEN_K:
            k0 = j * BK
        else:
            k0 = gi * GS + (j % SPG) * BK
        k_end = (gi + 1) * GS
        a0, a1 = _a_tile(a_ptr, rm64, rmask, k0, k_end, K, A_MODE, BK, EVEN_K)
        if KS == 2:
            rows = k0 + 2 * kk
            w00, w01 = _w_tile(w_ptr, rows, rows < k_end, pid_n, flip, N, W_MODE, BN, EVEN_K, EVEN_N, IN_T)
            w10, w11 = _w_tile(w_ptr, rows + 1, rows + 1 < k_end, pid_n, flip, N, W_MODE, BN, EVEN_K, EVEN_N, IN_T)
            acc0 = tl.dot(a0, w00, acc0, input_precision=PREC, out_dtype=ACC_T)
            acc0 = tl.dot(a1, w10, acc0, input_precision=PREC, out_dtype=ACC_T)
            if NS == 2:
                acc1 = tl.dot(a0, w01, acc1, input_precision=PREC, out_dtype=ACC_T)
                acc1 = tl.dot(a1, w11, acc1, input_precision=PREC, out_dtype=ACC_T)
        else:
            rows = k0 + kk
            w0, w1 = _w_tile(w_ptr, rows, rows < k_end, pid_n, flip, N, W_MODE, BN, EVEN_K, EVEN_N, IN_T)
            acc0 = tl.dot(a0, w0, acc0, input_precision=PREC, out_dtype=ACC_T)
            if NS == 2:
                acc1 = tl.dot(a0, w1, acc1, input_precision=PREC, out_dtype=ACC_T)
        if NG > 1:
            if j % SPG == SPG - 1:  # a group's last step: rescale into y, restart the integer sums
                y0, y1 = _rescale(acc0, acc1, y0, y1, as_ptr, ws_ptr, rm64, rmask, gi, pid_n, N, NG, A_MODE, NS, BN)
                acc0 = tl.zeros((BM, BN // NS), dtype=ACC_T)
                acc1 = tl.zeros((BM, BN // NS), dtype=ACC_T)
    if NG == 1:
        y0, y1 = _rescale(acc0, acc1, y0, y1, as_ptr, ws_ptr, rm64, rmask, 0, pid_n, N, NG, A_MODE, NS, BN)

    # Epilogue in the accumulators' own layout (even / odd columns apart for INT4 weights), the low-rank terms
    # as tensor-core dots of LC inner columns at a time: nothing is moved through shared memory but each dot's
    # (LC, BN) operand, and the registers hold one (BM, BN) tile.
    c0, c1 = _half_cols(pid_n, NS, BN)
    if RANK > 0:  # SVD-G up: y += h (BM, r) @ A (r, BN)
        for c in tl.range(0, RANK, LC, num_stages=1):
            r = c + tl.arange(0, LC)
            hm = tl.load(h_ptr + rm64[:, None] * RANK + r[None, :], mask=rmask[:, None] & (r < RANK)[None, :],
                         other=0.0)
            am0 = tl.load(ga_ptr + r[:, None] * N + c0[None, :], mask=(r < RANK)[:, None] & (c0 < N)[None, :],
                          other=0.0)
            y0 = tl.dot(hm, am0, y0, input_precision=PREC)
            if NS == 2:
                am1 = tl.load(ga_ptr + r[:, None] * N + c1[None, :], mask=(r < RANK)[:, None] & (c1 < N)[None, :],
                              other=0.0)
                y1 = tl.dot(hm, am1, y1, input_precision=PREC)
    if L_P > 0:  # SVD-L up: out[m, p s_o + o] += sum_q t[m, p, q] u[p, q, o], one dot over the tile's (p, q)
        p0 = (pid_n * BN) // S_O
        L_PT: tl.constexpr = 1 if S_O % BN == 0 else (BN - 1) // S_O + 2  # blocks p a column tile can touch
        for c in tl.range(0, L_PT * L_Q, LC, num_stages=1):
            jj = c + tl.arange(0, LC)
            pj = p0 + jj // L_Q
            jm = (jj < L_PT * L_Q) & (pj < L_P)
            tq = tl.load(t_ptr + rm64[:, None] * (L_P * L_Q) + (p0 * L_Q + jj)[None, :],
                         mask=rmask[:, None] & jm[None, :], other=0.0)
            y0 = tl.dot(tq, _u_tile(u_ptr, p0 * L_Q + jj, pj, jm, c0, N, S_O), y0, input_precision=PREC)
            if NS == 2:
                y1 = tl.dot(tq, _u_tile(u_ptr, p0 * L_Q + jj, pj, jm, c1, N, S_O), y1, input_precision=PREC)
    if HAS_BIAS:
        y0 += tl.load(bias_ptr + c0, mask=c0 < N, other=0.0)[None, :]
        if NS == 2:
            y1 += tl.load(bias_ptr + c1, mask=c1 < N, other=0.0)[None, :]
    if NS == 2:
        y = tl.reshape(tl.join(y0, y1), (BM, BN))  # columns back in natural order
    else:
        y = y0
    cols = pid_n * BN + tl.arange(0, BN)
    tl.store(out_ptr + rm64[:, None] * N + cols[None, :], y.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & (cols < N)[None, :])


_W_MODES = {INT4: 0, INT8: 1, "UINT8": 2}


class LowbitGemm:
    """One layer's weight on one device (the engine set's bytes, moved once); call it per activation."""

    def __init__(self, w: WeightSpec, device: torch.device | str, *, interpreted: bool | None = None,
                 tile: GemmTile | None = None) -> None:
        """``interpreted``: tiles for Triton's interpreter (default: whether it is selected now); False gives the
        GPU tiles (the TensorRT plugin compiles ahead of time with them). ``tile``: this tile instead of
        ``gemm_configs``' choice (tests, and timing candidates)."""
        dev = torch.device(device)
        self.w = w
        self.interpreted = interpreting() if interpreted is None else interpreted
        self.tile = tile
        self.kernel = None
        f32 = dict(device=dev, dtype=torch.float32)
        self.codes = w.codes.to(dev)
        self.scale = w.scale.to(**f32).contiguous()
        self.ga = w.svd_g_a.to(**f32).contiguous() if w.svd_g_a is not None else None
        self.u = w.svd_l_u.to(**f32).contiguous() if w.svd_l_u is not None else None
        self.bias = w.bias.to(**f32).contiguous() if w.bias is not None else None
        self.w_mode = _W_MODES[weight_storage(w.bits)]
        self._dummy = torch.empty(1, **f32)

    def constants(self, a_mode: int, m: int, device_type: str) -> dict:
        """The kernel's compile-time parameters (and launch warps and stages on a GPU) for ``m`` tokens of
        activations in ``a_mode`` (0: packed codes, 1: int8 codes, 2: float)."""
        w = self.w
        t = self.tile or gemm_tile(m, w.n, w.k, w.bits, a_mode, w.group_size, self.u is not None,
                                   interpreted=self.interpreted)
        lp, lq, so = (self.u.shape[0], self.u.shape[1], self.u.shape[2]) if self.u is not None else (0, 1, 1)
        return dict(
            N=w.n, K=w.k, GS=w.group_size or w.k, NG=w.groups, A_MODE=a_mode, W_MODE=self.w_mode, RANK=w.rank,
            L_P=lp, L_Q=lq, S_O=so, HAS_BIAS=self.bias is not None, IN_T=tl.float32 if a_mode == 2 else tl.int8,
            BM=t.bm, BN=t.bn, BK=t.bk, LC=t.lc, GROUP_M=8,
            PREC=dot_precision(device_type) if self.interpreted else "tf32x3",
            **({} if self.interpreted else {"num_warps": t.warps, "num_stages": t.stages}),
        )

    def __call__(self, act: ActivationCodes, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(M, N) = dequant(act) @ dequant(W) + h A + SVD-L + bias, as ``lowbit_gemm_reference``."""
        w = self.w
        where = f"layer '{w.name}'" if w.name else "lowbit_gemm"
        if act.bits is None:
            if act.z is None:
                raise UserError(f"{where}: float activations need z")
            a, a_mode, scales = act.z.reshape(-1, w.k).float().contiguous(), 2, self._dummy
        else:
            a, a_mode, scales = act.codes.contiguous(), 0 if act.bits <= 4 else 1, act.scales.contiguous()
            if scales.shape[1] != w.groups:
                raise UserError(f"{where}: {scales.shape[1]} activation scale groups but {w.groups} weight groups")
        m = a.shape[0]
        if (w.rank and act.h is None) or (w.svd_l_u is not None and act.t is None):
            raise UserError(f"{where}: the SVD branches need h and t from rotate_quantize")
        out = torch.empty(m, w.n, device=a.device, dtype=out_dtype)
        if m == 0:
            return out
        const = self.constants(a_mode, m, a.device.type)
        d = self._dummy
        grid = (triton.cdiv(m, const["BM"]) * triton.cdiv(w.n, const["BN"]),)
        self.kernel = _lowbit_gemm_kernel[grid](  # the compiled kernel that ran (metadata: shared memory, spills)
            a, scales, self.codes, self.scale, act.h.contiguous() if w.rank else d,
            self.ga if self.ga is not None else d, act.t.contiguous() if self.u is not None else d,
            self.u if self.u is not None else d, self.bias if self.bias is not None else d, out, m, **const,
        )
        return out
