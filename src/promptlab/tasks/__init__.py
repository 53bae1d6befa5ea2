"""The task registry: built-in specs in tasks/specs/*.yaml, or any user spec file by path.

Specs are read when asked for, not at import, so `import promptlab.tasks` stays cheap (no torch,
no datasets) and a broken user spec cannot stop the built-ins from listing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, unknown
from .base import Example, Task, Template
from .spec import load_spec

__all__ = ["Example", "Task", "Template", "artifact_task", "artifact_task_ref", "describe", "get_task", "task_names"]

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


def artifact_task_ref(meta: dict[str, Any]) -> str:
    """What get_task takes for an artifact's task: its registered name, or the path of the user's spec file it was
    made with (promptlab.json's `task_spec`), so eval/predict/serve --prompt need no --task SPEC again."""
    name, spec = meta["task"], meta.get("task_spec")
    if name.lower() in task_names() or not isinstance(spec, str):
        return name
    if not Path(spec).is_file():
        raise ConfigError(f"the prompt's task '{name}' is the spec file {spec}, which is no longer there; pass --task "
                          "with the spec's new path")
    return spec


def artifact_task(meta: dict[str, Any], task: Task | None = None) -> Task:
    """The task an artifact answers (`task`, else the one its promptlab.json names). A spec that reads its label
    names from the data (`labels_from`) takes them from the artifact's record, so no data is needed to use it."""
    task = task or get_task(artifact_task_ref(meta))
    if task.kind == "choices" and not task.labels and meta.get("labels"):
        task.use_labels(list(meta["labels"]), "the artifact's promptlab.json")
    return task


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) for every registered task, for `promptlab tasks`."""
    return [(name, get_task(name).description) for name in task_names()]
