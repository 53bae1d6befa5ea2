"""Run configuration: a dataclass tree where every setting is declared once, as a field.

A field's metadata holds its help line, its range or choices, and the `promptlab` commands it is a flag on
(`--` + its name with dashes, unless it names another): the CLI's flags are generated from it (`add_flags`),
as TRL's HfArgumentParser does. YAML in (`--config FILE`), flags over it (`build_config`), validated at load,
unknown keys rejected, and written back as `config.yaml` into every run directory so a run can be repeated
from its own record.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import yaml

from .chat import kwargs_ok
from .errors import ConfigError, unknown

ALL = ("eval", "train", "predict", "compare")  # the commands that build a RunConfig
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
PRICE_RE = re.compile(r"^\s*\d+(\.\d*)?\s*,\s*\d+(\.\d*)?\s*$")
TRAINING = ("train", "compare")
SPLITTING = ("eval", "train", "compare")  # the commands that load the task's data and carve its dev slice
SCORINGS = ("lmeval", "eos")  # scoring.py: how a generative model's choices are scored


@dataclass(frozen=True)
class Range:
    """The values a number field takes; `fix` follows the flag or key in the one-line error."""

    ok: Callable[[Any], bool]
    fix: str


AT_LEAST_1 = Range(lambda v: v > 0, "must be a positive number, got {value}; use 1 or more")
AT_LEAST_0 = Range(lambda v: v >= 0, "must be 0 or more, got {value}; use 0 to switch it off")


def _f(default: Any, help: str, *, on: tuple[str, ...] | None = None, range: Range | None = None,
       choices: tuple[str, ...] | None = None, flag: str | None = None, aliases: tuple[str, ...] = (),
       metavar: str | None = None, or_dir: str | None = None) -> Any:
    """A setting: its default, its help (what `--help` shows), the commands it is a flag on (default: its
    section's `flags_on`; `()` for YAML only), its range or choices, and its flag's name and aliases when they
    are not `--field-name`. `or_dir`: a prefix that also accepts a directory after it (`prompt:DIR`)."""
    meta = {"help": help, "on": on, "range": range, "choices": choices, "flag": flag, "aliases": aliases,
            "metavar": metavar, "or_dir": or_dir}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    flags_on: ClassVar[tuple[str, ...]] = TRAINING

    epochs: int = _f(3, "passes over the training examples", range=AT_LEAST_1)
    lr: float | None = _f(None, "learning rate; default depends on the method (0.3 Adafactor for input prompts)",
                          range=Range(lambda v: 0 < v < 100, "must be between 0 and 100, got {value}; e.g. 0.3 for "
                                                             "prompt tuning"))
    batch_size: int = _f(16, "training batch size", range=AT_LEAST_1, flag="--train-batch-size")
    train_size: int | None = _f(None, "use this many training examples (seeded sample); default all", range=AT_LEAST_1)
    dev_size: int = _f(200, "examples held out of the training split for model selection (at most 20% of it)",
                       range=AT_LEAST_1, on=SPLITTING)
    virtual_tokens: int = _f(20, "soft tokens for prompt/prefix/p-tuning", range=AT_LEAST_1)
    init: str | None = _f(None, "soft prompt init: random, vocab, text, labels, or prompt:DIR (another run's "
                                "trained prompt of the same method and model, SPoT); default text for input-level "
                                "prompts, random for prefix-tuning",
                          choices=("random", "vocab", "text", "labels"), or_dir="prompt:")
    init_text: str | None = _f(None, "text for --init text (set alone, it implies init: text); default the task's "
                                     "first template, fields removed")
    patience: int = _f(2, "stop after this many epochs without a better dev score", range=AT_LEAST_1)
    max_steps: int | None = _f(None, "stop after this many optimizer steps (for quick runs)", range=AT_LEAST_1)
    weight_decay: float = _f(0.0, "AdamW weight decay (Adafactor methods ignore it)", on=(),
                             # NaN too: AdamW refused it at the first step
                             range=Range(lambda v: 0 <= v < math.inf, "must be a finite number, 0 or more, got "
                                                                      "{value}; e.g. 0.01"))
    prefix_projection: int = _f(0, "prefix-tuning: train the prefix through a two-layer MLP this wide (Li & Liang's "
                                   "reparameterisation; 0 = train it directly); the artifact stores the computed "
                                   "prefix, so it loads and serves like any prefix", range=AT_LEAST_0, metavar="H")
    train_anchors: bool = _f(False, "encoders, choice tasks: train the label anchors too (classes x hidden "
                                    "parameters, initialised from the label descriptions)")
    gradient_checkpointing: bool = _f(False, "recompute each layer's activations in the backward pass instead of "
                                             "keeping them: less memory for about a third more compute (methods "
                                             "trained by the shared loop: soft prompts, LoRA, full fine-tuning)")
    lora_r: int = _f(8, "lora: the rank of each low-rank update", range=AT_LEAST_1, metavar="R")
    lora_alpha: int = _f(16, "lora: the updates' scale numerator (they are scaled by alpha / r)", range=AT_LEAST_1)
    lora_targets: str | None = _f(None, "lora: comma-separated names of the linear modules to adapt, e.g. q,k,v,o or "
                                        "query,value; default the attention's query and value projections",
                                  metavar="NAMES")
    grad_accum: int = _f(1, "accumulate gradients over this many batches per optimizer step: the step one batch of "
                            "--train-batch-size x N would take, in the memory of one of N", range=AT_LEAST_1,
                         metavar="N")
    schedule: str = _f("constant", "learning-rate schedule: constant, or linear (warm up, then decay to 0 at the "
                                   "last planned step)", choices=("constant", "linear"))
    warmup: float = _f(0.06, "with --schedule linear: the fraction of the planned steps spent warming up",
                       range=Range(lambda v: 0 <= v < 1, "must be a fraction in [0, 1), got {value}; e.g. 0.06"))
    checkpoint_every: int = _f(100, "save a resumable checkpoint every this many steps (and at each epoch end)",
                               range=AT_LEAST_1)
    keep_checkpoints: int = _f(2, "how many of the newest checkpoints to keep while a run is in progress",
                               range=AT_LEAST_1)


@dataclass
class HardConfig:
    flags_on: ClassVar[tuple[str, ...]] = ALL

    template: str | None = _f(None, "hard-prompt template name; default the task's first")
    shots: int = _f(4, "few-shot demonstrations: per class for choice tasks, in total for text tasks",
                    range=AT_LEAST_1)
    selection: str = _f("balanced", "few-shot demo selection: random, balanced or nearest",
                        choices=("random", "balanced", "nearest"))
    candidates: int = _f(30, "prompt-search: candidate prompts scored at most (the task's templates first, then a "
                             "seeded sample of template x instruction x demo-set combinations)", range=AT_LEAST_1)
    search_size: int = _f(200, "prompt-search: labelled examples that score each candidate, at most",
                          range=AT_LEAST_1)
    search_on: str = _f("train", "prompt-search: labelled data that scores candidates: train (demos are scored on "
                                 "the other training examples) or dev (the held-out dev slice)",
                        choices=("train", "dev"))
    chat_template: str = _f("auto", "hard and soft prompts on a model whose tokenizer has a chat template: auto (render "
                                    "through it when there is one), on (refuse a model without one) or off (raw "
                                    "text)", choices=("auto", "on", "off"))
    system_prompt: str | None = _f(None, "with a chat template: the system turn's text (default: the template's own, "
                                         "if it writes one)", metavar="TEXT")
    chat_template_kwargs: str | None = _f(None, "with a chat template: a JSON object of the template's own settings, "
                                                "e.g. '{\"enable_thinking\": false}' (Qwen3)", metavar="JSON",
                                          range=Range(kwargs_ok, "must be a JSON object, got {value}; e.g. "
                                                                 "'{{\"enable_thinking\": false}}'"))


@dataclass
class ApiConfig:
    """Settings of an API model (`--model openai:MODEL@BASE_URL`); refused with any other model. Flags of the
    commands that run hard prompts (train, to refuse its methods on an API model in one line)."""

    flags_on: ClassVar[tuple[str, ...]] = ("eval", "train", "compare")

    api_key_env: str | None = _f(None, "API models: the environment variable holding the API key; default "
                                       "OPENAI_API_KEY (the key itself is never written anywhere)", metavar="NAME")
    api_concurrency: int = _f(8, "API models: requests in flight at once", range=AT_LEAST_1, metavar="N")
    api_timeout: float = _f(60.0, "API models: seconds to wait for one answer before retrying",
                            range=Range(lambda v: 0 < v < math.inf, "must be a positive number of seconds, got "
                                                                    "{value}; e.g. 60"), metavar="S")
    api_retries: int = _f(5, "API models: retries of a request that failed with 429, 5xx, a timeout or a dropped "
                             "connection (exponential backoff with jitter; Retry-After honoured)", range=AT_LEAST_0,
                          metavar="N")
    api_cache: str | None = _f(None, "API models: directory of the on-disk response cache (a rerun of the same "
                                     "requests sends none), or off; default ~/.cache/promptlab/api", metavar="DIR")
    api_price_per_mtok: str | None = _f(None, "API models: USD per million input and output tokens for the cost "
                                              "estimate, e.g. 0.15,0.60; default promptlab's table of OpenAI "
                                              "models (others: cost unknown)", metavar="IN,OUT",
                                        range=Range(lambda v: bool(PRICE_RE.match(v)), "is not two prices, got "
                                                    "'{value}'; give USD per million input and output tokens, e.g. "
                                                    "0.15,0.60"))
    api_endpoint: str = _f("completions", "API models: completions (raw text, and choices scored by echoed "
                                          "log-probs) or chat (one user message; choices matched to a generated "
                                          "answer), for chat-only models", choices=("completions", "chat"))
    api_scoring: str = _f("auto", "API models: how choices are scored: logprobs (echoed prompt log-probs, refused "
                                  "where the server lacks them), match (a generated answer matched to the choices) "
                                  "or auto (logprobs where given, else match)", choices=("auto", "logprobs", "match"))
    api_tokenizer: str | None = _f(None, "API models: a local tokenizer directory of the same model, to count "
                                         "tokens exactly; default an estimate of 4 characters per token",
                                   metavar="DIR")


@dataclass
class RunConfig:
    flags_on: ClassVar[tuple[str, ...]] = ALL

    task: str = _f("sentiment", "task name (promptlab tasks) or a task spec YAML file")
    model: str = _f("minilm", "model: alias (minilm), hub id, local save_pretrained directory, or "
                              "openai:MODEL@BASE_URL (an OpenAI-compatible server; hard methods only)")
    method: str = _f("zero-shot", "method name (promptlab methods lists them): a hard method for eval and predict "
                                  "(or --prompt DIR instead), a soft method or baseline for train; no default",
                     on=("eval", "train", "predict"))
    data: str | None = _f(None, "data file or folder in the task's official format; default bundled or hub")
    split: str | None = _f(None, "evaluation split; default the task's official evaluation split", on=SPLITTING)
    prompt: str | None = _f(None, "a saved artifact (or run) directory to evaluate instead of fitting a method",
                            on=("eval", "predict"))
    eval_size: int | None = _f(None, "evaluate on at most this many examples (seeded sample)", range=AT_LEAST_1,
                               on=SPLITTING, aliases=("--limit",))
    max_input_tokens: int | None = _f(None, "input budget in tokens: every input is cut to it (long contexts are "
                                            "selected to fit); default the model's", range=AT_LEAST_1)
    max_new_tokens: int | None = _f(None, "generation length; default the task's", range=AT_LEAST_1)
    batch_size: int = _f(32, "evaluation batch size", range=AT_LEAST_1)
    device: str = _f("auto", "where the model runs: auto (CUDA when there is a GPU, else the CPU), cpu, cuda or "
                             "cuda:N", range=Range(lambda v: bool(DEVICE_RE.match(v)), "is not a device, got "
                                                   "{value}; use auto, cpu, cuda or cuda:N"))
    dtype: str = _f("auto", "dtype of the frozen model's weights: auto (bfloat16 on a GPU, float32 on the CPU), "
                    "float32, or bfloat16 (half the memory; faster on GPUs and on CPUs with AMX or AVX512-BF16; scores "
                    "differ in the last digits); what trains stays float32", choices=("auto", "float32", "bfloat16"))
    device_map: str | None = _f(None, "inference across devices: auto, balanced, balanced_low_0, sequential (accelerate "
                                      "places the layers over the GPUs, then the CPU, then --offload-dir) or a JSON file "
                                      "{module: device}; training refuses it (FSDP: docs/accelerate_fsdp.yaml)",
                                on=("eval", "predict", "train", "compare"), metavar="MAP")
    max_memory: str | None = _f(None, "with --device-map: memory each device may hold, e.g. 0=20GiB,1=20GiB,cpu=60GiB",
                                on=("eval", "predict"), metavar="DEV=SIZE,...")
    offload_dir: str | None = _f(None, "with --device-map: folder for the layers placed on disk",
                                 on=("eval", "predict"), metavar="DIR")
    scoring: str = _f("lmeval", "how a seq2seq or causal model scores choices: lmeval (lm-evaluation-harness's "
                                "convention: ' ' + verbalizer, no EOS; also reports acc_norm) or eos (verbalizer + "
                                "EOS, promptlab's earlier convention); soft prompts train on the same target",
                      choices=SCORINGS, on=SPLITTING)
    seed: int = _f(0, "seed for sampling, initialisation and data order",  # torch's generator takes a 64-bit seed
                   range=Range(lambda v: 0 <= v < 2**63, "must be between 0 and 2**63 - 1, got {value}; e.g. 0"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training settings"})
    hard: HardConfig = field(default_factory=HardConfig, metadata={"help": "hard-prompt settings"})
    api: ApiConfig = field(default_factory=ApiConfig, metadata={"help": "API model settings"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


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
        check_value(f, getattr(cfg, f.name), f"{where}.{f.name}")


def setting(cls: type, name: str) -> dataclasses.Field:
    """The field `name` of config dataclass `cls`, for checking a value against its range (`check_value`)."""
    return next(f for f in fields(cls) if f.name == name)


def check_value(f: dataclasses.Field, value: Any, label: str) -> None:
    """One field's range or choices check, as its metadata declares them; `label` names it as the user wrote it
    (`--train-size`, `run.yaml.train.epochs`)."""
    meta = f.metadata
    if value is None:
        return
    prefix = meta.get("or_dir")
    if prefix and isinstance(value, str) and value.startswith(prefix):
        if not value[len(prefix):].strip():
            raise ConfigError(f"{label} {prefix} needs a directory, e.g. {prefix}runs/tweeteval-prefix")
        return  # another run's trained prompt (SPoT); the method checks it when it loads it
    if meta.get("choices") and value not in meta["choices"]:
        raise unknown(f"value of {label}", str(value), list(meta["choices"]))
    if meta.get("range") and not meta["range"].ok(value):
        raise ConfigError(f"{label} {meta['range'].fix.format(value=value)}")


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


# -- flags, generated from the fields -----------------------------------------------------------------
SECTIONS: dict[str | None, type] = {None: RunConfig, "train": TrainConfig, "hard": HardConfig, "api": ApiConfig}
TYPED = "flags_typed"  # Namespace attribute: dest -> the option string the user typed (`--limit`, `--eval-size`)


@dataclass(frozen=True)
class Flag:
    """A config field's command-line flag: `names[0]` is canonical, the rest are aliases."""

    section: str | None  # None: RunConfig itself; "train", "hard": its nested sections
    field: dataclasses.Field
    names: tuple[str, ...]
    commands: tuple[str, ...]
    kind: type  # int, float, str or bool (a bool is a switch: store_true, default None)

    @property
    def dest(self) -> str:
        return self.names[0][2:].replace("-", "_")

    def part(self, cfg: RunConfig) -> Any:
        return getattr(cfg, self.section) if self.section else cfg


def config_flags(command: str | None = None) -> list[Flag]:
    """Every config field's flag (those on `command` only, when given), in declaration order."""
    out = []
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        for f in fields(cls):
            kind = next(t for t in getattr(hints[f.name], "__args__", (hints[f.name],)) if t is not type(None))
            if dataclasses.is_dataclass(kind):
                continue  # a nested section: its own fields are the flags
            on = f.metadata.get("on")
            on = cls.flags_on if on is None else on
            if on and (command is None or command in on):  # on=(): YAML only
                names = (f.metadata.get("flag") or "--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ()))
                out.append(Flag(section, f, names, tuple(on), kind))
    return out


class FlagAction(argparse.Action):
    """Stores a flag's value and records which of its names was typed, so an error names that one."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        setattr(namespace, TYPED, {**(getattr(namespace, TYPED, None) or {}), self.dest: option_string})


def typed_name(args: argparse.Namespace, dest: str) -> str:
    """The name the user typed for the flag stored in `dest` (its canonical `--dest-with-dashes` otherwise)."""
    return (getattr(args, TYPED, None) or {}).get(dest) or "--" + dest.replace("_", "-")


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"]
    if "default" not in text and not any(f.default is v for v in (None, False, dataclasses.MISSING)):
        text += f" (default {f.default})"
    return text.replace("%", "%%")  # argparse %-formats help


def add_flags(p: argparse.ArgumentParser, command: str) -> None:
    """The flags of `command`'s config fields. Every default is None, so a flag not given leaves the --config
    value (or the field's default) alone."""
    for flag in config_flags(command):
        kw: dict[str, Any] = {"nargs": 0} if flag.kind is bool else {
            "type": flag.kind, "metavar": flag.field.metadata.get("metavar")}
        p.add_argument(*flag.names, dest=flag.dest, action=FlagAction, default=None, help=_help(flag.field), **kw)


def build_config(args: argparse.Namespace) -> RunConfig:
    """The run's config: --config's YAML (or the defaults), then every flag given over it."""
    path = getattr(args, "config", None)
    base: dict[str, Any] = load_yaml(path) if path else {}
    cfg = from_dict(RunConfig, base, path or "config") if base else RunConfig()
    for flag in config_flags():
        value = getattr(args, flag.dest, None)
        if value is None:
            continue
        check_value(flag.field, value, typed_name(args, flag.dest))  # the error names the flag the user typed
        setattr(flag.part(cfg), flag.field.name, value)
    for part, where in ((cfg, "flags"), (cfg.train, "flags"), (cfg.hard, "flags"), (cfg.api, "flags")):
        validate(part, where)
    if cfg.device_map and getattr(args, "command", None) in TRAINING:
        raise ConfigError("--device-map places a model for inference (eval, predict, serve); training does not run on a "
                          "placed model: shard it with FSDP instead (accelerate launch --config_file "
                          "docs/accelerate_fsdp.yaml -m promptlab.cli train ...), or drop --device-map")
    if cfg.device_map and cfg.device != "auto":
        raise ConfigError(f"--device {cfg.device} and --device-map {cfg.device_map} both say where the model goes; "
                          "keep one")
    return cfg


def given_fields(args: argparse.Namespace) -> set[str]:
    """The config fields the user set by flag (not by --config or default)."""
    return {flag.field.name for flag in config_flags() if getattr(args, flag.dest, None) is not None}


def config_method(args: argparse.Namespace) -> str | None:
    """The method a --config file names (a run's config.yaml does), so the run can be repeated from it."""
    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    method = data.get("method") if isinstance(data, dict) else None
    return method if isinstance(method, str) else None


def train_config(args: argparse.Namespace) -> RunConfig:
    """`train`'s config, with the checks that need the method (also what bench/ builds its training runs with)."""
    from .methods import get_method  # the registry imports torch: parsing a command line must stay light

    cfg = build_config(args)
    if not (args.method or config_method(args)):
        raise ConfigError("train needs --method SOFT, e.g. --method prompt-tuning (promptlab methods lists them)")
    method = get_method(cfg.method)
    if not method.trains:
        raise ConfigError(f"'{cfg.method}' is a {method.family} method and trains nothing; use promptlab eval "
                          f"--method {cfg.method}, or train a soft method (prompt-tuning, prefix-tuning, ...)")
    given = given_fields(args)
    check_schedule(cfg, given)
    method.check_flags(cfg, given)
    return cfg


def check_schedule(cfg: RunConfig, given: set[str]) -> None:
    """--warmup shapes --schedule linear only: under the constant schedule it was read by nothing."""
    if "warmup" in given and cfg.train.schedule != "linear":
        raise ConfigError(f"--warmup is the warm-up of --schedule linear, but this run's schedule is "
                          f"{cfg.train.schedule}; add --schedule linear, or drop --warmup")


def eval_config(args: argparse.Namespace) -> RunConfig:
    """`eval`'s config: a hard method, with the flags it reads (its check_flags), or a saved prompt (`--prompt`)."""
    from .methods import get_method  # the registry imports torch: parsing a command line must stay light

    cfg = build_config(args)
    method = args.method or (None if cfg.prompt else config_method(args))
    if bool(cfg.prompt) == bool(method):
        raise ConfigError("eval needs exactly one of --method HARD or --prompt DIR")
    if method is None:
        return prompt_config(cfg, args, own_task=not getattr(args, "task", None))
    if get_method(method).trains:
        raise ConfigError(f"'{method}' must be trained first: promptlab train --method {method} --out DIR, then "
                          "promptlab eval --prompt DIR")
    get_method(method).check_flags(cfg, given_fields(args))
    return cfg


HARD_SETTINGS = tuple(f.name for f in fields(HardConfig))  # what chooses a hard prompt: a saved one brings its own


def prompt_config(cfg: RunConfig, args: argparse.Namespace, own_task: bool) -> RunConfig:
    """`eval --prompt DIR` and `predict --prompt DIR`: the artifact is the prompt, so the settings that would choose
    one (--template, --shots, ...) are refused, not recorded as if used; and the run repeats the one that made it —
    its model, input budget and (on its own task) data, split, evaluation sample size and seed — unless a flag or
    --config sets them. `own_task`: the
    task is the artifact's (no --task given), which eval then takes."""
    from .artifacts import DATA_SETTINGS, artifact_meta, recorded_run  # torch: as above
    from .tasks import artifact_task_ref, get_task

    given = given_fields(args)
    meta = artifact_meta(cfg.prompt)
    hard = [name for name in HARD_SETTINGS if name in given]
    if hard:
        raise ConfigError(f"--{hard[0].replace('_', '-')} chooses a hard prompt to build, but --prompt "
                          f"{cfg.prompt} brings its own ({meta['method']}, template '{meta['template']['name']}'); "
                          "drop the flag")
    if own_task:
        cfg.task = artifact_task_ref(meta)
    same_task = get_task(cfg.task).name == meta["task"]  # a spec file's task too, by the name it declares
    explicit = given | set(load_yaml(args.config) if getattr(args, "config", None) else {})
    for key, value in recorded_run(cfg.prompt).items():
        if key not in explicit and (key not in DATA_SETTINGS or same_task):  # not another task's data
            setattr(cfg, key, value)
    if ((meta.get("extras") or {}).get("chat") or {}).get("messages") is True and "api_endpoint" not in explicit:
        cfg.api.api_endpoint = "chat"  # a conversation made as messages is sent as messages again
    return cfg
