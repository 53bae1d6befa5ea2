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
from ..chat import ChatFormat, around, render_chat, resolve_chat
from ..checkpoints import CheckpointPlan
from ..errors import ConfigError
from ..tasks import task_names
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
    chat: ChatFormat | None = None  # the tokenizer's chat template renders the input (chat.py); None: raw text
    scoring: str = "lmeval"  # how a generative model's choices are scored (scoring.py): the run's --scoring

    def use_scoring(self, scoring: str) -> None:
        """Score (and train) choices under `scoring`: the run's, or the one an artifact was made with."""
        self.scoring = scoring
        if self.readout is not None:
            self.readout.scoring = scoring

    def inputs(self, examples: list[Example]) -> list[str]:
        """The exact text the model reads for each example: the templated input, as the user turn of a chat."""
        return [self.as_chat([], self.template.render(ex, self.task.verbalizers or None)) for ex in examples]

    def as_chat(self, turns: list[tuple[str, str]], user: str) -> str:
        """`user` (after the demonstration `turns`) as the model reads it: a conversation rendered by the chat
        template, ending in the assistant's generation prompt; raw text where there is no chat."""
        if self.chat is None:
            return user
        return render_chat(self.backbone.tokenizer, self.chat.messages(turns, user), self.chat.kwargs)

    def input_template(self) -> Template:
        """Everything the model reads around one example's fields, as one template: what a long context is
        fitted around (inputs.fit_for). A few-shot prompt's demonstrations are part of it."""
        return self.chat_template(self.template, [])

    def chat_template(self, template: Template, turns: list[tuple[str, str]]) -> Template:
        """`template` inside the conversation (the template's special tokens and turns count against the input
        budget), its own text kept as the user turn's."""
        if self.chat is None:
            return template
        return Template(template.name, around(self.backbone.tokenizer, self.chat, turns, template.text))

    def reserved_tokens(self) -> int:
        """Tokens this predictor adds after the input that the template cannot show (chain-of-thought's
        generated reasoning): the input is fitted to that much less."""
        return 0

    def check_room(self, budget: int) -> None:
        """Refuse, in one line, a prompt whose fixed text leaves an input no room in `budget` tokens."""

    def predict(self, examples: list[Example], batch_size: int = 32) -> list[Prediction]:
        raise NotImplementedError

    def _task_spec(self) -> dict[str, str]:
        """A user's spec file (not a registered task) by absolute path, which eval/predict/serve --prompt read back
        (tasks.artifact_task_ref)."""
        spec = self.task.extras.get("spec_path")
        if not spec or self.task.name.lower() in task_names():
            return {}
        return {"task_spec": str(Path(spec).expanduser().resolve())}

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._save_files(out)
        meta = {
            "method": self.method,
            "task": self.task.name,
            **self._task_spec(),
            "backbone": self.backbone.fingerprint(),
            "template": {"name": self.template.name, "text": self.template.text},
            "labels": self.task.labels,
            "verbalizers": self.task.verbalizers,  # what a generative readout scored: transfer maps labels by name
            "trainable_params": self.n_trainable(),
            # how the input was rendered (chat.chat_from_meta reads it back): eval --prompt, predict and serve repeat it
            "extras": {**self.extras, **({"chat": self.chat.meta()} if self.chat is not None else {})},
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
    # The backbone kinds it runs on: local ones (backbones.Kind), and "api" (an OpenAI-compatible server: text in,
    # text and log-probs out; only hard prompts, which need no weights).
    kinds: ClassVar[tuple[str, ...]] = ("encoder", "seq2seq", "causal")
    trains: ClassVar[bool] = False
    uses_examples: ClassVar[bool] = False  # fits on labelled data without training (demos, a search): needs --data
    # Weight and head baselines see the bare input whatever --template says (DESIGN.md: what is compared).
    bare_input: ClassVar[bool] = False
    # Renders the input through the tokenizer's chat template (--chat-template, --system-prompt, ...): the hard and
    # soft prompts; weight and head baselines read the bare input as they always did.
    reads_chat: ClassVar[bool] = False
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
        if backbone.kind == "api" and "api" not in self.kinds:
            raise ConfigError(
                f"method '{self.name}' cannot run on the API model '{backbone.name}': it trains or reads the model's "
                "weights (soft prompts, adapters, heads, embeddings), and an API serves only text, with no weights to "
                "attach vectors to; use zero-shot, few-shot, cot or prompt-search, or a local model"
            )
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
        return (set() if self.bare_input else {"template"}) | (CHAT_SETTINGS if self.reads_chat else set())

    def chat_format(self, ctx: FitContext) -> ChatFormat | None:
        """This run's chat rendering (None: raw text), for methods that read it."""
        if not self.reads_chat:
            return None
        hard = ctx.config.hard
        return resolve_chat(ctx.backbone, hard.chat_template, hard.system_prompt, hard.chat_template_kwargs)

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
    "chat_template": "renders prompts through a chat template; {m} reads the bare input as raw text",
    "system_prompt": "is a chat template's system turn; {m} reads the bare input as raw text",
    "chat_template_kwargs": "sets a chat template's options; {m} reads the bare input as raw text",
    "scoring": "sets how a generative model's choices are scored; {m} answers through its own head",
}
CHAT_SETTINGS = {"chat_template", "system_prompt", "chat_template_kwargs"}
METHOD_SETTINGS = tuple(WHY_UNREAD)

def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"
