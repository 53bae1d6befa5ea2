"""Directories that appear whole or not at all.

A directory is built under a hidden temporary name in the same parent and renamed into place when it is
complete (a rename within one file system is atomic), so a crash leaves a stray temporary, never a half-written
directory under the real name. Run directories (runs.py) and training checkpoints (checkpoints.py) are written
this way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_sibling(out: Path) -> Path:
    """A hidden directory beside `out`, with the permissions a plain mkdir would give (mkdtemp uses 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def temp_siblings(out: Path) -> Iterator[Path]:
    """The temporaries `temp_sibling(out)` made that are still there (a killed process leaves them)."""
    return out.parent.glob(f".{out.name}.tmp-*")


@contextmanager
def replacing(dest: Path, tmp: Path) -> Iterator[Path]:
    """Fill `tmp` (an empty directory beside `dest`) inside the block; when the block ends, `tmp` replaces `dest`
    whole (a directory already there is removed first). When the block fails, `tmp` is removed and `dest` is left
    as it was."""
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
