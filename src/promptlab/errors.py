"""User-facing errors: one line that names the problem and says how to fix it.

The CLI (and later the server) catches PromptlabError, prints its message and exits with status 2; running
out of memory is one line too (status 1). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib


class PromptlabError(Exception):
    """A mistake the user can fix; the message says how."""

    exit_code = 2


class DataError(PromptlabError):
    """A data file is missing, unreadable or malformed."""


class ConfigError(PromptlabError):
    """A flag or config value is out of range or inconsistent."""


class ModelError(PromptlabError):
    """A model or artifact cannot be loaded, or does not fit the backbone."""


def unknown(kind: str, name: str, known: list[str]) -> PromptlabError:
    """`unknown method 'promt-tuning'; did you mean 'prompt-tuning'? (known: ...)`."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown {kind} '{name}'{hint} (known: {', '.join(sorted(known))})")


def first_line(e: BaseException) -> str:
    """An exception's first message line (its type's name when it has none): for one-line errors that quote it."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
