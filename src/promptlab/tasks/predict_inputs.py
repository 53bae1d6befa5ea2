"""What `promptlab predict` predicts on: a JSONL file holding the task's input fields on each line, or texts
given on the command line for a single-field task. Rows become Examples (no gold answer)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, DataError
from .base import Example, Task


def predict_inputs(input_file: str | None, texts: list[str], task: Task) -> list[Example]:
    if input_file and texts:
        raise ConfigError("predict takes TEXT arguments or --input FILE.jsonl, not both")
    if input_file:
        return read_jsonl_inputs(Path(input_file), task)
    if not texts:
        raise ConfigError("predict needs input: TEXT arguments or --input FILE.jsonl")
    if len(task.input_fields) != 1:
        raise ConfigError(f"task '{task.name}' has fields {task.input_fields}; pass them with --input FILE.jsonl")
    return [Example(str(i), {task.input_fields[0]: t}) for i, t in enumerate(texts)]


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
        empty = [f for f in task.input_fields if row[f] is None]
        if empty:  # str(None) would be predicted on as the text "None"
            raise DataError(f"{path}:{n}: field '{empty[0]}' is null; give it text")
        out.append(Example(str(row.get("id", n)), {f: str(row[f]) for f in task.input_fields}))
    if not out:
        raise DataError(f"--input '{path}' has no rows; add one JSON object per line")
    return out
