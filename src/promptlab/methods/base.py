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

    trainable_params: ClassVar[int] = 0

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
            "trainable_params": self.n_trainable(),
            "extras": self.extras,
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=2))

    def n_trainable(self) -> int:
        return 0

    def _save_files(self, out: Path) -> None:
        """Method-specific files; hard methods need none beyond promptlab.json."""


class Method:
    """A registered way to adapt a backbone to a task."""

    name: ClassVar[str]
    family: ClassVar[str]  # hard | soft | baseline
    summary: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ("encoder", "seq2seq", "causal")
    trains: ClassVar[bool] = False

    def template_for(self, task: Task, config: RunConfig, kind: str = "") -> Template:
        """The text around the input; long-context tasks select what fits around this template.

        A sentence encoder embeds an instruction along with the input, which pulls every input toward
        the same point: measured on MiniLM, templates cost zero-shot SST-2 1-9 points. So encoders
        default to the bare input, and `--template` still chooses one.
        """
        if config.hard.template is None and kind == "encoder":
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


def read_meta(path: Path) -> dict[str, Any]:
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ModelError(f"'{path}' is not a promptlab artifact (no {META_FILE}); pass the artifact directory of a run")
    try:
        return json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"'{meta_file}' is corrupted (not JSON); retrain or restore the artifact") from None
