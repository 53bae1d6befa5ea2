"""Task specs: one YAML file per task, validated into a Task.

Tasks are data so that the hard and the soft arm of a comparison read the same inputs, labels and
prompts. A spec is checked completely when it is read — unknown keys, wrong types, labels YAML read
as booleans — so a typo fails at `promptlab tasks`, not an hour into training.
"""

from __future__ import annotations

import importlib.util
import string
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, DataError, unknown
from ..metrics import KIND_METRICS
from .base import ContextHook, Example, InputHook, InputMeasure, Task, Template
from .loaders import FORMATS, HUB_NATIVE, LABEL_FILES, from_hub

BUNDLED = Path(__file__).resolve().parent.parent / "data"

# key -> kind of value; the checker below knows each kind.
_SCHEMA = {
    "name": "str",
    "description": "str",
    "kind": "str",
    "format": "str",
    "hub": "hub",
    "files": "strmap",
    "fields": "strlist",
    "columns": "strmap",
    "label_column": "str",
    "label_map": "labelmap",
    "answer_column": "str",
    "labels": "strlist",
    "labels_from": "str",  # "data": the label names come with the data (the format's label file, the hub's feature)
    "label_description": "str",  # with labels_from: the sentence describing any label, with {label} in it
    "verbalizers": "strlist",
    "descriptions": "strlist",
    "metrics": "strlist",
    "eval_split": "str",
    "default_data": "str",
    "context": "str",
    "max_new_tokens": "int",
    "max_input_tokens": "int",
    "templates": "templates",
    "instructions": "strlist",  # extra instruction phrasings for prompt-search to combine with the templates
}
_REQUIRED = ("name", "description", "kind", "format", "fields", "metrics", "eval_split", "templates")
_CHOICE_KEYS = ("labels", "verbalizers", "descriptions")


@dataclass(frozen=True)
class TaskSpec:
    """The data half of a spec: where examples come from and how a row becomes an Example."""

    name: str
    format: str
    fields: list[str]
    columns: dict[str, str] = field(default_factory=dict)
    label_column: str = "label"
    answer_column: str = "answer"
    # raw label in the data -> one of the task's labels, or None to drop the row (SST-5's neutral in sst5-binary)
    label_map: dict[str, str | None] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    hub: dict[str, Any] | None = None
    default_data: str | None = None
    source: Path | None = None  # the YAML file, for relative default_data and error messages


def _check_value(key: str, kind: str, value: Any, where: Path) -> None:
    def fail(what: str) -> ConfigError:
        return ConfigError(f"{where}: '{key}' must be {what}, got {value!r}")

    if kind == "str" and not (isinstance(value, str) and value.strip()):
        raise fail("a non-empty string")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise fail("a positive integer")
    if kind == "strlist":
        if not isinstance(value, list) or not value:
            raise fail("a non-empty list of strings")
        for item in value:
            if isinstance(item, bool):
                # YAML 1.1 reads yes/no/true/false unquoted as booleans: the verbalizer 'no' would become False.
                raise ConfigError(
                    f"{where}: '{key}' item {item!r} was read by YAML as a boolean; quote it, "
                    'e.g. ["no", "yes"]'
                )
            if not isinstance(item, str) or not item.strip():
                raise fail("a non-empty list of strings")
    if kind == "strmap" and not (
        isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise fail("a mapping of names to strings")
    if kind == "labelmap" and not (
        isinstance(value, dict) and value
        and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in value)
        and all(v is None or (isinstance(v, str) and v.strip()) for v in value.values())
    ):
        raise fail("a mapping of raw labels to label names (or null to drop those rows)")
    if kind == "hub" and not (isinstance(value, dict) and isinstance(value.get("path"), str)):
        raise fail("a mapping with at least 'path' (arguments of datasets.load_dataset)")
    if kind == "templates":
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise fail("a list of {name, text} mappings")
        for t in value:
            if set(t) != {"name", "text"} or not all(isinstance(v, str) and v for v in t.values()):
                raise ConfigError(
                    f"{where}: each template needs exactly 'name' and 'text' strings, got {t!r}"
                )


def _validate(raw: dict[str, Any], where: Path) -> None:
    for key in raw:
        if key not in _SCHEMA:
            raise ConfigError(f"{where}: {unknown('task spec key', str(key), list(_SCHEMA))}")
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(f"{where}: missing required key '{key}'")
    from_data = "labels_from" in raw
    for key, value in raw.items():
        _check_value(key, _SCHEMA[key], value, where)
    if "\n" in raw["description"].strip():
        raise ConfigError(f"{where}: 'description' must be one line (it is what `promptlab tasks` prints)")
    if raw["kind"] not in ("choices", "text"):
        raise ConfigError(f"{where}: {unknown('kind', raw['kind'], ['choices', 'text'])}")
    if raw["format"] not in FORMATS:
        raise ConfigError(f"{where}: {unknown('format', raw['format'], list(FORMATS))}")
    kind, fits = raw["kind"], KIND_METRICS[raw["kind"]]  # here: an unknown metric would fail after training
    for name in raw["metrics"]:
        if name not in fits:
            raise ConfigError(f"{where}: {unknown(f'metric for a {kind} task', name, list(fits))}")
    if from_data:
        if raw["labels_from"] != "data":
            raise ConfigError(f"{where}: 'labels_from' takes 'data' (the format's reader finds the names), not "
                              f"{raw['labels_from']!r}")
        if raw["kind"] != "choices" or raw["format"] not in LABEL_FILES or "labels" in raw:
            raise ConfigError(f"{where}: 'labels_from' replaces 'labels' in a choices task of format "
                              f"{' or '.join(LABEL_FILES)}")
        # The data names the labels; the spec names none, so a label is answered with its own name and
        # described by one sentence with the name filled in.
        if any(k in raw for k in ("verbalizers", "descriptions")) or "{label}" not in raw.get("label_description", ""):
            raise ConfigError(f"{where}: with 'labels_from', give 'label_description' (a sentence with {{label}} in "
                              "it) instead of 'verbalizers' and 'descriptions'")
    elif "label_description" in raw:
        raise ConfigError(f"{where}: 'label_description' describes labels the data names; it needs 'labels_from'")
    if not from_data and raw["kind"] == "choices":
        for key in _CHOICE_KEYS:
            if key not in raw:
                raise ConfigError(f"{where}: a 'choices' task needs '{key}' (one per label)")
            if len(raw[key]) != len(raw["labels"]):
                raise ConfigError(
                    f"{where}: '{key}' has {len(raw[key])} entries but 'labels' has "
                    f"{len(raw['labels'])}; give one per label"
                )
        for key in ("labels", "verbalizers"):
            # Raw labels are matched case-insensitively against both lists: duplicates would be ambiguous.
            if len({v.lower() for v in raw[key]}) != len(raw[key]):
                raise ConfigError(f"{where}: '{key}' has duplicates (case-insensitive): {raw[key]}")
    if "label_map" in raw:
        wrong = sorted({v for v in raw["label_map"].values() if v is not None} - set(raw.get("labels", [])))
        if raw["kind"] != "choices" or wrong:
            raise ConfigError(f"{where}: 'label_map' must map raw labels to the task's labels "
                              f"{raw.get('labels', [])} (or null); {wrong or 'a text task has none'} is not one")
    stray = set(raw.get("columns", {})) - set(raw["fields"])
    if stray:
        raise ConfigError(
            f"{where}: 'columns' maps {sorted(stray)}, which are not in 'fields' {raw['fields']}"
        )
    names = [t["name"] for t in raw["templates"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: template names must be unique, got {names}")
    for t in raw["templates"]:
        try:
            Template(t["name"], t["text"]).fields()
        except ValueError as e:
            raise ConfigError(
                f"{where}: template '{t['name']}' is not valid format text ({e}); "
                "write literal braces as {{ and }}"
            ) from None
        problem = _render_problem(t["text"], raw["fields"])
        if problem:
            raise ConfigError(f"{where}: template '{t['name']}' {problem}; write fields as {{name}}, "
                              "literal braces as {{ and }}")
    for i, text in enumerate(raw.get("instructions", [])):
        try:
            extra = Template("instruction", text).fields() - set(raw["fields"]) - {"choices"}
            problem = _render_problem(text, raw["fields"])
        except ValueError as e:
            problem = f"is not valid format text ({e})"
        else:
            problem = problem or (f"uses unknown fields {sorted(extra)}" if extra else None)
        if problem:
            raise ConfigError(f"{where}: instruction {i + 1} {problem}; write fields as {{name}}, "
                              "literal braces as {{ and }}")
    context = raw.get("context")
    if context is not None and not (
        context.isidentifier() and importlib.util.find_spec(f"promptlab.tasks.{context}") is not None
    ):
        raise ConfigError(
            f"{where}: 'context' names no module promptlab.tasks.{context} with a fit_context hook"
        )


def _render_problem(text: str, fields: list[str]) -> str | None:
    """What would make a template fail at render time rather than here: '{}', '{text:d}', '{text!x}'.

    Field values are always strings, so a trial render with sample strings finds every format-code
    error; a field nested in a format spec ('{text:{text}}') depends on the value and is refused outright.
    """
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if name == "" or name.isdecimal():
            return f"uses a positional field '{{{name}}}'"
        if "{" in (spec or ""):
            return f"nests a field in the format spec of '{{{name}}}'"
    sample = Example("probe", {f: "sample text" for f in fields})
    try:
        Template("probe", text).render(sample, ["a", "b"])
    except (ValueError, IndexError) as e:  # unknown fields are Task.check's to report, with their names
        return f"cannot be rendered ({e})"
    except DataError:
        pass
    return None


def _context_hook(module: str) -> ContextHook:
    """A hook that imports its module on first use: HotpotQA's context policy pulls in tokenizer code."""

    def fit_context(
        examples: list[Example], tokenizer: Any, max_input_tokens: int, template: Template
    ) -> tuple[list[Example], dict[str, Any]]:
        hook = import_module(f"promptlab.tasks.{module}").fit_context
        return hook(examples, tokenizer, max_input_tokens, template)

    return fit_context


def _measure_hook(module: str) -> InputMeasure:
    """What of the gold reached the model, as the same module measures it (on the inputs the model kept)."""

    def measure_inputs(examples: list[Example], inputs: list[str]) -> dict[str, Any]:
        hook = getattr(import_module(f"promptlab.tasks.{module}"), "measure_inputs", None)
        return hook(examples, inputs) if hook is not None else {}

    return measure_inputs


def _input_hook(module: str) -> InputHook:
    """The context module's `read_input`, imported on first use like its fit_context."""

    def read_input(name: str, value: Any) -> tuple[str, dict[str, Any]] | None:
        hook = getattr(import_module(f"promptlab.tasks.{module}"), "read_input", None)
        return hook(name, value) if hook is not None else None

    return read_input


def _default_data(spec: TaskSpec) -> str | None:
    """'bundled:NAME' -> the package's data/NAME folder; any other path is relative to the spec file."""
    if spec.default_data is None:
        return None
    if spec.default_data.startswith("bundled:"):
        name = spec.default_data.removeprefix("bundled:")
        folder = BUNDLED / name
        if not folder.is_dir():
            raise DataError(
                f"bundled data '{name}' is not installed (expected {folder}); "
                "reinstall promptlab, or pass --data PATH"
            )
        return str(folder)
    path = Path(spec.default_data).expanduser()
    if not path.is_absolute() and spec.source is not None:
        path = spec.source.parent / path
    return str(path)


def load_spec(path: str | Path, expect_name: str | None = None) -> Task:
    """Read, validate and build the Task a YAML spec describes; `expect_name` guards built-in file names."""
    path = Path(path)
    try:
        raw = yaml.load(
            path.read_text(encoding="utf-8-sig"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    except FileNotFoundError:
        raise DataError(
            f"{path}: task spec file not found; pass a registered task name or a YAML spec path"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: task spec is not UTF-8 text; re-save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read task spec ({e.strerror or e}); check the path") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a task spec is a YAML mapping (name, kind, format, fields, templates, ...)"
        )
    _validate(raw, path)
    if expect_name is not None and raw["name"] != expect_name:
        raise ConfigError(f"{path}: spec name '{raw['name']}' must match its file name '{expect_name}'")

    spec = TaskSpec(
        name=raw["name"],
        format=raw["format"],
        fields=list(raw["fields"]),
        columns=dict(raw.get("columns", {})),
        label_column=raw.get("label_column", "label"),
        answer_column=raw.get("answer_column", "answer"),
        label_map={str(k): v for k, v in raw.get("label_map", {}).items()},
        files=dict(raw.get("files", {})),
        hub=raw.get("hub"),
        default_data=raw.get("default_data"),
        source=path,
    )

    def load(data: str | None) -> dict[str, list[Example]]:
        data = data if data is not None else _default_data(spec)
        if data is None and spec.hub is not None and spec.format not in HUB_NATIVE:
            return from_hub(spec, task)
        splits = FORMATS[spec.format](spec, task, data)
        if not splits:  # e.g. only an unlabelled GLUE test.tsv: nothing to train or score on
            raise DataError(
                f"{data}: no labelled split found for task '{task.name}'; pass the folder or "
                "a file of a labelled split (train, dev, val)"
            )
        return splits

    extras: dict[str, Any] = {"spec_path": str(path)}
    if "max_input_tokens" in raw:
        extras["max_input_tokens"] = raw["max_input_tokens"]
    if "instructions" in raw:
        extras["instructions"] = list(raw["instructions"])
    if "labels_from" in raw:  # the labels are filled by the loader (Task.use_labels)
        extras["label_description"] = raw["label_description"]
    task = Task(
        name=raw["name"],
        description=raw["description"].strip(),
        kind=raw["kind"],
        input_fields=spec.fields,
        templates=[Template(t["name"], t["text"]) for t in raw["templates"]],
        metrics=list(raw["metrics"]),
        eval_split=raw["eval_split"],
        loader=load,
        labels=list(raw.get("labels", [])),
        verbalizers=[] if "labels_from" in raw else list(raw.get("verbalizers", [])),
        descriptions=[] if "labels_from" in raw else list(raw.get("descriptions", [])),
        fit_context=_context_hook(raw["context"]) if "context" in raw else None,
        measure_inputs=_measure_hook(raw["context"]) if "context" in raw else None,
        read_input=_input_hook(raw["context"]) if "context" in raw else None,
        max_new_tokens=raw.get("max_new_tokens", 16),
        extras=extras,
    )
    try:
        task.check()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return task
