"""The task registry: built-in specs in tasks/specs/*.yaml, or any user spec file by path.

Specs are read when asked for, not at import, so `import promptlab.tasks` stays cheap (no torch,
no datasets) and a broken user spec cannot stop the built-ins from listing.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import unknown
from .base import Example, Task, Template
from .spec import load_spec

__all__ = ["Example", "Task", "Template", "describe", "get_task", "task_names"]

SPECS = Path(__file__).resolve().parent / "specs"


def task_names() -> list[str]:
    """Registered task names: one per built-in spec file."""
    return sorted(p.stem for p in SPECS.glob("*.yaml"))


def get_task(name_or_path: str) -> Task:
    """A fresh Task for a registered name (case-insensitive) or a path to a YAML spec.

    Fresh each call, because callers adjust a Task (e.g. max_new_tokens from a flag).
    """
    names = task_names()
    if name_or_path.lower() in names:
        return load_spec(SPECS / f"{name_or_path.lower()}.yaml", expect_name=name_or_path.lower())
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_spec(path)
    raise unknown("task", name_or_path, names)


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered task, for `promptlab tasks`."""
    return [(name, get_task(name).description) for name in task_names()]
