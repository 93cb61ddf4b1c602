"""Batch super-resolution on a real local Ray cluster: the same bytes, names, hashes and report as a local run; a
killed worker and a corrupt image lose nothing; --resume across local and Ray runs; inputs as a Ray dataset of
bytes. Slow (a cluster and its actors start): CI runs them with ``pytest -m slow``."""

import json
import os
import signal

import numpy as np
import png
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from qdit4sr_export.runtime.image_job import ImageSettings, super_resolve_image
from qdit4sr_export.runtime.pipeline import PipelineOptions

from qdit4sr_export.cli import main
from qdit4sr_export.errors import UserError

pytestmark = pytest.mark.slow


def photos(folder, count=4):
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    Image.fromarray(rng.integers(0, 256, (12, 16, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    png.from_array(rng.integers(0, 65536, (16, 16), dtype=np.uint16).tolist(), "L;16").save(str(folder / "deep.png"))
    (folder / "corrupt.png").write_bytes((folder / "p0.png").read_bytes()[:60])  # a truncated PNG
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(folder / "speck.png")  # below the model's smallest input
    return folder


def pngs(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix == ".png"}


@pytest.fixture
def one_thread():
    """--threads 1 in this process sets torch's threads; give them back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def test_ray_run_writes_what_a_local_run_writes_and_resumes_it(ray_cluster, engine_sets, tmp_path, one_thread):
    _, w8, _ = engine_sets
    src = photos(tmp_path / "in")
    common = ("--grid-steps", 3, "--threads", 1, "--seed", 5)
    local = run(w8, src, "-o", tmp_path / "local", *common)
    remote = run(w8, src, "-o", tmp_path / "ray", *common, "--ray", "--workers", 2)
    assert local.exit_code == remote.exit_code == 1, remote.output  # the corrupt and the tiny image fail
    assert pngs(tmp_path / "ray") == pngs(tmp_path / "local") and len(pngs(tmp_path / "local")) == 6
    a = json.loads((tmp_path / "local" / "run.json").read_text())
    b = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert a["identity"] == b["identity"] and a["summary"] == b["summary"]
    assert b["runner"]["workers"] == 2 and b["runner"]["ray"] and b["summary"]["failed"] == 2
    for x, y in zip(a["images"], b["images"]):
        assert x.keys() == y.keys() and x["input"] == y["input"] and x["status"] == y["status"]
        assert x.get("sha256") == y.get("sha256") and x.get("error") == y.get("error")
        assert [s["variant"] for s in x.get("steps", [])] == [s["variant"] for s in y.get("steps", [])]
    errors = {r["input"].rsplit("/", 1)[-1]: r["error"] for r in b["images"] if r["status"] == "failed"}
    assert "not a readable image" in errors["corrupt.png"] and "too small" in errors["speck.png"]
    assert len({r["worker"] for r in b["images"]}) == 2
    # a local --resume picks up the Ray run's folder: verified outputs are skipped, the missing one redone
    (tmp_path / "ray" / "p2.png").unlink()
    resumed = run(w8, src, "-o", tmp_path / "ray", *common, "--resume")
    assert resumed.exit_code == 1 and "resume: 5 of 8 images done earlier" in resumed.stdout
    assert resumed.stdout.count("wrote ") == 1
    assert pngs(tmp_path / "ray") == pngs(tmp_path / "local")


def reference(w8, jobs, options):
    """Each job's output bytes from one local process with 1 thread (the per-image code run computes with)."""
    from qdit4sr_export.runtime.pipeline_loader import engine_set_pipeline, resolve_backend

    pipe, _ = engine_set_pipeline(w8, resolve_backend(None, True, None)[0], "cpu", 1)
    out = {}
    for src, dst in jobs:
        record = super_resolve_image(pipe, src, dst, ImageSettings(options))
        out[src.name] = dst.read_bytes() if record["status"] == "done" else record["error"]
    return out


def test_a_killed_worker_and_a_corrupt_image_lose_nothing(ray_cluster, engine_sets, tmp_path, one_thread):
    from qdit4sr_export.runtime.distributed import records, super_resolve

    _, w8, _ = engine_sets
    src = photos(tmp_path / "in", count=6)
    inputs = sorted(src.iterdir())
    options = PipelineOptions(steps=4, seed=2)
    dataset = super_resolve(inputs, w8, tmp_path / "out", options=options, threads=1, workers=2,
                            ship_engine_set=True)
    seen, killed = [], None
    for record in records(dataset, [str(p) for p in inputs]):
        seen.append(record)
        if killed is None and record["status"] == "done":  # that worker has more images queued: kill it mid-image
            killed = int(record["worker"].rsplit(":", 1)[1])
            os.kill(killed, signal.SIGKILL)
    assert sorted(r["input"] for r in seen) == sorted(map(str, inputs))  # every input exactly once
    by_name = {r["input"].rsplit("/", 1)[-1]: r for r in seen}
    assert {n for n, r in by_name.items() if r["status"] == "failed"} == {"corrupt.png", "speck.png"}
    assert any(not r["worker"].endswith(f":{killed}") for r in seen[1:])  # others finished what it had
    # what the workers wrote is what one local process writes, and nothing else is in the folder
    want = reference(w8, [(p, tmp_path / "ref" / p.name) for p in inputs], options)
    got = pngs(tmp_path / "out")
    assert got == {n: v for n, v in want.items() if isinstance(v, bytes)}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(got)
    assert by_name["corrupt.png"]["error"] == want["corrupt.png"]  # the same one-line reason
    # shipped through the object store: unpacked once on this node, under the manifest's hash
    unpacked = list(ray_cluster.glob("*/*/manifest.json"))
    assert len(unpacked) == 1 and unpacked[0].read_bytes() == (w8 / "manifest.json").read_bytes()


def test_a_dataset_of_bytes_from_any_filesystem(ray_cluster, engine_sets, tmp_path, one_thread):
    import ray

    from qdit4sr_export.runtime.distributed import super_resolve

    _, w8, _ = engine_sets
    src = photos(tmp_path / "in", count=1)
    files = [src / "p0.png", src / "deep.png", src / "corrupt.png"]
    with pytest.raises(UserError, match=r"a worker needs 3 CPU\(s\) and 0 GPU\(s\); the Ray cluster has 2 CPU"):
        super_resolve(files, w8, tmp_path / "out", threads=3, workers=1)  # it would wait forever for a worker
    dataset = ray.data.read_binary_files([str(p) for p in files], include_paths=True)
    options = PipelineOptions(steps=2)
    rows = super_resolve(dataset, w8, tmp_path / "out", options=options, threads=1, workers=1).take_all()
    status = {r["input"].rsplit("/", 1)[-1]: r["status"] for r in rows}
    assert status == {"p0.png": "done", "deep.png": "done", "corrupt.png": "failed"}
    want = reference(w8, [(p, tmp_path / "ref" / p.name) for p in files[:2]], options)
    assert pngs(tmp_path / "out") == want
    assert all(json.loads(r["record"])["sha256"] == r["sha256"] for r in rows if r["status"] == "done")
