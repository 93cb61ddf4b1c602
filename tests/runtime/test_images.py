"""Image I/O: 8/16-bit, greyscale, palette, RGBA, JPEG; bad files give one-line errors; writes are atomic."""

import numpy as np
import png
import pytest
import torch
from PIL import Image
from qdit4sr_export.runtime import images
from qdit4sr_export.runtime.images import find_inputs, load_image, save_image

from qdit4sr_export.errors import UserError


def rgb_array(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P"])
def test_8bit_modes(tmp_path, mode):
    arr = rgb_array()
    img = Image.fromarray(arr).convert(mode)
    img.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.rgb.shape == (3, 6, 5) and loaded.info.bit_depth == 8 and loaded.info.size == (5, 6)
    assert (loaded.alpha is not None) == ("A" in mode) == loaded.info.has_alpha
    assert loaded.info.grey == (mode in ("L", "LA"))
    expect = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
    assert np.allclose(loaded.rgb.permute(1, 2, 0).numpy(), expect, atol=1e-6)


def test_16bit_png_round_trips_at_full_precision(tmp_path):
    arr = np.random.default_rng(1).integers(0, 65536, (4, 7, 3), dtype=np.uint16)
    png.from_array(arr.reshape(4, 21).tolist(), "RGB;16").save(str(tmp_path / "in.png"))
    loaded = load_image(tmp_path / "in.png")
    assert loaded.info.bit_depth == 16
    assert np.array_equal(np.round(loaded.rgb.permute(1, 2, 0).numpy() * 65535).astype(np.uint16), arr)
    save_image(tmp_path / "out.png", loaded.rgb, bit_depth=16)
    again = load_image(tmp_path / "out.png")
    assert again.info.bit_depth == 16 and torch.equal(again.rgb, loaded.rgb)
    grey = np.random.default_rng(2).integers(0, 65536, (3, 4), dtype=np.uint16)
    png.from_array(grey.tolist(), "L;16").save(str(tmp_path / "g.png"))
    g = load_image(tmp_path / "g.png")
    assert g.info.grey and g.info.bit_depth == 16 and torch.equal(g.rgb[0], g.rgb[2])


def test_jpeg_and_alpha_outputs(tmp_path):
    Image.fromarray(rgb_array()).save(tmp_path / "a.jpg", quality=90)
    loaded = load_image(tmp_path / "a.jpg")
    assert loaded.alpha is None and loaded.info.mode == "RGB"
    alpha = torch.rand(1, 6, 5)
    save_image(tmp_path / "o.png", loaded.rgb, alpha)
    assert Image.open(tmp_path / "o.png").mode == "RGBA"
    save_image(tmp_path / "o.jpg", loaded.rgb, alpha)  # JPEG has no alpha: dropped
    assert Image.open(tmp_path / "o.jpg").mode == "RGB"
    save_image(tmp_path / "g.png", loaded.rgb, grey=True)
    assert Image.open(tmp_path / "g.png").mode == "L"


def test_bad_files_give_one_line_errors(tmp_path, monkeypatch):
    (tmp_path / "text.png").write_text("hello")
    Image.fromarray(rgb_array(64, 64)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:200])
    Image.fromarray(rgb_array(64, 64)).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    for name in ("text.png", "cut.png", "cut.jpg", "missing.png"):
        with pytest.raises(UserError) as err:
            load_image(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(UserError, match="64x64 is outside"):
        load_image(tmp_path / "full.png")
    with pytest.raises(UserError, match="unsupported output format"):
        save_image(tmp_path / "x.gifx", torch.zeros(3, 2, 2))


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        save_image(tmp_path / "o.png", torch.zeros(3, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_find_inputs(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"x")
    assert [p.name for p in find_inputs([tmp_path / "d"])] == ["a.JPG", "b.png"]
    with pytest.raises(UserError, match="no such file or folder"):
        find_inputs([tmp_path / "nope"])


def test_bytes_load_as_the_file_does(tmp_path):
    png.from_array(np.random.default_rng(3).integers(0, 65536, (5, 12), dtype=np.uint16).tolist(),
                   "RGB;16").save(str(tmp_path / "deep.png"))
    Image.fromarray(rgb_array()).convert("LA").save(tmp_path / "la.png")
    for name in ("deep.png", "la.png"):
        a, b = load_image(tmp_path / name), load_image(f"s3://bucket/{name}", (tmp_path / name).read_bytes())
        assert a.info == b.info and torch.equal(a.rgb, b.rgb)
        assert (a.alpha is None) == (b.alpha is None) and (a.alpha is None or torch.equal(a.alpha, b.alpha))
    with pytest.raises(UserError, match=r"^s3://bucket/x.png: not a readable image \(no image format Pillow reads\)$"):
        load_image("s3://bucket/x.png", b"\x89PNG\r\n\x1a\n broken")


def test_output_formats_are_checked_by_suffix():
    from qdit4sr_export.runtime.images import check_output_format

    for name in ("a.png", "a.JPG", "a.tiff", "a.bmp"):
        assert check_output_format(name).name == name
    for name in ("a.txt", "a"):
        with pytest.raises(UserError, match="unsupported output format"):
            check_output_format(name)
