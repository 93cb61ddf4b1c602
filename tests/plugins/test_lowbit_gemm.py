import pytest
import torch
from kernel_cases import activation_spec, rel_err, tokens, weight_spec
from qdit4sr_export.plugins.gemm_configs import GemmTile
from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
from qdit4sr_export.plugins.lowbit_gemm_reference import integer_accumulators, lowbit_gemm_reference
from qdit4sr_export.plugins.rotate_quantize import RotateQuantize
from qdit4sr_export.plugins.rotate_quantize_reference import rotate_quantize_reference
from qdit4sr_export.plugins.weight_spec import WeightSpec

from qdit4sr_export.errors import UserError

M = 70  # not a multiple of the row tile


def _acts(spec, bits, device, m=M, seed=0):
    """Reference activations (codes, scales, h, t) on ``device``: the GEMM is tested on identical codes."""
    ref = rotate_quantize_reference(spec, tokens(m, spec.n, seed), bits, store_z=bits is None)
    for key in ("codes", "scales", "h", "t", "z"):
        if getattr(ref, key) is not None:
            setattr(ref, key, getattr(ref, key).to(device))
    return ref


# Every weight and activation width 2..8 appears on both sides; K = 12 x 2^m (96, 192, 384) and 192.
PAIRS = [(2, 8, 96), (3, 7, 192), (4, 6, 384), (5, 5, 96), (6, 4, 192), (7, 3, 96), (8, 2, 192), (4, 4, 192),
         (8, 8, 96), (3, 4, 128)]


@pytest.mark.parametrize("abits,wbits,k", PAIRS)
def test_integer_accumulation_is_exact(device, abits, wbits, k):
    """Unit scales and no float terms: the output is the int32 accumulator itself, bit for bit."""
    spec = activation_spec(k)
    act = _acts(spec, abits, device)
    w = weight_spec(k, 64, wbits, bias=False, unit_scales=True)
    act.scales = torch.ones_like(act.scales)
    got = LowbitGemm(w, device)(act).cpu()
    want = integer_accumulators(act, w)[0]
    assert want.abs().max() < 2 ** 24  # every accumulator is exact in float32
    assert torch.equal(got, want.float())


@pytest.mark.parametrize("group", [32, 48, 64])
def test_grouped_integer_accumulation_is_exact(device, group):
    spec = activation_spec(192, group=group)
    act = _acts(spec, 4, device)
    act.scales = torch.ones_like(act.scales)
    w = weight_spec(192, 32, 4, group=group, bias=False, unit_scales=True)
    got = LowbitGemm(w, device)(act).cpu()
    want = integer_accumulators(act, w).sum(0)
    assert torch.equal(got, want.float())


# (K, N, abits, wbits, group, SVD-G rank, SVD-L block (s_o, s_i))
FULL = [
    (192, 96, 4, 4, None, 8, (24, 48)),     # Q-DiT4SR W4A4 with both H-SVD branches
    (96, 48, 3, 5, None, 3, (16, 24)),
    (384, 64, 8, 8, None, 0, (32, 128)),    # W8A8, UINT8 weights
    (192, 50, 6, 7, None, 2, None),         # odd N (int8 weights)
    (192, 64, 4, 4, 64, 4, None),           # group-wise scales
    (384, 32, 5, 3, 192, 0, (16, 96)),      # non-power-of-two groups
    (128, 64, None, 4, None, 5, (16, 16)),  # float activations this step (integer weights)
    (96, 32, None, 8, 48, 0, None),
]


@pytest.mark.parametrize("case", FULL, ids=lambda c: f"k{c[0]}n{c[1]}-a{c[2]}w{c[3]}-g{c[4]}")
def test_float_epilogue_matches_reference(device, case):
    k, n, abits, wbits, group, rank, block = case
    spec = activation_spec(k, group=group, rank=rank, block=block, out=n)
    act = _acts(spec, abits, device)
    w = weight_spec(k, n, wbits, group=group, rank=rank, block=block)
    got = LowbitGemm(w, device)(act)
    assert got.shape == (M, n) and got.dtype == torch.float32
    assert rel_err(got, lowbit_gemm_reference(act, w)) < 1e-5


@pytest.mark.parametrize("bn,block", [(32, (64, 48)), (64, (24, 48)), (32, (48, 48))],
                         ids=["blocks-span-tiles", "tiles-span-blocks", "unaligned"])
def test_svd_l_epilogue_tiles_and_blocks(device, bn, block):
    """The SVD-L dot over a column tile's (p, q) pairs, whether a block spans tiles or a tile spans blocks."""
    n = 192
    spec = activation_spec(192, rank=3, block=block, out=n)
    act = _acts(spec, 4, device)
    w = weight_spec(192, n, 4, rank=3, block=block)
    got = LowbitGemm(w, device, tile=GemmTile(32, bn, 64, 16, 4, 1))(act)
    assert rel_err(got, lowbit_gemm_reference(act, w)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_outputs(device, dtype):
    spec = activation_spec(96, rank=2)
    act = _acts(spec, 4, device)
    w = weight_spec(96, 32, 4, rank=2)
    got = LowbitGemm(w, device)(act, out_dtype=dtype)
    assert got.dtype == dtype
    want = lowbit_gemm_reference(act, w, out_dtype=dtype)
    torch.testing.assert_close(got.cpu(), want)  # the same float32 result, rounded once to the half type


def test_fused_chain_on_kernel_codes(device):
    """rotate_quantize -> lowbit_gemm end to end against the references' chain."""
    spec = activation_spec(192, rank=4, block=(24, 48), out=96, smooth=True)
    w = weight_spec(192, 96, 4, rank=4, block=(24, 48))
    x = tokens(M, 192, seed=5)
    got = LowbitGemm(w, device)(RotateQuantize(spec, device)(x.to(device), 4))
    want = lowbit_gemm_reference(rotate_quantize_reference(spec, x, 4), w)
    assert rel_err(got, want) < 1e-5


def test_mismatched_groups_and_missing_branches_are_refused(device):
    act = _acts(activation_spec(96), 4, device)
    with pytest.raises(UserError, match="scale groups"):
        LowbitGemm(weight_spec(96, 32, 4, group=48), device)(act)
    with pytest.raises(UserError, match="SVD branches"):
        LowbitGemm(weight_spec(96, 32, 4, rank=2), device)(act)
    codes = torch.zeros(96, 16, dtype=torch.uint8)
    with pytest.raises(UserError, match="layer 'x'.*33 output channels is odd"):
        WeightSpec(codes, torch.ones(33), 4, 96, 33, name="x")


def test_empty_batch(device):
    act = _acts(activation_spec(96), 8, device, m=0)
    assert LowbitGemm(weight_spec(96, 32, 8), device)(act).shape == (0, 32)
