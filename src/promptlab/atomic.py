"""Directories that appear whole or not at all, and the lock that keeps two writers apart.

A directory is built under a hidden temporary name in the same parent and renamed into place when it is
complete (a rename within one file system is atomic), so a crash leaves a stray temporary, never a half-written
directory under the real name. Run directories (runs.py) and training checkpoints (checkpoints.py) are written
this way. A full disk while building one is one line (errors.DiskFullError) naming what could not be written.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, DiskFullError, disk_full


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


@contextmanager
def locked(lock: Path, what: str) -> Iterator[None]:
    """Hold an exclusive OS lock (flock) on the file `lock` for the block, or fail at once with one line saying
    another promptlab run is writing `what`. The kernel drops the lock when the process dies however it dies,
    so a crash never leaves it held; the file itself is removed on the way out. Parents made for it go too when
    nothing else landed in them (a failed run leaves nothing behind)."""
    made = [p for p in (lock.parent, *lock.parent.parents) if not p.exists()]
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ConfigError(f"another promptlab run is writing {what} (it holds '{lock}'); wait for it to "
                                  "finish or choose another --out") from None
            try:  # the run before us may have removed the file after we opened it: then lock the one there now
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # still holding the lock, so no one else can be between open and flock
            os.close(fd)
    finally:
        for p in made:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break
