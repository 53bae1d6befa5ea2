"""User-facing errors: one line that names the problem and says how to fix it.

The CLI (and later the server) catches PromptlabError, prints its message and exits with status 2; running
out of memory is one line too (status 1). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
import re


class PromptlabError(Exception):
    """A mistake the user can fix; the message says how."""

    exit_code = 2


class DataError(PromptlabError):
    """A data file is missing, unreadable or malformed."""


class ConfigError(PromptlabError):
    """A flag or config value is out of range or inconsistent."""


class ModelError(PromptlabError):
    """A model or artifact cannot be loaded, or does not fit the backbone."""


class ApiError(PromptlabError):
    """An API model's server failed or refused (unreachable, rate-limited past the retries, 401, 404, malformed
    replies): like running out of memory, not a mistake in the input, so exit status 1; the message says what to
    check."""

    exit_code = 1


class DiskFullError(PromptlabError):
    """The disk (or the user's quota) filled up while writing: like running out of memory, not a mistake in the
    input, so exit status 1; what was written before stays as it was."""

    exit_code = 1

    @classmethod
    def writing(cls, what: str, e: BaseException) -> DiskFullError:
        text = str(e)
        quota = getattr(e, "errno", None) == errno.EDQUOT or "quota" in text or f"os error {errno.EDQUOT}" in text
        reason = "disk quota exceeded" if quota else "no space left on device"
        return cls(f"could not write {what}: the disk is full ({reason}); free some space (or write elsewhere with "
                   "--out) and rerun")


# ENOSPC and EDQUOT; safetensors raises SafetensorError (not an OSError) whose text carries "(os error 28)".
_NO_SPACE = re.compile(rf"os error (?:{errno.ENOSPC}|{errno.EDQUOT})\b|No space left on device|Disk quota exceeded")


def disk_full(e: BaseException) -> bool:
    """Whether `e` is a write that failed because the disk or the quota is full (or already says so)."""
    return isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or bool(_NO_SPACE.search(str(e)))


def unknown(kind: str, name: str, known: list[str]) -> PromptlabError:
    """`unknown method 'promt-tuning'; did you mean 'prompt-tuning'? (known: ...)`."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown {kind} '{name}'{hint} (known: {', '.join(sorted(known))})")


def first_line(e: BaseException) -> str:
    """An exception's first message line (its type's name when it has none): for one-line errors that quote it."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
