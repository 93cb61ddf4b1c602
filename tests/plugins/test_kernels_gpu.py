"""The kernels compiled for a CUDA GPU at dit4sr-medium widths (run with ``pytest -m gpu``; bench/gpu_all.sh)."""

import pytest
import torch
from kernel_cases import activation_spec, rel_err, tokens, weight_spec
from qdit4sr_export.plugins.gemm_configs import GemmTile
from qdit4sr_export.plugins.lowbit_gemm import LowbitGemm
from qdit4sr_export.plugins.lowbit_gemm_reference import integer_accumulators, lowbit_gemm_reference
from qdit4sr_export.plugins.packing import unpack_int4
from qdit4sr_export.plugins.rotate_quantize import RotateQuantize
from qdit4sr_export.plugins.rotate_quantize_reference import rotate_quantize_reference
from qdit4sr_export.plugins.triton_env import interpreting

from qdit4sr_export.quant.hsvd import select_block

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or interpreting(), reason="needs CUDA, compiled")]


def _moved(act):
    for key in ("codes", "scales", "h", "t", "z"):
        if getattr(act, key) is not None:
            setattr(act, key, getattr(act, key).cuda())
    return act


@pytest.mark.parametrize("n,out", [(1536, 1536), (6144, 1536), (1536, 6144)])
@pytest.mark.parametrize("fast_paths", [True, False])
def test_rotate_quantize_medium_widths(n, out, fast_paths):
    block = select_block(out, n, 8)
    spec = activation_spec(n, rank=32, block=block, out=out, smooth=True)
    x = tokens(1000, n)
    opts = {} if fast_paths else {"h_dot": False, "l_vec": False}
    got = RotateQuantize(spec, "cuda", **opts)(x.cuda(), 4, store_z=True)
    ref = rotate_quantize_reference(spec, x, 4, store_z=True)
    assert rel_err(got.z, ref.z) < 1e-5 and rel_err(got.scales, ref.scales) < 1e-5  # 3xTF32 dots
    assert rel_err(got.h, ref.h) < 1e-5 and rel_err(got.t, ref.t) < 1e-5
    diff = (unpack_int4(got.codes.cpu()).int() - unpack_int4(ref.codes).int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-4  # rounding ties only


def test_integer_accumulation_exact_at_6144():
    spec = activation_spec(6144)
    act = _moved(rotate_quantize_reference(spec, tokens(300, 6144), 4))
    act.scales = torch.ones_like(act.scales)
    w = weight_spec(6144, 1536, 4, bias=False, unit_scales=True)
    got = LowbitGemm(w, "cuda")(act).cpu()
    assert torch.equal(got, integer_accumulators(act, w)[0].cpu().float())


@pytest.mark.parametrize("abits,wbits,group", [(4, 4, None), (8, 8, None), (4, 4, 128), (6, 3, None)])
def test_lowbit_gemm_medium_bf16(abits, wbits, group):
    k, n = 1536, 6144
    block = select_block(n, k, 8)
    spec = activation_spec(k, group=group, rank=32, block=block, out=n)
    act = rotate_quantize_reference(spec, tokens(777, k), abits)
    w = weight_spec(k, n, wbits, group=group, rank=32, block=block)
    want = lowbit_gemm_reference(act, w)
    got = LowbitGemm(w, "cuda")(_moved(act), out_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and rel_err(got.float(), want) < 8e-3  # one bf16 rounding of the output
    assert rel_err(LowbitGemm(w, "cuda")(act).cpu(), want) < 1e-5  # the table's tile
    small = GemmTile(64, 128, 64, 32, 4, 2)  # another tile: masks, chunks and launch order still right
    assert rel_err(LowbitGemm(w, "cuda", tile=small)(act).cpu(), want) < 1e-5
