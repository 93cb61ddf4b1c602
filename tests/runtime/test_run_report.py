"""The run report: whole after every write, summary, input order, --resume's verification."""

import json

import pytest
from qdit4sr_export.runtime import run_report
from qdit4sr_export.runtime.run_report import RunReport, verified_records

from qdit4sr_export.engine.checksum import sha256_file
from qdit4sr_export.errors import UserError

IDENTITY = {"engine_set_manifest_sha256": "ab", "backend": "ort", "device": "cpu", "options": {"seed": 0}}


def done(src, dst, **extra):
    return {"input": str(src), "output": str(dst), "status": "done", "sha256": sha256_file(dst), "seconds": 1.0,
            "worker": "host:1", **extra}


def test_report_is_rewritten_whole_as_images_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(run_report, "REWRITE_RATIO", 0)  # every add writes (spacing: the next test)
    path = tmp_path / "run.json"
    report = RunReport(path, {"identity": IDENTITY}, ["a", "b", "c"])
    report.write()
    first = json.loads(path.read_text())
    assert first["summary"] == {"inputs": 3, "done": 0, "failed": 0, "pending": 3, "skipped_verified": 0,
                                "complete": False}
    (tmp_path / "b.png").write_bytes(b"b")
    report.add(done("b", tmp_path / "b.png"))
    report.add({"input": "a", "output": None, "status": "failed", "error": "a: broken", "worker": "host:1"})
    now = json.loads(path.read_text())
    assert [r["input"] for r in now["images"]] == ["a", "b"]  # input order, not finishing order
    assert now["summary"]["done"] == 1 and now["summary"]["failed"] == 1 and now["summary"]["pending"] == 1
    assert now["schema"] == "qdit4sr-export/run-report" and now["version"] == 2 and now["identity"] == IDENTITY
    report.add({"input": "a", "output": None, "status": "failed", "error": "again", "worker": "host:2"})
    assert report.records["a"]["error"] == "a: broken"  # an input is recorded once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "run.json"]  # no temporaries left


def test_rewrites_are_spaced_by_their_cost(tmp_path, monkeypatch):
    clock = iter([0.0, 1.0,  # write: 1 s
                  5.0,  # add at 5 s: < 20 x 1 s since the last write, so no write
                  21.0, 21.2, 21.5])  # add at 21 s: due, written
    monkeypatch.setattr(run_report, "_clock", lambda: next(clock))
    report = RunReport(tmp_path / "run.json", {}, ["a", "b"])
    report.write()
    report.add({"input": "a", "output": None, "status": "failed", "error": "x", "worker": "w"})
    assert json.loads((tmp_path / "run.json").read_text())["images"] == []
    report.add({"input": "b", "output": None, "status": "failed", "error": "y", "worker": "w"})
    assert len(json.loads((tmp_path / "run.json").read_text())["images"]) == 2


def test_resume_keeps_only_verified_outputs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    jobs = [(tmp_path / f"{n}.png", out / f"{n}.png") for n in "abcde"]
    for _, dst in jobs:
        dst.write_bytes(dst.name.encode())
    records = [done(src, dst) for src, dst in jobs[:4]]
    records[3]["status"] = "failed"  # d failed earlier: runs again
    report = RunReport(tmp_path / "run.json", {"identity": IDENTITY}, [str(s) for s, _ in jobs])
    for r in records:
        report.add(r)
    report.write()
    jobs[1][1].write_bytes(b"changed")  # b's output no longer what was recorded
    jobs[2][1].unlink()  # c's output is gone
    carried = verified_records(tmp_path / "run.json", IDENTITY, jobs)
    assert list(carried) == [str(jobs[0][0])]
    # the same files spelled relative to another working folder still match (paths compare resolved)
    monkeypatch.chdir(tmp_path)
    relative = [(s.relative_to(tmp_path), d.relative_to(tmp_path)) for s, d in jobs]
    carried = verified_records(tmp_path / "run.json", IDENTITY, relative)
    assert list(carried) == ["a.png"] and carried["a.png"]["output"] == "out/a.png"
    assert carried["a.png"]["sha256"] == records[0]["sha256"] and carried["a.png"]["worker"] == "host:1"


def test_resume_refuses_another_identity_or_file(tmp_path):
    report = RunReport(tmp_path / "run.json", {"identity": IDENTITY}, [])
    report.write()
    other = {**IDENTITY, "options": {"seed": 1}}
    with pytest.raises(UserError, match=r"other settings \(options.seed 0 there, 1 now\); give the same ones, or "
                                        "--force"):
        verified_records(tmp_path / "run.json", other, [])
    (tmp_path / "x.json").write_text(json.dumps({"schema": "something/else"}))
    with pytest.raises(UserError, match="is not a run report"):
        verified_records(tmp_path / "x.json", IDENTITY, [])
