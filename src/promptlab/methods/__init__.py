"""The method registry: every way to adapt a backbone to a task, by name."""

from __future__ import annotations

from ..errors import unknown
from .base import FitContext, Method, Prediction, Predictor, read_meta

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    if _REGISTRY:
        return
    from . import baselines, hard, pez, prompt_search, soft

    for cls in (hard.ZeroShot, hard.FewShot, hard.ChainOfThought, prompt_search.PromptSearch, soft.PromptTuning,
                soft.PrefixTuning, soft.PTuning, soft.Hybrid, pez.Pez, baselines.LinearProbe, baselines.LoRA,
                baselines.FullFinetune):
        register(cls)
    from .setfit_method import SetFit  # the setfit package itself loads lazily, when SetFit trains

    register(SetFit)


def get_method(name: str) -> Method:
    _load_builtin()
    if name not in _REGISTRY:
        raise unknown("method", name, list(_REGISTRY))
    return _REGISTRY[name]()


def method_names() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def describe() -> list[tuple[str, str, str]]:
    _load_builtin()
    return [(c.name, c.family, c.summary) for c in _REGISTRY.values()]


__all__ = ["FitContext", "Method", "Prediction", "Predictor", "describe", "get_method", "method_names", "read_meta"]
