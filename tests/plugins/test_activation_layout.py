import pytest
import torch
from qdit4sr_export.plugins.activation_layout import Segments, factor_matrices, rotation_layout

from qdit4sr_export.quant.hadamard import Rotation


def _apply(layout, x: torch.Tensor) -> torch.Tensor:
    """What the kernel computes on a zero-padded (rows, T) tile: each factor contracts its axis of (KP, F1, F2)."""
    mats = {k: v.double() for k, v in factor_matrices(layout).items()}
    t = torch.nn.functional.pad(x, (0, layout.tile - layout.n)).reshape(-1, layout.kp, layout.f1, layout.f2)
    if "hk" in mats:
        t = torch.einsum("mkab,kl->mlab", t, mats["hk"])
    if "h1" in mats:
        t = torch.einsum("mkab,ac->mkcb", t, mats["h1"])
    if "h2" in mats:
        t = torch.einsum("mkab,bc->mkac", t, mats["h2"])
    t = t.reshape(-1, layout.tile)
    assert not t[:, layout.n:].any()  # padding stays zero
    return t[:, : layout.n]


@pytest.mark.parametrize("n,block,expect", [
    (1536, None, (12, 16, 128, 8, 16)), (6144, None, (12, 16, 512, 16, 32)), (128, None, (1, 1, 128, 8, 16)),
    (96, None, (12, 16, 8, 8, 1)), (12, None, (12, 16, 1, 1, 1)), (384, 64, (6, 8, 64, 64, 1)),
    (4096, None, (1, 1, 4096, 64, 64)),
])
def test_layout_factors_reproduce_the_rotation(n, block, expect):
    rot = Rotation(n, seed=3, block=block)
    lay = rotation_layout(n, rot)
    assert (lay.k, lay.kp, lay.p, lay.f1, lay.f2) == expect
    assert lay.tile == lay.kp * lay.p and lay.tile >= n
    mats = list(factor_matrices(lay).values())  # +-1 and 0, the scale folded into the last: what the GPU path reads
    assert all(set(m.sign().unique().tolist()) <= {-1.0, 0.0, 1.0} for m in mats)
    assert all(torch.equal(m.abs().unique(), torch.tensor([0.0, 1.0])[-len(m.abs().unique()):]) for m in mats[:-1])
    if mats:
        assert torch.allclose(mats[-1].abs().max(), torch.tensor(lay.scale))
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_apply(lay, x * rot.signs()), rot.apply(x), rtol=0, atol=1e-6)


def test_segments_of_non_power_of_two_widths():
    s = Segments.of(192, 1536, 2048)
    assert (s.sub, s.combine, s.nb, s.count, s.slots) == (64, 3, 32, 8, 8)
    s = Segments.of(128, 1536, 2048)
    assert (s.sub, s.combine, s.slots) == (128, 1, 16)
    assert Segments.of(3, 6144, 8192) is None  # one-hot of 8192 x 2048: too large to fuse
