"""Method and Predictor: what every way of adapting a backbone to a task provides.

A Method is `fit(ctx) -> Predictor`; a Predictor predicts, saves itself beside a `promptlab.json`
that says which method, task and backbone it belongs to, and reports its cost. Each family keeps
its own behaviour in its own module (hard.py, soft.py, baselines.py); nothing here branches on type.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..artifacts import META_FILE
from ..backbones import Backbone
from ..checkpoints import CheckpointPlan
from ..errors import ConfigError
from ..tasks.base import Example, Task, Template

if TYPE_CHECKING:
    from ..config import RunConfig
    from .readout import Readout


@dataclass
class Prediction:
    """One example's answer: the exact model input, the answer text, its label index and confidence."""

    input: str
    prediction: str
    label: int | None = None
    score: float = 0.0
    label_norm: int | None = None  # generative choices: the pick by length-normalised log-likelihood (acc_norm)


@dataclass
class FitContext:
    backbone: Backbone
    task: Task
    train: list[Example]
    dev: list[Example]
    config: RunConfig
    template: Template
    checkpoint: CheckpointPlan | None = None  # where training checkpoints and resumes from (the CLI's work dir)
    # Called by a training fit once every check has passed, just before the work: the run's plan line is said
    # then, so a refused setting still ends in its one error line alone.
    started: Callable[[], None] = field(default=lambda: None, repr=False)


@dataclass
class Predictor:
    """Base predictor. Subclasses implement `predict`, `_save_files` and `load`.

    What callers may read of any predictor is declared here: `model` (the model it runs, adapted or not; None
    for heads over a model they do not own), `readout` (None where answers are not read out by readout.py),
    `max_new_tokens`, `train_info` (how the fit went, for metrics.json only) and `inputs()`."""

    method: str
    backbone: Backbone
    task: Task
    template: Template
    history: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    max_new_tokens: int = 16
    train_info: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # how the fit went beyond the artifact: method_info
    readout: Readout | None = field(default=None, init=False, repr=False, compare=False)
    scoring: str = "lmeval"  # how a generative model's choices are scored (scoring.py): the run's --scoring

    def use_scoring(self, scoring: str) -> None:
        """Score (and train) choices under `scoring`: the run's, or the one an artifact was made with."""
        self.scoring = scoring
        if self.readout is not None:
            self.readout.scoring = scoring

    def inputs(self, examples: list[Example]) -> list[str]:
        """The exact text the model reads for each example."""
        return [self.template.render(ex, self.task.verbalizers or None) for ex in examples]

    def input_template(self) -> Template:
        """Everything the model reads around one example's fields, as one template: what a long context is
        fitted around (inputs.fit_for). A few-shot prompt's demonstrations are part of it."""
        return self.template

    def reserved_tokens(self) -> int:
        """Tokens this predictor adds after the input that the template cannot show (chain-of-thought's
        generated reasoning): the input is fitted to that much less."""
        return 0

    def check_room(self, budget: int) -> None:
        """Refuse, in one line, a prompt whose fixed text leaves an input no room in `budget` tokens."""

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
        """What metrics.json records about this fit beyond the artifact (every candidate a search scored, how
        demonstrations were fitted, where a soft prompt's start came from)."""
        return dict(self.info)

    def soft_prompt(self) -> tuple[Any, Any, dict[str, Any]] | None:
        """(trained rows as PEFT saves them, the rows they started from, PEFT's config) of a soft prompt; None
        for predictors that hold none."""
        return None

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
    uses_examples: ClassVar[bool] = False  # fits on labelled data without training (demos, a search): needs --data
    # Weight and head baselines see the bare input whatever --template says (DESIGN.md: what is compared).
    bare_input: ClassVar[bool] = False
    scores_choices: ClassVar[bool] = True  # reads --scoring: a generative model's choices go through readout.py

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
            kinds = " or ".join(self.kinds)
            raise ConfigError(
                f"method '{self.name}' does not apply to {_a(backbone.kind)} model like '{backbone.name}' "
                f"({backbone.family}); it needs {_a(kinds)} model"
            )

    def virtual_tokens(self, config: RunConfig) -> int:
        """Positions this method's prompt takes in front of the input (soft prompts; 0 for the rest): inputs are
        budgeted around them before the prompt exists."""
        return 0

    def fit(self, ctx: FitContext) -> Predictor:
        raise NotImplementedError

    def plan(self, config: RunConfig, n_train: int) -> dict[str, int] | None:
        """The optimizer steps a fit on `n_train` examples takes: {epochs, steps, batch_size, grad_accum}, printed
        before training starts (the whole SST-2 pool at 3 epochs is hours on a CPU); None where nothing steps."""
        return None

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        raise NotImplementedError

    def reads(self, cfg: RunConfig) -> set[str]:
        """Which of METHOD_SETTINGS this method reads under `cfg`: the template, unless it sees the bare input."""
        return set() if self.bare_input else {"template"}

    def refusals(self, cfg: RunConfig, given: set[str]) -> list[Refusal]:
        """The settings given (`given`: config fields set by flag) that this run would not read, or not with these
        values; check_flags refuses the first, compare those that no method of it reads."""
        if cfg.train.prefix_projection:  # a YAML value is refused too: it would be recorded as if it had shaped a prefix
            given = given | {"prefix_projection"}
        reads = self.reads(cfg) | ({"scoring"} if self.scores_choices else set())
        unread = [name for name in METHOD_SETTINGS if name in given and name not in reads]
        return [Refusal(name, f"--{name.replace('_', '-')} {self.why_unread(name)}, drop the flag") for name in unread]

    def why_unread(self, name: str) -> str:
        return WHY_UNREAD[name].format(m=self.name)

    def check_flags(self, cfg: RunConfig, given: set[str]) -> None:
        """Refuse settings this method would not read instead of ignoring them (and recording them in the run's
        config.yaml as if they had been used)."""
        refused = self.refusals(cfg, given)
        if refused:
            raise ConfigError(refused[0].reason)


@dataclass(frozen=True)
class Refusal:
    """A setting a method would not read (`conflict`: it reads it, but not beside the other settings given)."""

    setting: str  # the config field, e.g. "init_text"
    reason: str  # the one-line error: why, and what to do
    conflict: bool = False


# Settings only some methods read; each method says which it reads (Method.reads), the rest are refused.
WHY_UNREAD = {
    "template": "chooses the hard-prompt template; {m} reads the bare input",
    "shots": "sets few-shot's demonstrations; {m} shows none",
    "selection": "chooses few-shot's demonstrations; {m} shows none",
    "candidates": "is a prompt-search budget; {m} searches nothing",
    "search_size": "is a prompt-search budget; {m} searches nothing",
    "search_on": "chooses what prompt-search scores on; {m} searches nothing",
    "virtual_tokens": "shapes a soft prompt; {m} trains none",
    "init": "shapes a soft prompt; {m} trains none",
    "init_text": "shapes a soft prompt; {m} trains none",
    "prefix_projection": "reparameterises prefix-tuning's prefix; {m} has none",
    "lora_r": "shapes LoRA's update; {m} has none",
    "lora_alpha": "shapes LoRA's update; {m} has none",
    "lora_targets": "chooses LoRA's modules; {m} has none",
    "grad_accum": "accumulates gradients in the shared training loop; {m} does not train through it",
    "gradient_checkpointing": "recomputes activations in the shared training loop; {m} does not train through it",
    "scoring": "sets how a generative model's choices are scored; {m} answers through its own head",
}
METHOD_SETTINGS = tuple(WHY_UNREAD)

def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"
