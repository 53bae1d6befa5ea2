"""Example, Template and Task: the nouns every loader, method and metric shares."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError, DataError, unknown

AnswerKind = Literal["choices", "text"]


@dataclass(frozen=True)
class Example:
    """One input (named text fields) and its gold answer.

    `label` is the index into the task's labels for choice tasks; `answers` holds the acceptable
    answer strings for text tasks. `meta` carries what a loader knows beyond the input (HotpotQA's
    raw paragraphs and supporting facts) — never shown to a model at prediction time.
    """

    id: str
    fields: dict[str, str]
    label: int | None = None
    answers: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def with_fields(self, **updates: str) -> Example:
        return Example(self.id, {**self.fields, **updates}, self.label, self.answers, self.meta)


@dataclass(frozen=True)
class Template:
    """A hard prompt: Python format text over the example's fields, e.g. 'Review: {text}\\nSentiment:'.

    `{choices}` expands to the task's verbalizers joined as 'a, b or c'.
    """

    name: str
    text: str

    def fields(self) -> set[str]:
        return {f for _, f, _, _ in string.Formatter().parse(self.text) if f}

    def render(self, example: Example, choices: list[str] | None = None) -> str:
        values = dict(example.fields)
        if choices:
            values["choices"] = ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]
        try:
            return self.text.format(**values)
        except KeyError as e:
            raise DataError(
                f"template '{self.name}' uses field {e} but example '{example.id}' has only "
                f"{sorted(example.fields)}; fix the template or the data's field names"
            ) from None


def _check_unique_ids(task: str, split: str, rows: list[Example], data: str | None) -> None:
    """Ids name examples in predictions.jsonl and keep a demonstration out of its own scoring; a copied row
    would also land on both sides of a carve (train and evaluation). Refused, not deduplicated: which copy is
    right is the user's call, and a silently smaller split would change every number."""
    seen: set[str] = set()
    dups: dict[str, None] = {}
    for ex in rows:
        if ex.id in seen:
            dups[ex.id] = None
        seen.add(ex.id)
    if dups:
        shown = ", ".join(repr(i) for i in list(dups)[:3]) + (f" and {len(dups) - 3} more" if len(dups) > 3 else "")
        raise DataError(f"split '{split}' of task '{task}' repeats example ids {shown} (at {data or 'the hub'}); "
                        "ids must be unique: remove the duplicate rows or give each its own id")


# A context hook: (examples, tokenizer, max_input_tokens, template) -> (examples, stats).
# Tasks with long inputs (HotpotQA) choose what fits the model's budget; others keep the identity.
ContextHook = Callable[[list[Example], Any, int, Template], tuple[list[Example], dict[str, Any]]]
# What of the gold reached the model: (examples, the inputs as the model kept them) -> stats (HotpotQA's answer
# and supporting-sentence survival), measured on the exact text the model read, demonstrations and all.
InputMeasure = Callable[[list[Example], list[str]], dict[str, Any]]
# An input hook: (field, a JSON value that is not a string) -> (the field's text, Example.meta for the context hook),
# None where the task takes only text; ValueError (what the value should be) for a malformed one. HotpotQA reads
# its official context list, so `predict` and the server select paragraphs as `eval` does.
InputHook = Callable[[str, Any], "tuple[str, dict[str, Any]] | None"]


@dataclass
class Task:
    """A named task: how to load its splits, what an answer is, how it is scored and prompted.

    `labels` are canonical label names (as in the data); `verbalizers` the words a generative model
    answers with; `descriptions` the sentences an encoder compares inputs with (zero-shot, anchors).
    `splits(data)` returns every split available, keyed by name ('train', 'dev', 'val', 'test').
    """

    name: str
    description: str
    kind: AnswerKind
    input_fields: list[str]
    templates: list[Template]
    metrics: list[str]
    eval_split: str
    loader: Callable[[str | None], dict[str, list[Example]]]
    labels: list[str] = field(default_factory=list)
    verbalizers: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    fit_context: ContextHook | None = None
    measure_inputs: InputMeasure | None = None
    read_input: InputHook | None = None
    max_new_tokens: int = 16
    extras: dict[str, Any] = field(default_factory=dict)

    def splits(self, data: str | None = None) -> dict[str, list[Example]]:
        out = self.loader(data)
        for name, rows in out.items():
            if not rows:
                raise DataError(f"split '{name}' of task '{self.name}' is empty; check the data at {data or 'the hub'}")
            _check_unique_ids(self.name, name, rows, data)
        return out

    def template(self, name: str | None = None) -> Template:
        if name is None:
            return self.templates[0]
        for t in self.templates:
            if t.name == name:
                return t
        raise unknown(f"template of task '{self.name}'", name, [t.name for t in self.templates])

    def plain_template(self) -> Template:
        """The input with no instruction: what pure soft prompts (and weight baselines) see."""
        if len(self.input_fields) == 1:
            return Template("plain", "{" + self.input_fields[0] + "}")
        return Template("plain", " ".join(f"{f}: {{{f}}}" for f in self.input_fields))

    def label_index(self, value: Any, where: str) -> int:
        """Map a raw label (name, verbalizer, or index as int/str/bool) to its index, or fail naming `where`."""
        key = str(value).strip().lower()
        for i, name in enumerate(self.labels):
            if key == name.lower():
                return i
        for i, word in enumerate(self.verbalizers):
            if key == word.lower():
                return i
        if key.lstrip("-").isdigit() and 0 <= int(key) < len(self.labels):
            return int(key)
        raise DataError(
            f"{where}: label {value!r} is not one of task '{self.name}' labels {self.labels}; "
            "fix the row or choose the task whose labels match"
        )

    @property
    def labels_from_data(self) -> bool:
        """The spec said `labels_from: data`: it names no label and describes any one by `label_description`."""
        return "label_description" in self.extras

    def use_labels(self, names: list[str], where: str) -> None:
        """A spec with `labels_from` names no labels itself: the data's own label file does (TweetEval's
        mapping.txt), or the hub's label feature, or an artifact's record of them, in the data's order. Each
        label is answered with its name and described by the spec's `label_description` with the name in it."""
        if not self.labels_from_data:
            return
        sentence = self.extras["label_description"]
        if len(names) < 2:
            raise DataError(f"{where} names {len(names)} label(s) {names}; a choice task needs at least two")
        self.labels = list(names)
        self.verbalizers = list(names)
        self.descriptions = [sentence.format(label=n) for n in names]

    def check(self) -> None:
        """Internal consistency of a spec; raised at registration so a broken spec fails early."""
        if self.kind == "choices" and not self.labels and self.labels_from_data:
            return  # the labels come with the data
        sizes = {len(self.labels), len(self.verbalizers), len(self.descriptions)}
        if self.kind == "choices" and (not self.labels or len(sizes) != 1):
            raise ConfigError(f"task '{self.name}': labels, verbalizers and descriptions must have equal length")
        # One template is enough: a user who only tunes soft prompts writes the bare input ({text}) and no prompt.
        if not self.templates:
            raise ConfigError(f"task '{self.name}' needs at least one template; for soft prompts alone, the bare "
                              "input: templates: [{name: bare, text: '{text}'}]")
        for t in self.templates:
            extra = t.fields() - set(self.input_fields) - {"choices"}
            if extra:
                raise ConfigError(f"task '{self.name}' template '{t.name}' uses unknown fields {sorted(extra)}")
