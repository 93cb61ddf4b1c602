"""Atomic output: write under a temporary sibling name, then rename, so no half-written file is ever left."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from qdit4sr_export.errors import UserError


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists (pass overwrite=True / --force to replace it)")
    if not target.parent.is_dir():
        raise UserError(f"output folder does not exist: {target.parent}")


@contextlib.contextmanager
def atomic_path(target: str | Path, *, overwrite: bool = False, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    _check_target(target, overwrite)
    prefix = f".{target.name}.tmp-"
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, target: Path) -> None:
    # mkstemp/mkdtemp create 0600/0700; the result gets the modes an ordinary open() would give (0644/0755 under the
    # usual umask), so a report is as readable as the images beside it.
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~_umask())
    if tmp.is_dir() and target.exists():
        # os.replace cannot swap a folder over a non-empty one: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
