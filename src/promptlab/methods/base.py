"""Method and Predictor: what every way of adapting a backbone to a task provides.

A Method is `fit(ctx) -> Predictor`; a Predictor predicts, saves itself beside a `promptlab.json`
that says which method, task and backbone it belongs to, and reports its cost. Each family keeps
its own behaviour in its own module (hard.py, soft.py, baselines.py); nothing here branches on type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..backbones import Backbone
from ..config import RunConfig
from ..errors import ConfigError, ModelError
from ..tasks.base import Example, Task, Template

META_FILE = "promptlab.json"


@dataclass
class Prediction:
    """One example's answer: the exact model input, the answer text, its label index and confidence."""

    input: str
    prediction: str
    label: int | None = None
    score: float = 0.0


@dataclass
class FitContext:
    backbone: Backbone
    task: Task
    train: list[Example]
    dev: list[Example]
    config: RunConfig
    template: Template


@dataclass
class Predictor:
    """Base predictor. Subclasses implement `predict`, `_save_files` and `load`."""

    method: str
    backbone: Backbone
    task: Task
    template: Template
    history: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def predict(self, examples: list[Example], batch_size: int = 32) -> list[Prediction]:
        raise NotImplementedError

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._save_files(out)
        meta = {
            "method": self.method,
            "task": self.task.name,
            "backbone": self.backbone.fingerprint(),
            "template": {"name": self.template.name, "text": self.template.text},
            "labels": self.task.labels,
            "verbalizers": self.task.verbalizers,  # what a generative readout scored: transfer maps labels by name
            "trainable_params": self.n_trainable(),
            "extras": self.extras,
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=2))

    def n_trainable(self) -> int:
        return 0

    def run_info(self) -> dict[str, Any]:
        """What metrics.json records about this fit beyond the artifact (every candidate a search scored)."""
        return {}

    def variants(self) -> dict[str, Predictor]:
        """Related predictors scored on the same evaluation examples and reported beside this one
        (pez: the continuous soft prompt its hard prompt was projected from)."""
        return {}

    def _save_files(self, out: Path) -> None:
        """Method-specific files; hard methods need none beyond promptlab.json."""


class Method:
    """A registered way to adapt a backbone to a task."""

    name: ClassVar[str]
    family: ClassVar[str]  # hard | soft | baseline
    summary: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ("encoder", "seq2seq", "causal")
    trains: ClassVar[bool] = False
    # Weight and head baselines see the bare input whatever --template says (DESIGN.md: what is compared).
    bare_input: ClassVar[bool] = False

    def template_for(self, task: Task, config: RunConfig, kind: str = "") -> Template:
        """The text around the input; long-context tasks select what fits around this template.

        A sentence encoder embeds an instruction along with the input, which pulls every input toward
        the same point and costs zero-shot accuracy (DESIGN.md, "Decisions"). So encoders
        default to the bare input, and `--template` still chooses one.
        """
        if self.bare_input or (config.hard.template is None and kind == "encoder"):
            return task.plain_template()
        return task.template(config.hard.template)

    def check(self, backbone: Backbone, task: Task) -> None:
        if backbone.kind not in self.kinds:
            raise ConfigError(
                f"method '{self.name}' does not apply to a {backbone.kind} model like '{backbone.name}'; "
                f"it needs a {' or '.join(self.kinds)} model"
            )

    def fit(self, ctx: FitContext) -> Predictor:
        raise NotImplementedError

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        raise NotImplementedError


# What loaders read from promptlab.json, and its JSON type: required keys, then optional ones (null allowed).
_META_REQUIRED = {"method": str, "task": str, "template": dict}
_META_OPTIONAL = {"backbone": dict, "labels": list, "extras": dict, "trainable_params": int}
_META_INTS = ("max_new_tokens", "virtual_tokens")  # extras that become tensor sizes


def read_meta(path: Path) -> dict[str, Any]:
    """An artifact's promptlab.json, checked key by key: a damaged file fails here in one line naming the key,
    not later as a KeyError or TypeError inside a loader."""
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ModelError(f"'{path}' is not a promptlab artifact (no {META_FILE}); pass the artifact directory of a run")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"'{meta_file}' is corrupted (not JSON); retrain or restore the artifact") from None
    fix = "retrain or restore the artifact"
    if not isinstance(meta, dict):
        raise ModelError(f"'{meta_file}' lacks the method, task or template it must record (it holds a JSON "
                         f"{_json_type(meta)}, not an object); {fix}")
    for key, kind in _META_REQUIRED.items():
        if key not in meta:
            raise ModelError(f"'{meta_file}' lacks the method, task or template it must record (no '{key}'); {fix}")
        _check_type(meta_file, key, meta[key], kind, fix)
    for key in ("name", "text"):
        _check_type(meta_file, f"template.{key}", meta["template"].get(key), str, fix)
    for key, kind in _META_OPTIONAL.items():
        if meta.get(key) is not None:
            _check_type(meta_file, key, meta[key], kind, fix)
    for key in _META_INTS:
        if (meta.get("extras") or {}).get(key) is not None:
            _check_type(meta_file, f"extras.{key}", meta["extras"][key], int, fix)
    return meta


def _check_type(meta_file: Path, key: str, value: Any, kind: type, fix: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelError(f"'{meta_file}' has a bad '{key}': {_json_type(kind())} expected, got "
                         f"{'nothing' if value is None else _json_type(value)}; {fix}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
