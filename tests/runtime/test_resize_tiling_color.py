"""Resize rules, tiling with Gaussian blending, colour fixes."""

import pytest
import torch
from qdit4sr_export.runtime.color_fix import adain, apply_color_fix, is_grey, keep_grey, wavelet, wavelet_split
from qdit4sr_export.runtime.resize import plan_resize, to_output_size, upscale_lr
from qdit4sr_export.runtime.tiling import blend, needs_tiling, plan_tiles, tile_starts

from qdit4sr_export.errors import UserError


def test_resize_rule():
    p = plan_resize(50, 100, min_side=128)
    assert p.pre_scale == pytest.approx(128 / 50) and p.model_size == (512, 1024) and p.output_size == (200, 400)
    q = plan_resize(300, 200, min_side=128)
    assert q.pre_scale == 1.0 and q.model_size == (1200, 800) and q.output_size == (1200, 800)
    img = torch.rand(3, 10, 12)
    up = upscale_lr(img, plan_resize(12, 10, min_side=4))
    assert up.shape == (3, 40, 48) and 0 <= float(up.min()) and float(up.max()) <= 1
    assert to_output_size(up[:, :32, :40], plan_resize(12, 10, min_side=4)).shape == (3, 40, 48)


def test_tile_starts_cover_with_overlap():
    for length, tile, overlap in ((100, 32, 8), (64, 64, 8), (33, 32, 16), (200, 64, 24)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, length) == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_blend_of_an_elementwise_function_is_exact():
    """Blending is a weighted average of tile results: for a per-pixel function it equals the untiled result."""
    x = torch.randn(1, 4, 40, 72)
    plan = plan_tiles(40, 72, 32, 8)
    assert all(h == w == 32 for _, _, h, w in plan.boxes) and needs_tiling(40, 72, 64)
    out = blend(lambda t, box: torch.tanh(t) * 3, x, plan)
    assert torch.allclose(out, torch.tanh(x) * 3, atol=1e-6)
    with pytest.raises(UserError, match="overlap"):
        plan_tiles(40, 72, 32, 32)
    with pytest.raises(UserError, match="--tile"):
        plan_tiles(40, 72, 7, 2)


def test_color_fixes():
    ref = torch.rand(2, 3, 32, 32)
    img = ref * 0.5 + 0.3 + 0.05 * torch.randn(2, 3, 32, 32)
    fixed = adain(img, ref)
    assert torch.allclose(fixed.mean((2, 3)), ref.mean((2, 3)), atol=1e-5)
    assert torch.allclose(fixed.std((2, 3)), ref.std((2, 3)), atol=1e-4)
    high, low = wavelet_split(img)
    assert torch.allclose(high + low, img, atol=1e-5)
    w = wavelet(img, ref)
    assert torch.allclose(wavelet_split(w)[1], wavelet_split(ref)[1], atol=0.05)  # low band comes from ref
    assert torch.equal(apply_color_fix("none", img, ref), img)
    with pytest.raises(UserError, match="--color-fix"):
        apply_color_fix("sepia", img, ref)


def test_keep_grey_averages_channels_only_for_grey_sources():
    g = torch.Generator().manual_seed(0)
    grey_src = torch.rand(1, 8, 8, generator=g).expand(3, -1, -1)
    colour_src = grey_src.clone()
    colour_src[2, 0, 0] += 1 / 255
    out = torch.rand(3, 32, 32, generator=g)
    assert is_grey(grey_src) and not is_grey(colour_src)
    kept = keep_grey(out, grey_src)
    assert torch.equal(kept[0], kept[2]) and torch.allclose(kept[0], out.mean(0))
    assert keep_grey(out, colour_src) is out


def test_smallest_input_follows_the_resize_rule():
    from qdit4sr_export.runtime.resize import check_input_size, min_input_side

    assert min_input_side(upscale=4, min_side=128) == 32  # DiT4SR: 128 / 4
    assert min_input_side(upscale=4, min_side=32) == 8  # the example model
    assert min_input_side(upscale=4, min_side=18) == 5  # rounded up: 4 px would be stretched 4.5x
    check_input_size(32, 500, upscale=4, min_side=128)
    with pytest.raises(UserError, match=r"31x500 is too small: .* at least 32 pixels on the short side .* to 128"):
        check_input_size(31, 500, upscale=4, min_side=128)
    with pytest.raises(UserError, match="1x1 is too small"):
        check_input_size(1, 1, upscale=4, min_side=16)
