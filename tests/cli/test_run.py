"""``qdit4sr-export run``: engine sets and checkpoints, folders of mixed images, report, errors."""

import json

import numpy as np
import png
from click.testing import CliRunner
from PIL import Image

from qdit4sr_export.cli import main


def invoke(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def photos(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (12, 20), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    png.from_array(rng.integers(0, 65536, (16, 48), dtype=np.uint16).tolist(), "RGB;16").save(str(folder / "deep.png"))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return folder


def test_folder_of_mixed_images_with_report(engine_sets, tmp_path):
    _, w8, _ = engine_sets
    result = invoke(w8, photos(tmp_path / "in"), "-o", tmp_path / "out", "--report", tmp_path / "r.json", "--steps", 3)
    assert result.exit_code == 1  # the broken file fails, the others run
    assert "broken.png" in result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "deep.png", "grey.png", "photo.jpg", "rgb.png"]
    assert Image.open(out / "rgb.png").size == (64, 64) and Image.open(out / "grey.png").mode == "L"
    assert Image.open(out / "grey.png").size == (80, 48)  # non-square: 4x exactly
    assert Image.open(out / "alpha.png").mode == "RGBA"
    assert png.Reader(filename=str(out / "deep.png")).read()[3]["bitdepth"] == 16
    report = json.loads((tmp_path / "r.json").read_text())
    done = [r for r in report["images"] if "error" not in r]
    assert len(done) == 5 and all(len(r["steps"]) == 3 for r in done)
    assert all(s["variant"] is not None and s["seconds"] > 0 for r in done for s in r["steps"])
    assert report["variant_lookup"].startswith("by timestep value")


def test_checkpoint_runs_the_fp_model_and_matches_the_fp_engine(pipeline_folder, engine_sets, tmp_path):
    _, folder = pipeline_folder
    fp, _, _ = engine_sets
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src)
    assert invoke(folder, src, "-o", tmp_path / "torch.png", "--steps", 2).exit_code == 0
    assert invoke(fp, src, "-o", tmp_path / "ort.png", "--steps", 2).exit_code == 0
    a = np.asarray(Image.open(tmp_path / "torch.png"), dtype=np.int32)
    b = np.asarray(Image.open(tmp_path / "ort.png"), dtype=np.int32)
    assert np.abs(a - b).max() <= 1


def test_bad_options(engine_sets, pipeline_folder, tmp_path):
    _, w8, _ = engine_sets
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    cases = [((w8, src, "-o", tmp_path / "o.png", "--backend", "torch"), "needs a checkpoint"),
             ((pipeline_folder[1], src, "-o", tmp_path / "o.png", "--backend", "ort"), "needs an engine set"),
             ((w8, tmp_path / "nope.png", "-o", tmp_path / "o.png"), "no such file or folder"),
             ((w8, src, "-o", tmp_path / "o.png", "--tile", 16, "--overlap", 16), "--overlap 16 must be smaller"),
             ((w8, src, "-o", tmp_path / "o.xyz"), "unsupported output format")]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "o.png").exists()
