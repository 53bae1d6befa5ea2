"""Directories that appear whole or not at all.

A directory is built under a hidden temporary name in the same parent and renamed into place when it is
complete (a rename within one file system is atomic), so a crash leaves a stray temporary, never a half-written
directory under the real name. Run directories (runs.py) and training checkpoints (checkpoints.py) are written
this way. A full disk while building one is one line (errors.DiskFullError) naming what could not be written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError, disk_full


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temp_sibling(out: Path) -> Path:
    """A hidden directory beside `out`, with the permissions a plain mkdir would give (mkdtemp uses 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def temp_siblings(out: Path) -> Iterator[Path]:
    """The temporaries `temp_sibling(out)` made that are still there (a killed process leaves them)."""
    return out.parent.glob(f".{out.name}.tmp-*")


def plain_modes(root: Path) -> None:
    """Every file under `root` gets the mode a plain open() gives (0666 less the umask): safetensors writes
    through a private temporary file and renames it, which leaves its files 0600 beside 0644 ones."""
    mode = 0o666 & ~_umask()
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.chmod(mode)


@contextmanager
def replacing(dest: Path, tmp: Path, what: str = "") -> Iterator[Path]:
    """Fill `tmp` (an empty directory beside `dest`) inside the block; when the block ends, `tmp` replaces `dest`
    whole (a directory already there is removed first). When the block fails, `tmp` is removed and `dest` is left
    as it was; a full disk becomes DiskFullError naming `what` (default: `dest`)."""
    try:
        yield tmp
        plain_modes(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(e) and not isinstance(e, DiskFullError):  # already named by a write inside
            raise DiskFullError.writing(what or f"'{dest}'", e) from None
        raise
