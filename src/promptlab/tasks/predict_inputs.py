"""What `promptlab predict` predicts on: a JSONL file holding the task's input fields on each line, or texts
given on the command line for a single-field task. Rows become Examples (no gold answer).

`input_text` is also what the server holds each request field to, so a value `predict` refuses is refused over
HTTP too, in the same words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .base import Example, Task

_JSON_TYPES = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}


def predict_inputs(input_file: str | None, texts: list[str], task: Task) -> list[Example]:
    if input_file and texts:
        raise ConfigError("predict takes TEXT arguments or --input FILE.jsonl, not both")
    if input_file:
        return read_jsonl_inputs(Path(input_file), task)
    if not texts:
        raise ConfigError("predict needs input: TEXT arguments or --input FILE.jsonl")
    if len(task.input_fields) != 1:
        raise ConfigError(f"task '{task.name}' has fields {task.input_fields}; pass them with --input FILE.jsonl")
    field = task.input_fields[0]
    return [Example(str(i), {field: input_text(task, field, t, f"TEXT argument {i + 1}")[0]})
            for i, t in enumerate(texts)]


def input_text(task: Task, field: str, value: Any, where: str) -> tuple[str, dict[str, Any]]:
    """One input field as the model reads it, and the Example.meta it brings: text, or a structured value the task
    reads (HotpotQA's official context list). Anything else would be predicted on as its Python repr; null as
    "None"; a lone surrogate would fail inside the tokenizer (or the JSON writer) with a traceback."""
    if value is None:
        raise DataError(f"{where} is null; give it text")
    meta: dict[str, Any] = {}
    if not isinstance(value, str):
        try:
            read = task.read_input(field, value) if task.read_input is not None else None
        except ValueError as e:
            raise DataError(f"{where} {e}") from None
        if read is None:
            raise DataError(f"{where} must be a string, got {_JSON_TYPES.get(type(value), type(value).__name__)}; "
                            "give it text")
        value, meta = read
    check_unicode(value, where)
    if not value.strip():
        raise DataError(f"{where} is empty; give it text")
    return value, meta


def check_unicode(text: str, where: str) -> None:
    """JSON's "\\ud800" (and undecodable bytes in a command line) decode to a lone surrogate: not a character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where} holds a lone surrogate (U+{ord(text[e.start]):04X} at character {e.start}), which "
                        "is not text; send valid Unicode (UTF-8, surrogates only in pairs)") from None


def read_jsonl_inputs(path: Path, task: Task) -> list[Example]:
    """One Example per JSON line (blank lines skipped), its id the row's `id` or its line number."""
    if path.is_dir():
        raise DataError(f"--input '{path}' is a directory; pass a JSONL file with fields {task.input_fields}")
    if not path.is_file():
        raise DataError(f"--input '{path}' does not exist; pass a JSONL file with fields {task.input_fields}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"--input '{path}' is not UTF-8 text; re-save it as UTF-8 (one JSON object per line)") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: malformed JSON ({e.msg}); fix the line") from None
        missing = [f for f in task.input_fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise DataError(f"{path}:{n}: missing field '{missing[0]}'; task '{task.name}' needs {task.input_fields}")
        fields, meta = {}, {}
        for f in task.input_fields:
            fields[f], more = input_text(task, f, row[f], f"{path}:{n}: field '{f}'")
            meta.update(more)
        uid = row.get("id", n)
        if isinstance(uid, bool) or not isinstance(uid, (str, int)):  # an id is echoed back: no repr of an object
            raise DataError(f"{path}:{n}: 'id' must be a string or a whole number, got {json.dumps(uid)[:40]}; fix it "
                            "or leave it out (the line number is used)")
        check_unicode(str(uid), f"{path}:{n}: 'id'")
        out.append(Example(str(uid), fields, meta=meta))
    if not out:
        raise DataError(f"--input '{path}' has no rows; add one JSON object per line")
    return out
