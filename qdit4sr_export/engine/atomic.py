"""Atomic output: write under a temporary sibling name, then rename, so no half-written file is ever left.

A process killed (SIGKILL, power loss) between the two leaves its temporary (``.NAME.tmp-XXXX``) behind, never a
half-written NAME; :func:`remove_leftovers` clears those of a target when the work is taken up again."""

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
    prefix = _temporary_prefixes(target)[0]
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


def _temporary_prefixes(target: Path) -> tuple[str, str]:
    return f".{target.name}.tmp-", f".{target.name}.old-"


def remove_leftovers(target: str | Path) -> int:
    """Remove the temporaries a killed writer of ``target`` left beside it; returns how many there were."""
    import glob

    target = Path(target)
    if not target.parent.is_dir():
        return 0
    found = [p for prefix in _temporary_prefixes(target)
             for p in target.parent.glob(glob.escape(prefix) + "*")]
    for path in found:
        _remove(path)
    return len(found)


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
        old = Path(tempfile.mkdtemp(prefix=_temporary_prefixes(target)[1], dir=target.parent))
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
