"""``qdit4sr-export run``: engine sets and checkpoints, folders of mixed images, report, errors."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import png
import pytest
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
    assert report["schema"] == "qdit4sr-export/run-report" and report["version"] == 2 and report["tool_version"]
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


def small_photos(folder, count, side=16, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".png"}


def test_existing_outputs_need_force_or_resume(engine_sets, tmp_path):
    fp, _, _ = engine_sets
    src = small_photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert invoke(fp, src, "-o", out, "--grid-steps", 2).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "run.json"]  # the default report
    report = json.loads((out / "run.json").read_text())
    assert report["summary"] == {"inputs": 2, "done": 2, "failed": 0, "pending": 0, "skipped_verified": 0,
                                 "complete": True}
    first = contents(out)
    result = invoke(fp, src, "-o", out, "--grid-steps", 2)
    assert result.exit_code == 2 and "p0.png already exists (and 2 more); pass --force" in result.stderr
    result = invoke(fp, src / "p0.png", "-o", out / "p0.png")
    assert result.exit_code == 2 and "already exists" in result.stderr
    result = invoke(fp, src, "-o", out, "--force", "--resume")
    assert result.exit_code == 2 and "give one" in result.stderr
    assert contents(out) == first
    result = invoke(fp, src, "-o", out, "--grid-steps", 2, "--force")
    assert result.exit_code == 0, result.output
    assert contents(out) == first  # the same seed writes the same bytes


def test_outputs_are_checked_before_any_compute(engine_sets, tmp_path, monkeypatch):
    from qdit4sr_export.runtime import pipeline_loader

    def computed(*args, **kwargs):
        raise AssertionError("the pipeline was opened")

    monkeypatch.setattr(pipeline_loader, "engine_set_pipeline", computed)
    fp, _, _ = engine_sets
    src = small_photos(tmp_path / "in", 1)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / folder / "x.png")
    cases = [((src / "p0.png", "-o", tmp_path / "x.txt"), "x.txt: unsupported output format .txt"),
             ((src / "p0.png", "-o", tmp_path / "x"), "x: unsupported output format (no suffix)"),
             ((src / "p0.png", "-o", tmp_path / "no" / "x.png"), f"folder {tmp_path / 'no'} does not exist"),
             ((src, "-o", tmp_path / "no" / "out"), f"folder {tmp_path / 'no'} does not exist"),
             ((tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-o", tmp_path / "o"), "would both write")]
    for args, message in cases:
        result = invoke(fp, *args)
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "in"]


def test_a_too_small_input_is_a_per_file_error(engine_sets, tmp_path):
    fp, _, _ = engine_sets
    src = small_photos(tmp_path / "in", 1)
    Image.fromarray(np.zeros((3, 2, 3), np.uint8)).save(src / "speck.png")  # the tiny pipeline takes >= 4 px
    result = invoke(fp, src, "-o", tmp_path / "out", "--grid-steps", 2)
    assert result.exit_code == 1
    assert (f"error: {src / 'speck.png'}: 2x3 is too small: this model takes inputs of at least 4 pixels on the "
            "short side (its resize rule scales the short side to 16") in result.stderr
    assert "speck" not in result.stdout and f"wrote {tmp_path / 'out' / 'p0.png'}" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "run.json"]


def test_resume_skips_verified_outputs_and_redoes_the_rest(engine_sets, tmp_path):
    fp, _, _ = engine_sets
    src = small_photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    assert invoke(fp, src, "-o", out, "--grid-steps", 2, "--seed", 3).exit_code == 0
    first = contents(out)
    before = json.loads((out / "run.json").read_text())
    (out / "p1.png").write_bytes(b"not the recorded bytes")
    (out / "p2.png").unlink()
    (out / ".p3.png.tmp-abc").write_bytes(b"a killed writer's temporary")
    result = invoke(fp, src, "-o", out, "--grid-steps", 2, "--seed", 3, "--resume")
    assert result.exit_code == 0, result.output
    assert "resume: 2 of 4 images done earlier" in result.stdout
    assert result.stdout.count("wrote ") == 2 and "p1.png" in result.stdout and "p2.png" in result.stdout
    assert contents(out) == first  # redone byte for byte
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png", "p3.png", "run.json"]
    after = json.loads((out / "run.json").read_text())
    assert after["summary"]["skipped_verified"] == 2 and after["summary"]["done"] == 4
    kept = {r["input"]: r for r in before["images"]}
    for record in after["images"]:
        assert record["sha256"] == kept[record["input"]]["sha256"]
        if record["input"].endswith(("p0.png", "p3.png")):
            assert record == kept[record["input"]]  # carried over as recorded (its time and worker)
    result = invoke(fp, src, "-o", out, "--grid-steps", 2, "--seed", 4, "--resume")
    assert result.exit_code == 2 and "other settings (options.seed 3 there, 4 now)" in result.stderr


def test_ray_options_need_ray_and_an_engine_set(engine_sets, pipeline_folder, tmp_path, monkeypatch):
    import sys

    fp, _, _ = engine_sets
    src = small_photos(tmp_path / "in", 1)
    cases = [(("--workers", 2), "--workers is for runs on Ray: add --ray"),
             (("--ship-engine-set",), "--ship-engine-set is for runs on Ray: add --ray"),
             (("--ray", "--device", "cuda"), "--ray with --device cuda needs --gpus-per-worker")]
    for args, message in cases:
        result = invoke(fp, src, "-o", tmp_path / "o", *args)
        assert result.exit_code == 2 and message in result.stderr, result.output
    result = invoke(pipeline_folder[1], src, "-o", tmp_path / "o", "--ray")
    assert result.exit_code == 2 and "--ray runs engine sets" in result.stderr
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    result = invoke(fp, src, "-o", tmp_path / "o", "--ray")
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: --ray needs Ray Data, which is not installed: pip install 'qdit4sr-export[ray]'"]
    assert not (tmp_path / "o").exists()


def test_ctrl_c_leaves_whole_outputs_and_a_report_of_what_is_done(engine_sets, tmp_path, monkeypatch):
    fp, _, _ = engine_sets
    src = small_photos(tmp_path / "in", 4)
    assert invoke(fp, src, "-o", tmp_path / "ref", "--grid-steps", 2).exit_code == 0
    save, calls = Image.Image.save, []

    def interrupted_while_writing_the_third(self, target, *args, **kwargs):
        calls.append(target)
        save(self, target, *args, **kwargs)  # the temporary holds a whole image: Ctrl-C lands before the rename
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_while_writing_the_third)
    out = tmp_path / "out"
    result = invoke(fp, src, "-o", out, "--grid-steps", 2)
    assert result.exit_code == 130
    assert (f"interrupted: 2 of 4 images done, 0 failed; report: {out / 'run.json'}; outputs are whole; run again "
            "with --resume to finish") in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "run.json"]  # no temporary, no p2
    report = json.loads((out / "run.json").read_text())
    assert report["summary"]["done"] == 2 and report["summary"]["pending"] == 2 and not report["summary"]["complete"]
    assert {r["output"] for r in report["images"]} == {str(out / "p0.png"), str(out / "p1.png")}
    monkeypatch.undo()
    result = invoke(fp, src, "-o", out, "--grid-steps", 2, "--resume")
    assert result.exit_code == 0 and "resume: 2 of 4 images done earlier" in result.stdout
    assert contents(out) == contents(tmp_path / "ref")


def cli_process(*args):
    """``qdit4sr-export run ARGS`` in a new process, its output unbuffered (lines arrive as they are written), with
    SIGINT at its default as in a terminal (a test run started in the background inherits it ignored)."""
    return subprocess.Popen([sys.executable, "-m", "qdit4sr_export", "run", *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


SIGNAL_RUN = ("--grid-steps", 4, "--threads", 1)


@pytest.fixture(scope="module")
def clean_run(engine_sets, tmp_path_factory):
    """Eight photos and their outputs from one uninterrupted run (in a process of its own)."""
    fp, _, _ = engine_sets
    root = tmp_path_factory.mktemp("clean")
    src = small_photos(root / "in", 8)
    process = cli_process(fp, src, "-o", root / "out", *SIGNAL_RUN)
    assert process.wait() == 0, process.stderr.read()
    return src, contents(root / "out")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signal_or_a_kill_loses_nothing(engine_sets, clean_run, tmp_path, sig):
    """A real process stopped after its second image: whole files only, a report of what is done (a kill -9 may
    miss the last ones: their outputs are whole and redone), and --resume writes the same bytes as one clean run."""
    fp, _, _ = engine_sets
    src, clean = clean_run
    out = tmp_path / "out"
    process = cli_process(fp, src, "-o", out, *SIGNAL_RUN)
    wrote = 0
    for line in process.stdout:
        wrote += line.startswith("wrote ")
        if wrote == 2:
            process.send_signal(sig)
            break
    _, stderr = process.communicate()
    if sig == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130 and "images done" in stderr and "--resume" in stderr, stderr
    report = json.loads((out / "run.json").read_text())  # a whole JSON file
    finished = contents(out)
    assert 2 <= len(finished) < 8  # stopped mid-run
    assert all(data == clean[name] for name, data in finished.items())  # whole images, the clean run's bytes
    assert report["summary"]["done"] == len(report["images"]) <= len(finished)
    if sig != signal.SIGKILL:
        assert report["summary"]["done"] == len(finished) and not [p for p in out.iterdir() if p.name[0] == "."]
    resumed = cli_process(fp, src, "-o", out, *SIGNAL_RUN, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert contents(out) == clean
    assert sorted(p.name for p in out.iterdir()) == sorted(clean) + ["run.json"]  # a killed writer's temporary: gone
