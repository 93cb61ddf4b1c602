import pytest

from qdit4sr_export.engine.atomic import atomic_path
from qdit4sr_export.errors import UserError


def test_file_appears_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_error_removes_the_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out", folder=True) as tmp:
            (tmp / "part").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_target_needs_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(UserError, match="already exists"):
        with atomic_path(target, folder=True):
            pass
    with atomic_path(target, folder=True, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_missing_parent_is_named(tmp_path):
    with pytest.raises(UserError, match="output folder does not exist"):
        with atomic_path(tmp_path / "no" / "file"):
            pass


def test_outputs_get_the_modes_an_ordinary_write_gives(tmp_path):
    """mkstemp makes 0600 files: the renamed result must be as readable as a plain open() would make it."""
    import os

    plain = tmp_path / "plain"
    plain.write_text("x")
    os.mkdir(tmp_path / "plain_dir")
    with atomic_path(tmp_path / "report.json") as tmp:
        tmp.write_text("{}")
    with atomic_path(tmp_path / "folder", folder=True) as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert (tmp_path / "folder").stat().st_mode & 0o777 == (tmp_path / "plain_dir").stat().st_mode & 0o777


def test_leftovers_of_a_killed_writer_are_removed_and_only_those(tmp_path):
    from qdit4sr_export.engine.atomic import remove_leftovers

    target = tmp_path / "a[1].png"  # glob characters in the name are literal
    for name in (".a[1].png.tmp-x1", ".a[1].png.old-x2", ".b.png.tmp-x3", "a[1].png", ".a[1].pngtmp"):
        (tmp_path / name).write_text("x")
    assert remove_leftovers(target) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a[1].pngtmp", ".b.png.tmp-x3", "a[1].png"]
    assert remove_leftovers(tmp_path / "missing" / "x.png") == 0
