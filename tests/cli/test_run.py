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
    result = invoke(w8, photos(tmp_path / "in"), "-o", tmp_path / "out", "--report", tmp_path / "r.json", "--grid-steps", 3)
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
    assert invoke(folder, src, "-o", tmp_path / "torch.png", "--grid-steps", 2).exit_code == 0
    assert invoke(fp, src, "-o", tmp_path / "ort.png", "--grid-steps", 2).exit_code == 0
    a = np.asarray(Image.open(tmp_path / "torch.png"), dtype=np.int32)
    b = np.asarray(Image.open(tmp_path / "ort.png"), dtype=np.int32)
    assert np.abs(a - b).max() <= 1


def test_prepacked_backend_writes_what_the_default_writes(engine_sets, tmp_path):
    _, w8, _ = engine_sets
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src)
    for backend in ("ort", "ort-prepacked"):
        result = invoke(w8, src, "-o", tmp_path / f"{backend}.png", "--grid-steps", 2, "--backend", backend,
                        "--report", tmp_path / f"{backend}.json")
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / f"{backend}.json").read_text())["backend"] == backend
    a = np.asarray(Image.open(tmp_path / "ort.png"), dtype=np.int32)
    b = np.asarray(Image.open(tmp_path / "ort-prepacked.png"), dtype=np.int32)
    assert np.array_equal(a, b)  # the same integer arithmetic, prepacked or not (measured: identical)
    assert invoke(w8, src, "-o", tmp_path / "c.png", "--backend", "ort-prepacked", "--device", "cuda").exit_code != 0


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


def test_outputs_are_named_and_reported(engine_sets, tmp_path):
    _, w8, _ = engine_sets
    src = photos(tmp_path / "in")
    # several inputs need a folder: a file name is refused before anything runs
    result = invoke(w8, src / "rgb.png", src / "grey.png", "-o", tmp_path / "out.png")
    assert result.exit_code == 2 and "need an output folder" in result.output
    assert not (tmp_path / "out.png").exists()
    result = invoke(w8, src / "rgb.png", src / "broken.png", "-o", tmp_path / "o", "--grid-steps", 2,
                    "--report", tmp_path / "r.json")
    assert result.exit_code == 1
    assert f"wrote {tmp_path / 'o' / 'rgb.png'}" in result.output
    assert "\r" not in result.output and "images:" not in result.output  # no progress bars off a terminal
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "qdit4sr-export/run-report" and report["version"] == 1 and report["tool_version"]
    by_name = {r["input"].rsplit("/", 1)[-1]: r for r in report["images"]}
    assert by_name["rgb.png"]["output"] == str(tmp_path / "o" / "rgb.png")
    assert by_name["broken.png"]["output"] is None and by_name["broken.png"]["error"]


def test_damaged_weights_never_become_an_image(engine_sets, tmp_path):
    """In-place damage is caught by the default check; non-finite outputs are an error naming variant and step."""
    import shutil

    from helpers import overwrite_tensor
    from qdit4sr_export.runtime.engine_set import EngineSet

    _, w8, _ = engine_sets
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src)
    bad = tmp_path / "bad"
    shutil.copytree(w8, bad)
    raw = bytearray((bad / "weights.bin").read_bytes())
    for block in (1, 5, 9):  # a few 4 KB blocks overwritten, same size
        raw[block * 4096:(block + 1) * 4096] = bytes(4096)
    (bad / "weights.bin").write_bytes(bytes(raw))
    result = invoke(bad, src, "-o", tmp_path / "a.png")
    assert result.exit_code == 2 and "weights.bin is damaged" in result.output
    assert not (tmp_path / "a.png").exists()
    # a set whose weights are NaN (checksums re-recorded, as a broken build would write them)
    shutil.rmtree(bad)
    shutil.copytree(w8, bad)
    engine = EngineSet.load(bad)
    name = next(n for n in engine.weights.names() if ".wscale" in n)
    overwrite_tensor(bad, name, np.nan)
    result = invoke(bad, src, "-o", tmp_path / "b.png", "--grid-steps", 2)
    assert result.exit_code == 1
    assert "produced non-finite values at step" in result.output and "variant" in result.output
    assert not (tmp_path / "b.png").exists()


def test_w4a4_engine_set_runs(w4_engine_set, tmp_path):
    w4, _ = w4_engine_set
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(src)
    result = invoke(w4, src, "-o", tmp_path / "out.png", "--grid-steps", 3, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (96, 64)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["backend"] == "ort" and len(report["images"][0]["steps"]) == 3
