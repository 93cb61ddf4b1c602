"""The batch collector: records into the report, a line per image, a bar in images/s; unique output names."""

from pathlib import Path

import pytest
from qdit4sr_export.runtime.batch import check_unique_outputs, collect
from qdit4sr_export.runtime.run_report import RunReport

from qdit4sr_export.errors import UserError


def test_collect_records_says_each_image_and_shows_images_per_second(monkeypatch, capsys):
    monkeypatch.setenv("QDIT4SR_PROGRESS", "1")  # the bar off a terminal too
    records = [{"input": "a.png", "output": "out/a.png", "status": "done", "worker": "w"},
               {"input": "b.png", "output": None, "status": "failed", "error": "b.png: broken", "worker": "w"}]
    report = RunReport(None, {}, ["a.png", "b.png", "c.png"])
    assert collect(iter(records), report, total=2) == 1
    out, err = capsys.readouterr()
    assert "wrote out/a.png" in out and "error: b.png: broken" in err and "broken" not in out
    assert "images: 100%" in err and "img/s" in err
    assert report.summary() == {"inputs": 3, "done": 1, "failed": 1, "pending": 1, "skipped_verified": 0,
                                "complete": False}


def test_two_inputs_may_not_write_one_output():
    check_unique_outputs([(Path("a/x.png"), Path("o/x.png")), (Path("a/y.png"), Path("o/y.png"))])
    with pytest.raises(UserError, match="a/x.png and b/x.png would both write o/x.png"):
        check_unique_outputs([(Path("a/x.png"), Path("o/x.png")), (Path("b/x.png"), Path("o/x.png"))])
