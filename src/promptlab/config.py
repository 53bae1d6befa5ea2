"""Run configuration: a dataclass tree with a default and a help line for every field.

YAML in (`--config FILE`), flags over it, validated at load, unknown keys rejected, and written back
as `config.yaml` into every run directory so a run can be repeated from its own record.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import ConfigError, unknown


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    epochs: int = _f(3, "passes over the training examples")
    lr: float | None = _f(None, "learning rate; default depends on the method (0.3 Adafactor for input prompts)")
    batch_size: int = _f(16, "training batch size")
    train_size: int | None = _f(None, "use this many training examples (seeded sample); default all")
    dev_size: int = _f(200, "examples held out of the training split for model selection (at most 20% of it)")
    virtual_tokens: int = _f(20, "soft tokens for prompt/prefix/p-tuning")
    init: str | None = _f(None, "soft prompt init: random, vocab, text, labels, or prompt:DIR (another run's "
                                "trained prompt of the same method and model, SPoT); default text for input-level "
                                "prompts, random for prefix-tuning (whose text init, the words' keys and values at "
                                "every layer, measured no better: bench/quality.md)")
    init_text: str | None = _f(None, "text for --init text (set alone, it implies init: text); default the task's "
                                     "first template, fields removed")
    patience: int = _f(2, "stop after this many epochs without a better dev score")
    max_steps: int | None = _f(None, "stop after this many optimizer steps (for quick runs)")
    weight_decay: float = _f(0.0, "AdamW weight decay (Adafactor methods ignore it)")
    prefix_projection: int = _f(0, "prefix-tuning: train the prefix through a two-layer MLP this wide (Li & Liang's "
                                   "reparameterisation; 0 = train it directly); the artifact stores the computed "
                                   "prefix, so it loads and serves like any prefix")
    train_anchors: bool = _f(False, "encoders, choice tasks: train the label anchors too (classes x hidden "
                                    "parameters, initialised from the label descriptions)")
    schedule: str = _f("constant", "learning-rate schedule: constant, or linear (warm up, then decay to 0 at the last planned step)")
    warmup: float = _f(0.06, "with --schedule linear: the fraction of the planned steps spent warming up")
    checkpoint_every: int = _f(100, "save a resumable checkpoint every this many steps (and at each epoch end)")
    keep_checkpoints: int = _f(2, "how many of the newest checkpoints to keep while a run is in progress")


@dataclass
class HardConfig:
    template: str | None = _f(None, "hard-prompt template name; default the task's first")
    shots: int = _f(4, "few-shot demonstrations: per class for choice tasks, in total for text tasks")
    selection: str = _f("balanced", "few-shot demo selection: random, balanced or nearest")
    candidates: int = _f(30, "prompt-search: candidate prompts scored at most (the task's templates first, then a "
                             "seeded sample of template x instruction x demo-set combinations)")
    search_size: int = _f(200, "prompt-search (--dev-size): labelled examples that score each candidate, at most")
    search_on: str = _f("train", "prompt-search: labelled data that scores candidates: train (demos are scored on "
                                 "the other training examples) or dev (the held-out dev slice)")


@dataclass
class RunConfig:
    task: str = _f("sentiment", "task name (promptlab tasks) or a task spec YAML file")
    model: str = _f("minilm", "model: alias (minilm), hub id or local save_pretrained directory")
    method: str = _f("zero-shot", "method name (promptlab methods)")
    data: str | None = _f(None, "data file or folder in the task's official format; default bundled or hub")
    split: str | None = _f(None, "evaluation split; default the task's official evaluation split")
    prompt: str | None = _f(None, "a saved artifact directory to evaluate instead of fitting a method")
    eval_size: int | None = _f(None, "evaluate on at most this many examples (seeded sample)")
    max_input_tokens: int | None = _f(None, "input budget in tokens; long contexts are selected to fit")
    max_new_tokens: int | None = _f(None, "generation length; default the task's")
    batch_size: int = _f(32, "evaluation batch size")
    dtype: str = _f("float32", "dtype of the frozen model's weights: float32, or bfloat16 (half the memory; 2-4x "
                    "faster on CPUs with AMX or AVX512-BF16 and on GPUs; scores differ in the last digits)")
    seed: int = _f(0, "seed for sampling, initialisation and data order")
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training settings"})
    hard: HardConfig = field(default_factory=HardConfig, metadata={"help": "hard-prompt settings"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


POSITIVE = {"epochs", "batch_size", "train_size", "dev_size", "virtual_tokens", "eval_size", "max_input_tokens",
            "max_new_tokens", "shots", "max_steps", "checkpoint_every", "keep_checkpoints",
            "candidates", "search_size", "patience"}
NON_NEGATIVE = {"prefix_projection"}
CHOICES = {"init": ("random", "vocab", "text", "labels"), "selection": ("random", "balanced", "nearest"),
           "schedule": ("constant", "linear"), "search_on": ("train", "dev"), "dtype": ("float32", "bfloat16")}


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a config dataclass from a mapping; unknown keys and wrong types fail with the key named."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise unknown(f"config key in {where}", str(key), list(known))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}")
    cfg = cls(**kwargs)
    validate(cfg, where)
    return cfg


def _coerce(value: Any, hint: Any, where: str) -> Any:
    args = getattr(hint, "__args__", (hint,))
    kinds = " or ".join(getattr(t, "__name__", str(t)) for t in args if t is not type(None))
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{where}: must be set ({kinds}); give a value or remove the key for the default")
    for t in args:
        if t is type(None):
            continue
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value
    raise ConfigError(f"{where}: {value!r} is not a valid {kinds}; fix the value")


def validate(cfg: Any, where: str = "config") -> None:
    for f in fields(cfg):
        check_value(f.name, getattr(cfg, f.name), f"{where}.{f.name}")


def check_value(name: str, value: Any, label: str) -> None:
    """One field's range check; `label` names it as the user wrote it (`--train-size`, `run.yaml.train.epochs`)."""
    if name in POSITIVE and value is not None and value <= 0:
        raise ConfigError(f"{label} must be a positive number, got {value}; use 1 or more")
    if name == "init" and isinstance(value, str) and value.startswith("prompt:"):
        if not value[len("prompt:"):].strip():
            raise ConfigError(f"{label} prompt: needs a directory, e.g. prompt:runs/tweeteval-prefix")
        return  # another run's trained prompt (SPoT); the method checks it when it loads it
    if name in NON_NEGATIVE and value is not None and value < 0:
        raise ConfigError(f"{label} must be 0 or more, got {value}; use 0 to switch it off")
    if name in CHOICES and value is not None and value not in CHOICES[name]:
        raise unknown(f"value of {label}", str(value), list(CHOICES[name]))
    if name == "lr" and value is not None and not (0 < value < 100):
        raise ConfigError(f"{label} must be between 0 and 100, got {value}; e.g. 0.3 for prompt tuning")
    if name == "warmup" and not (0 <= value < 1):
        raise ConfigError(f"{label} must be a fraction in [0, 1), got {value}; e.g. 0.06")
    if name == "weight_decay" and not (0 <= value < math.inf):  # NaN too: AdamW refused it at the first step
        raise ConfigError(f"{label} must be a finite number, 0 or more, got {value}; e.g. 0.01")
    if name == "seed" and not (0 <= value < 2**63):  # torch's generator takes a 64-bit seed
        raise ConfigError(f"{label} must be between 0 and 2**63 - 1, got {value}; e.g. 0")


def load_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--config '{path}' is a directory; pass a YAML file, e.g. {p / 'config.yaml'} of a run")
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass a YAML file written by a run or by hand")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}'{line} is not valid YAML; fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text; save it as UTF-8") from None
    return data
