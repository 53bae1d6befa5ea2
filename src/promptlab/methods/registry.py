"""The method registry: every way to adapt a backbone to a task, by name.

Each method registers itself where it is defined (`@register` on its class); the package imports every
module in it, so a new method is one class in one file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..artifacts import artifact_dir, artifact_meta, check_compatible, recorded_run
from ..backbones import Backbone
from ..errors import unknown
from ..tasks import artifact_task
from ..tasks.base import Task

if TYPE_CHECKING:
    from .base import Method, Predictor

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    for attr in ("name", "family", "summary"):
        if not isinstance(getattr(cls, attr, None), str):
            raise TypeError(f"method class {cls.__name__} declares no {attr}")
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise TypeError(f"method name '{cls.name}' is registered twice ({_REGISTRY[cls.name].__name__}, {cls.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise unknown("method", name, list(_REGISTRY))
    return _REGISTRY[name]()


def method_names() -> list[str]:
    return list(_REGISTRY)


def describe() -> list[tuple[str, str, str]]:
    return [(c.name, c.family, c.summary) for c in _REGISTRY.values()]


def load_predictor(path: str, backbone: Backbone, task: Task | None = None) -> Predictor:
    """A saved artifact (or run) directory, loaded by the method that made it, once it is known to fit."""
    meta = artifact_meta(path)
    task = artifact_task(meta, task)
    check_compatible(meta, backbone, task, f"artifact '{path}'")
    pred = get_method(meta["method"]).load(artifact_dir(path), backbone, task, meta)
    pred.use_scoring(recorded_run(path)["scoring"])  # as it was made (and trained): `eos` before --scoring existed
    return pred
