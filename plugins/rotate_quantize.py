"""rotate_quantize (Triton): a block of tokens read once -> smoothing, Hadamard rotation, per-token (or per-group)
scales and round-half-even codes, packed; the H-SVD down-projections from the same registers.

One program owns BM whole tokens (a row's scale needs the whole rotated row): the tile (BM, T) is rotated
with one ``tl.dot`` per Kronecker factor on a reshaped view (``activation_layout``), reduced for the
scale, divided (correctly rounded ``div_rn``), clamped and rounded half to even with the fp32 magic number
1.5 * 2^23 (exact for |v| < 2^22; ``rint`` is libdevice, which the interpreter cannot run). Codes of <= 4
bits are packed two per byte (channel 2j in the low nibble). SVD-G down ``h = z B``: one reduction per
rank column over the register tile (B^T rows, contiguous), or one ``tl.dot`` with B when its tile fits;
SVD-L down: the tile times v[p] summed per input block (``Segments``), per p or all p at once when small. Falls back to torch (by the caller, see ``RotateQuantize``): LRQ-DiT's outlier block
rotation (permutations and learned blocks: applied in torch, the kernel then quantizes), and SVD-L blocks
whose width has too small a power-of-two part to combine in registers (the kernel writes z, torch sums).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from qdit4sr_export.plugins.activation_layout import Segments, factor_matrices, rotation_layout
from qdit4sr_export.plugins.activation_spec import ActivationCodes, ActivationSpec
from qdit4sr_export.plugins.rotate_quantize_reference import svd_l_down
from qdit4sr_export.plugins.triton_env import dot_precision, interpreting, next_pow2

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import check_bits, optimal_clip, qmax
from qdit4sr_export.quant.hadamard import Rotation

FLT_MIN = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(float32).tiny: the simulation's scale floor
MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: (v + MAGIC) - MAGIC rounds |v| < 2^22 half to even in fp32
#: tf32 parts of each rotation dot on a GPU: 3 x 11 bits hold every bit of an fp32 operand.
SPLIT_PARTS = 3


@triton.jit
def _tf32_part(r):
    """r with its 13 low mantissa bits cleared: exactly representable in tf32 (all a tensor core reads of it)."""
    return (r.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _contract(t, h, L: tl.constexpr, F: tl.constexpr, R: tl.constexpr, BM: tl.constexpr, T: tl.constexpr,
              SPLIT: tl.constexpr):
    """t (BM, T) viewed as (L, F, R): out[l, g, r] = sum_f t[l, f, r] h[f, g], returned as (BM, T).

    SPLIT > 0 (a GPU): h's signs (+-1, 0: exact in tf32; the caller applies the scale folded into the last factor)
    and t as the sum of SPLIT tf32-exact parts (3 parts: every fp32 bit), one tensor-core dot each, in a loop so
    one operand buffer (the tile's bytes) is live at a time."""
    t3 = tl.reshape(t, (L, F, R))
    if F >= 16:  # tensor cores: (L R, F) @ (F, F)
        u = tl.reshape(tl.permute(t3, (0, 2, 1)), (L * R, F))
        if SPLIT > 0:
            hs = tl.where(h > 0, 1.0, tl.where(h < 0, -1.0, 0.0))
            acc = tl.zeros((L * R, F), dtype=tl.float32)
            for _ in tl.range(0, SPLIT, num_stages=1):
                part = _tf32_part(u)
                acc = tl.dot(part, hs, acc, input_precision="tf32")
                u = u - part
            u = acc
        else:
            u = tl.dot(u, h, input_precision="ieee")
        out = tl.permute(tl.reshape(u, (L, R, F)), (0, 2, 1))
    else:  # tl.dot needs K >= 16: small factors as broadcast FMAs (fp32: with SPLIT, its signs too)
        if SPLIT > 0:
            h = tl.where(h > 0, 1.0, tl.where(h < 0, -1.0, 0.0))
        out = tl.sum(t3[:, :, None, :] * h[None, :, :, None], axis=1)
    return tl.reshape(out, (BM, T))


@triton.jit
def _load_square(ptr, F: tl.constexpr):
    i = tl.arange(0, F)
    return tl.load(ptr + i[:, None] * F + i[None, :])


@triton.jit
def _segments(part, NB: tl.constexpr, C: tl.constexpr, NS: tl.constexpr, IS_MAX: tl.constexpr):
    """(R, NB) sub-block values -> (R, NS): C consecutive sub-blocks combined (sum, or max of values >= 0)."""
    if C == 1:
        out = part
    else:
        b = tl.arange(0, NB)
        s = tl.arange(0, NS)
        hit = (b[:, None] // C) == s[None, :]
        picked = tl.where(hit[None, :, :], part[:, :, None], 0.0)
        if IS_MAX:
            out = tl.max(picked, axis=1)
        else:
            out = tl.sum(picked, axis=1)
    return out


@triton.jit
def _expand(seg, NB: tl.constexpr, C: tl.constexpr, NS: tl.constexpr):
    """(R, NS) -> (R, NB): sub-block b takes segment b // C (1.0 past the last segment: padding)."""
    if C == 1:
        out = seg
    else:
        b = tl.arange(0, NB)
        s = tl.arange(0, NS)
        hit = (b[:, None] // C) == s[None, :]
        val = tl.sum(tl.where(hit[None, :, :], seg[:, None, :], 0.0), axis=2)
        out = tl.where((b // C < NS)[None, :], val, 1.0)
    return out


@triton.jit
def _scale(red, count: tl.constexpr, step, QMAX: tl.constexpr, MINMAX: tl.constexpr):
    """Step of the integer grid from sum(z^2) (gaussian: rms * c*(b) / qmax) or max|z| (minmax: / qmax)."""
    if MINMAX:
        s = tl.div_rn(red, QMAX * 1.0)
    else:
        s = tl.sqrt_rn(tl.div_rn(red, count * 1.0)) * step
    return tl.maximum(s, FLT_MIN)


@triton.jit
def _round_codes(v, QMAX: tl.constexpr):
    v = tl.minimum(tl.maximum(v, -QMAX * 1.0), QMAX * 1.0)
    return ((v + MAGIC) - MAGIC).to(tl.int32)


@triton.jit
def _rotate_quantize_kernel(
    x_ptr, smooth_ptr, signs_ptr, hk_ptr, h1_ptr, h2_ptr, b_ptr, v_ptr,
    codes_ptr, scale_ptr, h_ptr, t_ptr, z_ptr, M, step,
    N: tl.constexpr, T: tl.constexpr, BM: tl.constexpr, KP: tl.constexpr, P: tl.constexpr,
    F1: tl.constexpr, F2: tl.constexpr, HAS_SMOOTH: tl.constexpr, HAS_SIGNS: tl.constexpr, HAS_HK: tl.constexpr,
    BITS: tl.constexpr, QMAX: tl.constexpr, MINMAX: tl.constexpr,
    GROUPED: tl.constexpr, G: tl.constexpr, G_SUB: tl.constexpr, G_C: tl.constexpr, G_NB: tl.constexpr,
    G_NS: tl.constexpr, N_GROUPS: tl.constexpr,
    RANK: tl.constexpr, RP: tl.constexpr, H_DOT: tl.constexpr, L_P: tl.constexpr, L_PP: tl.constexpr,
    L_Q: tl.constexpr, L_SUB: tl.constexpr, L_C: tl.constexpr, L_NB: tl.constexpr, L_NS: tl.constexpr,
    L_VEC: tl.constexpr, STORE_Z: tl.constexpr, PREC: tl.constexpr, ROT_SCALE: tl.constexpr, SPLIT: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    cols = tl.arange(0, T)
    rmask = rows < M
    cmask = cols < N
    mask = rmask[:, None] & cmask[None, :]
    row_off = rows.to(tl.int64)[:, None]
    z = tl.load(x_ptr + row_off * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_SMOOTH:
        z = tl.div_rn(z, tl.load(smooth_ptr + cols, mask=cmask, other=1.0)[None, :])
    if HAS_SIGNS:
        z = z * tl.load(signs_ptr + cols, mask=cmask, other=0.0)[None, :]
    if HAS_HK:
        z = _contract(z, _load_square(hk_ptr, KP), BM, KP, P, BM, T, SPLIT)
    if F1 > 1:
        z = _contract(z, _load_square(h1_ptr, F1), BM * KP, F1, F2, BM, T, SPLIT)
    if F2 > 1:
        z = _contract(z, _load_square(h2_ptr, F2), BM * KP * F1, F2, 1, BM, T, SPLIT)
    if SPLIT > 0 and (HAS_HK or F1 > 1 or F2 > 1):  # the rotation's 1 / sqrt(n), once, after +-1 factors
        z = z * ROT_SCALE

    if BITS > 0:
        if GROUPED:
            zs = tl.reshape(z, (BM, G_NB, G_SUB))
            if MINMAX:
                part = tl.max(tl.abs(zs), axis=2)
            else:
                part = tl.sum(zs * zs, axis=2)
            scale = _scale(_segments(part, G_NB, G_C, G_NS, MINMAX), G, step, QMAX, MINMAX)
            g = tl.arange(0, G_NS)
            tl.store(scale_ptr + rows[:, None] * N_GROUPS + g[None, :], scale,
                     mask=rmask[:, None] & (g < N_GROUPS)[None, :])
            v = tl.div_rn(zs, _expand(scale, G_NB, G_C, G_NS)[:, :, None])
            codes = tl.reshape(_round_codes(v, QMAX), (BM, T))
        else:
            if MINMAX:
                red = tl.max(tl.abs(z), axis=1)
            else:
                red = tl.sum(z * z, axis=1)
            scale = _scale(red, N, step, QMAX, MINMAX)
            tl.store(scale_ptr + rows, scale, mask=rmask)
            codes = _round_codes(tl.div_rn(z, scale[:, None]), QMAX)
        if BITS <= 4:
            lo, hi = tl.split(tl.reshape(codes, (BM, T // 2, 2)))
            packed = ((lo & 15) | ((hi & 15) << 4)).to(tl.uint8)
            pc = tl.arange(0, T // 2)
            tl.store(codes_ptr + row_off * (N // 2) + pc[None, :], packed,
                     mask=rmask[:, None] & (pc < N // 2)[None, :])
        else:
            tl.store(codes_ptr + row_off * N + cols[None, :], codes.to(tl.int8), mask=mask)

    if STORE_Z:
        tl.store(z_ptr + row_off * N + cols[None, :], z, mask=mask)
    if RANK > 0:  # SVD-G down: h = z B
        if H_DOT:  # one dot against the (T, r) tile of B: small layers, and the interpreter
            r = tl.arange(0, RP)
            bmat = tl.load(b_ptr + cols[:, None] * RANK + r[None, :], mask=cmask[:, None] & (r < RANK)[None, :],
                           other=0.0)
            h = tl.dot(z, bmat, input_precision=PREC)
            tl.store(h_ptr + rows[:, None] * RANK + r[None, :], h, mask=rmask[:, None] & (r < RANK)[None, :])
        else:  # one register-tile reduction per rank column (B^T rows, contiguous): any width
            for j in range(RANK):
                b = tl.load(b_ptr + j * N + cols, mask=cmask, other=0.0)
                tl.store(h_ptr + rows * RANK + j, tl.sum(z * b[None, :], axis=1), mask=rmask)
    if L_P > 0:  # SVD-L down: t[:, p, q] = sum over input block q of z * v[p]
        q = tl.arange(0, L_NS)
        if L_VEC:  # all p at once: (BM, P, T) products
            p = tl.arange(0, L_PP)
            vm = tl.load(v_ptr + p[:, None] * N + cols[None, :], mask=(p < L_P)[:, None] & cmask[None, :], other=0.0)
            part = tl.sum(tl.reshape(z[:, None, :] * vm[None, :, :], (BM * L_PP, L_NB, L_SUB)), axis=2)
            tq = tl.reshape(_segments(part, L_NB, L_C, L_NS, False), (BM, L_PP, L_NS))
            tl.store(t_ptr + rows[:, None, None] * (L_P * L_Q) + p[None, :, None] * L_Q + q[None, None, :], tq,
                     mask=rmask[:, None, None] & (p < L_P)[None, :, None] & (q < L_Q)[None, None, :])
        else:
            for pi in range(L_P):
                vp = tl.load(v_ptr + pi * N + cols, mask=cmask, other=0.0)
                lpart = tl.sum(tl.reshape(z * vp[None, :], (BM, L_NB, L_SUB)), axis=2)  # not `part`: a loop
                tq = _segments(lpart, L_NB, L_C, L_NS, False)  # variable must keep the grouped scale's type
                tl.store(t_ptr + rows[:, None] * (L_P * L_Q) + pi * L_Q + q[None, :], tq,
                         mask=rmask[:, None] & (q < L_Q)[None, :])


def _block_rows(tile: int, interpreted: bool, expand: int) -> int:
    """Tokens per program: BM * T floats stay in registers on a GPU (4K: at widths 1536 and 6144 two or more
    programs fit an SM by registers and shared memory); the interpreter wants few programs, each tensor within
    Triton's 2^20 elements (a factor of order ``expand`` < 16 broadcasts the tile ``expand`` times)."""
    budget, cap = ((1 << 18) // expand, 256) if interpreted else ((1 << 12), 64)
    bm = 1
    while bm < cap and bm * 2 * tile <= budget:
        bm *= 2
    return bm


def _warps(elements: int) -> int:
    """Warps per program for a register tile of ``elements`` floats, so that two programs fit an SM's 64K
    registers (sm_90, ptxas -v; bench/kernel_configs.py): 4096 floats take about 120 registers a thread at 8
    warps, 8192 floats about 250 at 4 warps (170 at 8: one program per SM)."""
    return 8 if elements == 4096 else 4


class RotateQuantize:
    """A layer's prepared input path on one device (factor matrices, B^T, layouts); call it per activation."""

    def __init__(self, spec: ActivationSpec, device: torch.device | str, *, h_dot: bool | None = None,
                 l_vec: bool | None = None, interpreted: bool | None = None, split: int | None = None) -> None:
        """``interpreted``: choose tiles for Triton's interpreter (default: whether it is selected now); False
        gives the GPU choices, e.g. when compiling the kernel ahead of time for the TensorRT plugin. ``split``:
        tf32 parts per rotation dot (default: 3 on a GPU, 0 = plain fp32 dots interpreted)."""
        self.spec = spec
        self.device = torch.device(device)
        self.interpreted = interpreting() if interpreted is None else interpreted
        self.split = split if split is not None else (0 if self.interpreted else SPLIT_PARTS)
        rot = spec.rotation
        # LRQ-DiT's outlier rotation (permutations + learned blocks) is not a Kronecker Hadamard: torch applies it.
        self.torch_rotation = rot if rot is not None and not isinstance(rot, Rotation) else None
        self.layout = rotation_layout(spec.n, rot if isinstance(rot, Rotation) else None)
        tile = self.layout.tile
        f32 = dict(device=self.device, dtype=torch.float32)
        self.factors = {k: v.to(**f32).contiguous() for k, v in factor_matrices(self.layout).items()}
        self.signs = rot.signs().to(**f32) if isinstance(rot, Rotation) and rot.seed is not None else None
        self.smooth = spec.smooth.to(**f32).contiguous() if spec.smooth is not None else None
        lay = self.layout
        self.bm = _block_rows(tile, self.interpreted,
                              max([f for f in (lay.kp if lay.hk else 1, lay.f1, lay.f2) if f < 16], default=1))
        rp = max(16, next_pow2(spec.rank))
        # SVD-G down as one dot when the (T, r) tile of B fits in registers (and the dot has >= 16 rows), else a
        # reduction per rank column over B^T; the interpreter always takes the dot (fewer operations).
        self.h_dot = h_dot if h_dot is not None else (self.interpreted or (tile * rp <= 8192 and self.bm >= 16))
        b = spec.svd_g_b.to(**f32) if spec.svd_g_b is not None else None
        self.b = None if b is None else (b.contiguous() if self.h_dot else b.t().contiguous())
        self.groups = None
        if spec.group_size is not None:
            self.groups = Segments.of(spec.group_size, spec.n, tile)
            if self.groups is None:
                raise UserError(f"{spec.where}: group size {spec.group_size} has too small a power-of-two part "
                                f"for the rotate_quantize kernel")
        self.v = spec.svd_l_v.to(**f32).contiguous() if spec.svd_l_v is not None else None
        self.local = Segments.of(int(spec.svd_l_v.shape[2]), spec.n, tile) if self.v is not None else None
        n_p = int(spec.svd_l_v.shape[0]) if spec.svd_l_v is not None else 0
        self.l_vec = l_vec if l_vec is not None else (self.interpreted or self.bm * next_pow2(n_p) * tile <= 8192)
        self._dummy = torch.empty(1, **f32)

    def constants(self, bits: int | None, store_z: bool, device_type: str) -> dict:
        """The kernel's compile-time parameters (and launch warps on a GPU) for ``bits`` (None: rotate only)."""
        spec, lay, g, loc = self.spec, self.layout, self.groups, self.local
        fuse_l = loc is not None
        return dict(
            N=spec.n, T=lay.tile, BM=self.bm, KP=lay.kp, P=lay.p, F1=lay.f1, F2=lay.f2,
            HAS_SMOOTH=self.smooth is not None and self.torch_rotation is None,
            HAS_SIGNS=self.signs is not None, HAS_HK=lay.hk,
            BITS=bits or 0, QMAX=qmax(bits) if bits else 0, MINMAX=spec.clip == "minmax",
            GROUPED=g is not None, G=g.width if g else 1, G_SUB=g.sub if g else 1, G_C=g.combine if g else 1,
            G_NB=g.nb if g else 1, G_NS=g.slots if g else 1, N_GROUPS=g.count if g else 1,
            RANK=spec.rank, RP=max(16, next_pow2(spec.rank)), H_DOT=self.h_dot,
            L_P=self.v.shape[0] if fuse_l else 0, L_PP=next_pow2(self.v.shape[0]) if fuse_l else 1,
            L_Q=loc.count if fuse_l else 1,
            L_SUB=loc.sub if fuse_l else 1, L_C=loc.combine if fuse_l else 1, L_NB=loc.nb if fuse_l else 1,
            L_NS=loc.slots if fuse_l else 1, L_VEC=self.l_vec, STORE_Z=store_z,
            PREC=dot_precision(device_type) if self.interpreted else "tf32x3", ROT_SCALE=lay.scale, SPLIT=self.split,
            **({} if self.interpreted else {"num_warps": _warps(self.bm * lay.tile)}),
        )

    def _check_bits(self, bits: int | None) -> None:
        if bits is None:
            return
        check_bits(bits, "activation bits")
        if bits <= 4 and self.spec.n % 2:
            raise UserError(f"{self.spec.where}: {bits}-bit codes pack two per byte; {self.spec.n} channels is odd")

    def __call__(self, x: torch.Tensor, bits: int | None, *, store_z: bool = False) -> ActivationCodes:
        """Codes/scales at ``bits`` (None: rotate only) plus h, t (and z when asked) for x (..., n)."""
        spec = self.spec
        self._check_bits(bits)
        x2 = x.reshape(-1, spec.n)
        if self.torch_rotation is not None:
            x2 = self.torch_rotation.apply(x2.float() / self.smooth if self.smooth is not None else x2.float())
        x2 = x2.contiguous()
        m, dev = x2.shape[0], x2.device
        f32 = dict(device=dev, dtype=torch.float32)
        d = self._dummy
        codes = scales = None
        if bits is not None:
            packed = bits <= 4
            codes = torch.empty(m, spec.n // 2 if packed else spec.n, device=dev,
                                dtype=torch.uint8 if packed else torch.int8)
            scales = torch.empty(m, spec.n // spec.group_size if spec.group_size else 1, **f32)
        fuse_l = self.local is not None
        need_z = store_z or (self.v is not None and not fuse_l)
        z = torch.empty(m, spec.n, **f32) if need_z else None
        h = torch.empty(m, spec.rank, **f32) if self.b is not None else None
        t = torch.empty(m, self.v.shape[0], self.v.shape[1], **f32) if fuse_l else None
        step = optimal_clip(bits, "integer") / qmax(bits) if bits is not None else 0.0
        grid = (triton.cdiv(m, self.bm),)
        if m:
            _rotate_quantize_kernel[grid](
                x2, self.smooth if self.smooth is not None and self.torch_rotation is None else d,
                self.signs if self.signs is not None else d, self.factors.get("hk", d), self.factors.get("h1", d),
                self.factors.get("h2", d), self.b if self.b is not None else d, self.v if fuse_l else d,
                codes if codes is not None else d, scales if scales is not None else d,
                h if h is not None else d, t if t is not None else d, z if z is not None else d,
                m, float(torch.tensor(step, dtype=torch.float32)),
                **self.constants(bits, need_z, dev.type),
            )
        if self.v is not None and not fuse_l:
            t = svd_l_down(z, self.v).contiguous()  # torch fallback: block width with a small power-of-two part
        return ActivationCodes(codes, scales, bits, h, t, z if store_z else None)
