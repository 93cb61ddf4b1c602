"""lowbit_gemm (Triton): packed activation codes x the engine set's packed weight codes on INT8 tensor cores.

Tile (BM, BN) of the output, K in steps of BK. Hopper has no INT4 MMA, so 4-bit codes are unpacked in
registers (``& 0xF``, ``>> 4``, sign-extend) to int8 and multiplied with ``tl.dot(int8, int8) -> int32``.
Nibble pairs are never interleaved in the loop: activation bytes hold (even k, odd k) and weight bytes
(even n, odd n), so each K step is four dots of (BM, BK/2) x (BK/2, BN/2) -- even/odd k rows against
even/odd n columns -- and the two column halves are joined once, in the epilogue. Unpacked storage (int8,
uint8 + 128) is read with the same even/odd strides, so every bit width 2..8 of either side runs the same
loop. Group-wise layers accumulate int32 per input group and rescale per group in float (token-group scale x
weight-group scale); per-channel layers rescale once. Epilogue: + h @ A (SVD-G up, one fp32 dot),
+ SVD-L block term (sum over input blocks q of t[m, p(n), q] u[p(n), q, o(n)]), + bias; out fp32/bf16/fp16.
Float activations (a step kept unquantized) use the same loop with fp32 dots on the integer weight codes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from qdit4sr_export.plugins.activation_spec import ActivationCodes
from qdit4sr_export.plugins.packing import INT4, INT8, weight_storage
from qdit4sr_export.plugins.triton_env import dot_precision, interpreting, next_pow2
from qdit4sr_export.plugins.weight_spec import WeightSpec

from qdit4sr_export.errors import UserError


@triton.jit
def _lo(b):
    return (((b.to(tl.int32) & 15) ^ 8) - 8).to(tl.int8)


@triton.jit
def _hi(b):
    return ((((b.to(tl.int32) >> 4) & 15) ^ 8) - 8).to(tl.int8)


@triton.jit
def _weight_pair(w_ptr, rows, rmask, pairs, N: tl.constexpr, W_MODE: tl.constexpr, IN_T: tl.constexpr):
    """Rows ``rows`` of W as (even columns, odd columns) int8 tiles (cast to IN_T)."""
    if W_MODE == 0:  # INT4: byte j of a row holds columns 2j (low) and 2j + 1 (high)
        m = rmask[:, None] & (pairs < N // 2)[None, :]
        b = tl.load(w_ptr + rows[:, None] * (N // 2) + pairs[None, :], mask=m, other=0)
        return _lo(b).to(IN_T), _hi(b).to(IN_T)
    base = w_ptr + rows[:, None] * N + 2 * pairs[None, :]
    me = rmask[:, None] & (2 * pairs < N)[None, :]
    mo = rmask[:, None] & (2 * pairs + 1 < N)[None, :]
    if W_MODE == 1:  # INT8
        return tl.load(base, mask=me, other=0).to(IN_T), tl.load(base + 1, mask=mo, other=0).to(IN_T)
    we = (tl.load(base, mask=me, other=128).to(tl.int32) - 128).to(tl.int8)  # UINT8 holding code + 128
    wo = (tl.load(base + 1, mask=mo, other=128).to(tl.int32) - 128).to(tl.int8)
    return we.to(IN_T), wo.to(IN_T)


@triton.jit
def _lowbit_gemm_kernel(
    a_ptr, as_ptr, w_ptr, ws_ptr, h_ptr, ga_ptr, t_ptr, u_ptr, bias_ptr, out_ptr, M,
    N: tl.constexpr, K: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr,
    A_MODE: tl.constexpr, W_MODE: tl.constexpr, RANK: tl.constexpr, RP: tl.constexpr,
    L_P: tl.constexpr, L_Q: tl.constexpr, L_QP: tl.constexpr, S_O: tl.constexpr, L_VEC: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IN_T: tl.constexpr, ACC_T: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, PREC: tl.constexpr,
):
    # Grouped launch order: GROUP_M row tiles share the weight columns they read while in L2.
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(N, BN)
    per_group = GROUP_M * n_tiles
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(tl.cdiv(M, BM) - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rm = pid_m * BM + tl.arange(0, BM)
    mmask = rm < M
    rm64 = rm.to(tl.int64)
    pairs = pid_n * (BN // 2) + tl.arange(0, BN // 2)
    kk = tl.arange(0, BK // 2)
    y_e = tl.zeros((BM, BN // 2), dtype=tl.float32)
    y_o = tl.zeros((BM, BN // 2), dtype=tl.float32)
    for gi in range(NG):
        acc_e = tl.zeros((BM, BN // 2), dtype=ACC_T)
        acc_o = tl.zeros((BM, BN // 2), dtype=ACC_T)
        for k0 in range(gi * GS, (gi + 1) * GS, BK):
            ke = k0 + 2 * kk
            kme = ke < (gi + 1) * GS
            kmo = ke + 1 < (gi + 1) * GS
            if A_MODE == 0:  # INT4 codes: byte j holds channels 2j (low) and 2j + 1 (high)
                ab = tl.load(a_ptr + rm64[:, None] * (K // 2) + (ke // 2)[None, :],
                             mask=mmask[:, None] & kme[None, :], other=0)
                a_e = _lo(ab)
                a_o = _hi(ab)
            else:
                a_e = tl.load(a_ptr + rm64[:, None] * K + ke[None, :], mask=mmask[:, None] & kme[None, :],
                              other=0).to(IN_T)
                a_o = tl.load(a_ptr + rm64[:, None] * K + (ke + 1)[None, :], mask=mmask[:, None] & kmo[None, :],
                              other=0).to(IN_T)
            w_ee, w_eo = _weight_pair(w_ptr, ke, kme, pairs, N, W_MODE, IN_T)
            w_oe, w_oo = _weight_pair(w_ptr, ke + 1, kmo, pairs, N, W_MODE, IN_T)
            if A_MODE == 2:
                acc_e = tl.dot(a_e, w_ee, acc_e, input_precision=PREC)
                acc_e = tl.dot(a_o, w_oe, acc_e, input_precision=PREC)
                acc_o = tl.dot(a_e, w_eo, acc_o, input_precision=PREC)
                acc_o = tl.dot(a_o, w_oo, acc_o, input_precision=PREC)
            else:
                acc_e = tl.dot(a_e, w_ee, acc_e, out_dtype=tl.int32)
                acc_e = tl.dot(a_o, w_oe, acc_e, out_dtype=tl.int32)
                acc_o = tl.dot(a_e, w_eo, acc_o, out_dtype=tl.int32)
                acc_o = tl.dot(a_o, w_oo, acc_o, out_dtype=tl.int32)
        cme = 2 * pairs < N
        cmo = 2 * pairs + 1 < N
        sw_e = tl.load(ws_ptr + gi * N + 2 * pairs, mask=cme, other=0.0)
        sw_o = tl.load(ws_ptr + gi * N + 2 * pairs + 1, mask=cmo, other=0.0)
        f_e = acc_e.to(tl.float32)
        f_o = acc_o.to(tl.float32)
        if A_MODE != 2:
            sa = tl.load(as_ptr + rm64 * NG + gi, mask=mmask, other=0.0)
            f_e = f_e * sa[:, None]
            f_o = f_o * sa[:, None]
        y_e += f_e * sw_e[None, :]
        y_o += f_o * sw_o[None, :]

    y = tl.reshape(tl.join(y_e, y_o), (BM, BN))  # columns back in natural order
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < N
    if RANK > 0:  # SVD-G up: h (BM, r) @ A (r, BN)
        r = tl.arange(0, RP)
        hm = tl.load(h_ptr + rm64[:, None] * RANK + r[None, :], mask=mmask[:, None] & (r < RANK)[None, :], other=0.0)
        am = tl.load(ga_ptr + r[:, None] * N + cols[None, :], mask=(r < RANK)[:, None] & cmask[None, :], other=0.0)
        y += tl.dot(hm, am, input_precision=PREC)
    if L_P > 0:  # SVD-L up: out[m, p s_o + o] += sum_q t[m, p, q] u[p, q, o]
        pc = cols // S_O
        oc = cols % S_O
        if L_VEC:  # all q at once: (BM, Q, BN) gathers (small tiles, and the interpreter)
            q = tl.arange(0, L_QP)
            qm = q < L_Q
            t3 = tl.load(t_ptr + rm64[:, None, None] * (L_P * L_Q) + (pc[None, :] * L_Q + q[:, None])[None, :, :],
                         mask=mmask[:, None, None] & (qm[:, None] & cmask[None, :])[None, :, :], other=0.0)
            u2 = tl.load(u_ptr + pc[None, :] * (L_Q * S_O) + q[:, None] * S_O + oc[None, :],
                         mask=qm[:, None] & cmask[None, :], other=0.0)
            y += tl.sum(t3 * u2[None, :, :], axis=1)
        else:
            both = mmask[:, None] & cmask[None, :]
            for qi in range(L_Q):
                tq = tl.load(t_ptr + rm64[:, None] * (L_P * L_Q) + (pc * L_Q + qi)[None, :], mask=both, other=0.0)
                uq = tl.load(u_ptr + pc * (L_Q * S_O) + qi * S_O + oc, mask=cmask, other=0.0)
                y += tq * uq[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cmask, other=0.0)[None, :]
    tl.store(out_ptr + rm64[:, None] * N + cols[None, :], y.to(out_ptr.dtype.element_ty),
             mask=mmask[:, None] & cmask[None, :])


_W_MODES = {INT4: 0, INT8: 1, "UINT8": 2}


def _tiles(m: int, n: int, k: int, gs: int, interpreted: bool) -> tuple[int, int, int, int, int]:
    """(BM, BN, BK, warps, stages): H100/H200 INT8 MMA tiles on a GPU; interpreted, the largest tiles (the
    interpreter's cost is per operation, not per element)."""
    if interpreted:
        bm, bn, bk, warps, stages = min(128, max(16, next_pow2(m))), min(256, max(32, next_pow2(n))), 256, 4, 1
    else:
        bm, bn, bk, warps, stages = (128 if m > 64 else 64), 128, 128, 8, 3
    bk = min(bk, max(32, next_pow2(k)))
    pow2_part = gs & -gs
    return bm, bn, max(32, min(bk, pow2_part)), warps, stages


class LowbitGemm:
    """One layer's weight on one device (the engine set's bytes, moved once); call it per activation."""

    def __init__(self, w: WeightSpec, device: torch.device | str, *, l_vec: bool | None = None,
                 interpreted: bool | None = None) -> None:
        """``interpreted``: tiles for Triton's interpreter (default: whether it is selected now); False gives the
        GPU tiles (the TensorRT plugin compiles ahead of time with them)."""
        dev = torch.device(device)
        self.w = w
        self.interpreted = interpreting() if interpreted is None else interpreted
        self.l_vec = l_vec  # SVD-L epilogue over all input blocks at once (None: by tile size)
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
        gs = w.group_size or w.k
        bm, bn, bk, warps, stages = _tiles(m, w.n, w.k, gs, self.interpreted)
        lp, lq, so = (self.u.shape[0], self.u.shape[1], self.u.shape[2]) if self.u is not None else (0, 1, 1)
        return dict(
            N=w.n, K=w.k, GS=gs, NG=w.groups, A_MODE=a_mode, W_MODE=self.w_mode, RANK=w.rank,
            RP=max(16, next_pow2(w.rank)), L_P=lp, L_Q=lq, L_QP=next_pow2(lq), S_O=so,
            L_VEC=self.l_vec if self.l_vec is not None else (self.interpreted or bm * next_pow2(lq) * bn <= 8192),
            HAS_BIAS=self.bias is not None,
            IN_T=tl.float32 if a_mode == 2 else tl.int8, ACC_T=tl.float32 if a_mode == 2 else tl.int32,
            BM=bm, BN=bn, BK=bk, GROUP_M=8, PREC=dot_precision(device_type) if self.interpreted else "tf32x3",
            **({} if self.interpreted else {"num_warps": warps, "num_stages": stages}),
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
        _lowbit_gemm_kernel[grid](
            a, scales, self.codes, self.scale, act.h.contiguous() if w.rank else d,
            self.ga if self.ga is not None else d, act.t.contiguous() if self.u is not None else d,
            self.u if self.u is not None else d, self.bias if self.bias is not None else d, out, m, **const,
        )
        return out
