"""The plugins' JIT fallback binds a node's weights once: its launchers are cached per node and weight buffer, hold
views of those buffers (no copy), and compute what the ONNX Runtime reference ops compute. Run on CPU tensors
(Triton's interpreter); on a GPU the same functions get views of TensorRT's device buffers."""

import numpy as np
import torch
from qdit4sr_export.plugins import trt_bind
from qdit4sr_export.plugins.ort_reference import lowbit_gemm, rotate_quantize
from qdit4sr_export.plugins.trt_ops import LowbitGemmAttrs, RotateQuantizeAttrs

G = torch.Generator().manual_seed(0)
ONE = torch.zeros(1)


def test_gemm_launcher_is_bound_once_on_views_of_the_weights():
    a = LowbitGemmAttrs(k=64, n=32, abits=4, wbits=4, rank=4, bias=1)
    w = (torch.randint(0, 256, (64, 16), generator=G, dtype=torch.uint8), torch.rand(32, generator=G) * 0.01 + 1e-3,
         torch.randn(4, 32, generator=G) * 0.1, ONE, torch.randn(32, generator=G))
    first = trt_bind.lowbit_gemm_launcher(a, *w)
    size = trt_bind.cache_size()
    assert trt_bind.lowbit_gemm_launcher(a, *w) is first and trt_bind.cache_size() == size  # per call: a lookup
    for held, given in ((first.codes, w[0]), (first.scale, w[1]), (first.ga, w[2]), (first.bias, w[4])):
        assert held.data_ptr() == given.data_ptr()  # the launcher reads the engine's buffers, never a copy
    moved = (w[0].clone(), *w[1:])
    assert trt_bind.lowbit_gemm_launcher(a, *moved) is not first  # another buffer: another binding

    m = 16
    codes = torch.randint(0, 256, (m, 32), generator=G, dtype=torch.uint8)
    scales, h = torch.rand(m, 1, generator=G) + 0.1, torch.randn(m, 4, generator=G)
    act = trt_bind.activation_codes(a, codes, scales, ONE, h, ONE)
    got = first(act, torch.float32)
    inputs = (codes, scales, ONE, w[0], w[1], h, w[2], ONE, ONE, w[4])  # the node's input order
    want = lowbit_gemm(*(t.numpy() for t in inputs), **a.to_attributes())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)


def test_rotate_quantize_launcher_reads_the_stored_transposed_factor_in_place():
    a = RotateQuantizeAttrs(n=64, bits=4, rank=4, b_transposed=1)
    bt = torch.randn(4, 64, generator=G) / 8  # B^T, as the lowering stores it when the kernel reads B^T rows
    first = trt_bind.rotate_quantize_launcher(a, ONE, bt, ONE)
    assert trt_bind.rotate_quantize_launcher(a, ONE, bt, ONE) is first
    assert first.b.data_ptr() == bt.data_ptr() and not first.h_dot
    x = torch.randn(8, 64, generator=G)
    out = first(x, 4)
    want = rotate_quantize(x.numpy(), *(ONE.numpy(),) * 5, bt.numpy(), ONE.numpy(), **a.to_attributes())
    assert np.array_equal(out.codes.view(torch.uint8).numpy(), want[0])
    np.testing.assert_allclose(out.h.numpy(), want[2], rtol=1e-5, atol=1e-5)
