import pytest
import torch
from kernel_cases import activation_spec, rel_err, tokens
from qdit4sr_export.plugins.packing import unpack_int4
from qdit4sr_export.plugins.rotate_quantize import RotateQuantize
from qdit4sr_export.plugins.rotate_quantize_reference import rotate_quantize_reference

from qdit4sr_export.errors import UserError
from qdit4sr_export.quant.gaussian import fake_quantize_tokens

# (n, rotation, clip, group, smoothing, SVD-G rank, SVD-L block (s_o, s_i), out features)
CASES = [
    (96, "hadamard", "gaussian", None, False, 4, (16, 24), 48),     # K = 12 x 2^3: H_12 padded to 16, H_8 broadcast
    (192, "hadamard", "minmax", 64, True, 3, (8, 16), 32),          # K = 12 x 2^4, groups, smoothing
    (384, "hadamard", "gaussian", 192, False, 5, (24, 48), 48),     # 12 x 2^5, non-power-of-two groups and blocks
    (128, "hadamard", "gaussian", None, True, 0, None, 0),          # pure power of two (one H_128 dot)
    (256, "block64", "minmax", 32, False, 2, (32, 64), 64),         # block-diagonal Hadamard
    (160, "none", "gaussian", 40, True, 1, (10, 20), 20),           # no rotation, odd group sub-blocks
]


def _unpacked(codes, bits):
    return unpack_int4(codes) if bits <= 4 else codes


def _check(out, ref, spec, bits):
    assert rel_err(out.z, ref.z) < 1e-5
    assert rel_err(out.scales, ref.scales) < 1e-5
    got, want = _unpacked(out.codes, bits).cpu(), _unpacked(ref.codes, bits)
    # Codes are equal except where z / scale sits within float rounding of a rounding midpoint.
    g = spec.group_size or spec.n
    v = (ref.z.reshape(ref.z.shape[0], -1, g) / ref.scales[..., None]).reshape(ref.z.shape)
    near_tie = ((v - v.floor()) - 0.5).abs() < 1e-4
    diff = (got.int() - want.int()).abs()
    assert int(diff.max()) <= 1 and not bool(diff[~near_tie].any())
    assert float((diff > 0).float().mean()) < 1e-3
    if ref.h is not None:
        assert rel_err(out.h, ref.h) < 1e-5
    if ref.t is not None:
        assert rel_err(out.t, ref.t) < 1e-5


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}-{c[1]}-{c[2]}-g{c[3]}")
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_kernel_matches_reference(device, case, bits):
    n, rot, clip, group, smooth, rank, block, out = case
    spec = activation_spec(n, rotation=rot, clip=clip, group=group, smooth=smooth, rank=rank, block=block, out=out)
    x = tokens(70, n, seed=bits)  # 70 tokens: not a multiple of the token block
    got = RotateQuantize(spec, device)(x.to(device), bits, store_z=True)
    ref = rotate_quantize_reference(spec, x, bits, store_z=True)
    assert got.codes.dtype == (torch.uint8 if bits <= 4 else torch.int8)
    assert got.codes.shape == ((70, n // 2) if bits <= 4 else (70, n))
    _check(got, ref, spec, bits)


@pytest.mark.parametrize("bits", [2, 5, 6, 7])
def test_every_bit_width(device, bits):
    spec = activation_spec(192, group=None, rank=2)
    x = tokens(33, 192, seed=bits)
    _check(RotateQuantize(spec, device)(x.to(device), bits, store_z=True),
           rotate_quantize_reference(spec, x, bits, store_z=True), spec, bits)


def test_reference_is_the_simulation():
    """codes x scales of the reference are the simulation's fake-quantized activations, bit for bit."""
    spec = activation_spec(192, group=64, smooth=True)
    x = tokens(20, 192)
    ref = rotate_quantize_reference(spec, x, 4, store_z=True)
    deq = (unpack_int4(ref.codes).float().reshape(20, 3, 64) * ref.scales[..., None]).reshape(20, 192)
    assert torch.equal(deq, fake_quantize_tokens(ref.z, 4, group_size=64))


def test_zero_tokens_rotate_only_and_empty(device):
    spec = activation_spec(96, rank=3)
    x = torch.zeros(5, 96)
    out = RotateQuantize(spec, device)(x.to(device), 4)
    assert not out.codes.any() and torch.all(out.scales > 0) and torch.isfinite(out.scales).all()
    only = RotateQuantize(spec, device)(tokens(9, 96).to(device), None, store_z=True)
    assert only.codes is None and only.scales is None
    assert rel_err(only.z, rotate_quantize_reference(spec, tokens(9, 96), None, store_z=True).z) < 1e-5
    empty = RotateQuantize(spec, device)(torch.zeros(0, 96, device=device), 8)
    assert empty.codes.shape == (0, 96) and empty.h.shape == (0, 3)


def test_odd_width_cannot_pack(device):
    rq = RotateQuantize(activation_spec(45, rotation="none"), device)
    with pytest.raises(UserError, match="odd"):
        rq(torch.zeros(2, 45, device=device), 4)
    assert rq(torch.ones(2, 45, device=device), 5).codes.shape == (2, 45)


@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=["n384-g192", "n256-block64"])
def test_register_bounded_branch_paths(device, case):
    """The per-rank-column SVD-G reduction and the per-p SVD-L loop (the paths wide layers take on a GPU)."""
    n, rot, clip, group, smooth, rank, block, out = case
    spec = activation_spec(n, rotation=rot, clip=clip, group=group, smooth=smooth, rank=rank, block=block, out=out)
    x = tokens(40, n, seed=9)
    got = RotateQuantize(spec, device, h_dot=False, l_vec=False)(x.to(device), 4, store_z=True)
    _check(got, rotate_quantize_reference(spec, x, 4, store_z=True), spec, 4)


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[4]], ids=["n96", "n128", "n256-block64"])
def test_rotation_as_tf32_parts(device, case):
    """The GPU's rotation arithmetic: each factor dot as three tf32-exact parts of the tile times the +-1 factor."""
    n, rot, clip, group, smooth, rank, block, out = case
    spec = activation_spec(n, rotation=rot, clip=clip, group=group, smooth=smooth, rank=rank, block=block, out=out)
    x = tokens(40, n, seed=11)
    got = RotateQuantize(spec, device, split=3)(x.to(device), 4, store_z=True)
    _check(got, rotate_quantize_reference(spec, x, 4, store_z=True), spec, 4)


def test_svd_l_blocks_too_narrow_to_combine_fall_back_to_torch(device):
    """s_i = 3: a one-hot combination of 2^0-wide sub-blocks would not fit; z is written and torch sums blocks."""
    spec = activation_spec(384, rank=0, block=(8, 3), out=16)
    rq = RotateQuantize(spec, device)
    assert rq.local is None
    x = tokens(20, 384)
    _check(rq(x.to(device), 6, store_z=True), rotate_quantize_reference(spec, x, 6, store_z=True), spec, 6)


def test_outlier_block_rotation_runs_in_torch_then_the_kernel_quantizes(device):
    """LRQ-DiT's learned block rotation is not a Kronecker Hadamard: torch applies it (after smoothing)."""
    from qdit4sr_export.plugins.activation_spec import ActivationSpec

    from qdit4sr_export.quant.outlier_rotation import outlier_rotation

    act_max = tokens(64, 128).abs().amax(0)
    rot = outlier_rotation(act_max, block=32, greedy_steps=4, seed=0)
    base = activation_spec(128, smooth=True, rank=3, group=64)
    spec = ActivationSpec(128, rot, "gaussian", 64, base.smooth, base.svd_g_b)
    rq = RotateQuantize(spec, device)
    assert rq.torch_rotation is rot and rq.layout.tile == 128
    x = tokens(30, 128, seed=4)
    _check(rq(x.to(device), 4, store_z=True), rotate_quantize_reference(spec, x, 4, store_z=True), spec, 4)
