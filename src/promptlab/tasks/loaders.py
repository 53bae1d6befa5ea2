"""Readers for the public formats a task's data comes in, and the hub fallback.

Every reader turns rows into Examples through `to_example`, so ids, label mapping and the error
messages (file:line and field) are the same whatever the format. Files are read with the stdlib:
a whole file is decoded at once, which makes UTF-8 errors exact to the line and SST-2's 67k rows
load in a fraction of a second.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, first_line
from .base import Example, Task

if TYPE_CHECKING:
    from .spec import TaskSpec

Loader = Callable[["TaskSpec", Task, "str | None"], dict[str, list[Example]]]
Row = tuple[int, dict[str, Any]]  # (line number, column -> value)

# What each format expects, for the "how to fix it" half of error messages.
EXPECTS = {
    "glue-tsv": "a GLUE folder with train.tsv and dev.tsv, or one .tsv file with a header row",
    "sst5": "a folder with stsa.fine.train, stsa.fine.dev or stsa.fine.test, or one of those files",
    "tweeteval": "a TweetEval folder with {split}_text.txt and {split}_labels.txt, e.g. val_text.txt",
    "superglue-jsonl": "a SuperGLUE folder with val.jsonl, and train.jsonl or fewglue/train.jsonl",
    "ag-news-csv": "AG News CSV files without a header, class,title,description, e.g. test.csv",
    "jsonl": "a .jsonl file, or a folder of train/dev/test .jsonl files",
    "csv": "a .csv file with a header row, or a folder of train/dev/test .csv files",
    "hotpotqa": "the official HotpotQA JSON file, e.g. hotpot_dev_distractor_v1.json",
}

_SPLIT_WORDS = {"train", "dev32", "dev", "val", "validation", "test"}

# csv's default field limit (128 KiB) rejects a long document as a "malformed row"; a long text is data:
# it is read whole here and truncated to the model's budget later, like any other input.
csv.field_size_limit(2**31 - 1)

# Byte-order marks of encodings that are not UTF-8, for a message that names the encoding.
_OTHER_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
               b"\xfe\xff": "UTF-16"}

# path -> sha256 of every data file read while `recording()` is active: a run records what it read.
_READ: ContextVar[dict[str, str] | None] = ContextVar("promptlab_files_read", default=None)


@contextmanager
def recording() -> Iterator[dict[str, str]]:
    """Collect {path: sha256} of the data files loaders read inside the block."""
    files: dict[str, str] = {}
    token = _READ.set(files)
    try:
        yield files
    finally:
        _READ.reset(token)


def record_read(path: Path, data: bytes | None = None) -> None:
    files = _READ.get()
    if files is not None:
        files[str(path)] = hashlib.sha256(path.read_bytes() if data is None else data).hexdigest()
_ID_COLUMNS = ("idx", "id", "index")


def split_of(name: str, eval_split: str) -> str:
    """Split name for a file or hub split: the first split word in it ('stsa.fine.dev' -> 'dev').

    'validation' follows the task's own name for its evaluation split (GLUE says 'dev', SuperGLUE
    'val'), so `--split` and `eval_split` mean the same thing whichever source the data came from.
    """
    for token in re.split(r"[^a-z0-9]+", name.lower()):
        if token in _SPLIT_WORDS:
            if token == "validation":
                return eval_split if eval_split in ("dev", "val") else "dev"
            return token
    return Path(name).stem


def to_example(
    spec: TaskSpec,
    task: Task,
    row: Mapping[str, Any],
    split: str,
    n: int,
    where: str,
    skip_unlabelled: bool = False,
) -> Example | None:
    """One row -> Example, or None for an unlabelled row that may be skipped (a test split)."""
    fields = {}
    for name in spec.fields:
        column = spec.columns.get(name, name)
        value = row.get(column)
        if value is None:
            raise DataError(
                f"{where}: row has no '{column}' field (input '{name}' of task '{task.name}'); "
                "add it, or map the field with 'columns' in the task spec"
            )
        if isinstance(value, (dict, list)):
            raise DataError(f"{where}: field '{column}' must be text, got {type(value).__name__}")
        fields[name] = str(value).strip()
    answer_column = spec.label_column if task.kind == "choices" else spec.answer_column
    raw = row.get(answer_column)
    if raw is None or raw == "" or raw == -1 or raw == []:
        if skip_unlabelled:
            return None
        what = "the label" if task.kind == "choices" else "the answer"
        if raw == -1:  # GLUE's and the hub's mark for an unlabelled row (their test splits)
            raise DataError(f"{where}: '{answer_column}' is -1, the mark of an unlabelled row (as in GLUE test "
                            "files); pass a labelled split, or remove the row")
        if answer_column in row:  # present but empty: naming the column as missing would mislead
            raise DataError(f"{where}: '{answer_column}' is empty ({what} is missing, got {raw!r}); "
                            "fill it in or remove the row")
        raise DataError(
            f"{where}: row has no '{answer_column}' field ({what}); add it, or name the "
            f"column with '{'label' if task.kind == 'choices' else 'answer'}_column' in the task spec"
        )
    label, answers = None, ()
    if task.kind == "choices" and spec.label_map:
        key = str(raw).strip()
        if key not in spec.label_map:
            raise DataError(f"{where}: label {raw!r} is not in the label_map of task '{task.name}' "
                            f"({', '.join(spec.label_map)}); fix the row or choose the task whose labels match")
        raw = spec.label_map[key]
        if raw is None:
            return None  # the spec leaves this class out (SST-5's neutral in sst5-binary)
    if task.kind == "choices":
        try:
            label = task.label_index(raw, where)
        except ValueError:  # digits int() cannot read ('²'.isdigit() is True): still just a wrong label
            raise DataError(f"{where}: label {raw!r} is not one of task '{task.name}' labels {task.labels}; "
                            "fix the row or choose the task whose labels match") from None
    elif isinstance(raw, list) and all(isinstance(a, str) for a in raw):
        answers = tuple(raw)
    elif isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        answers = (str(raw),)
    else:
        raise DataError(
            f"{where}: answer '{answer_column}' must be a string or a list of strings, got {raw!r}"
        )
    uid = next((row[c] for c in _ID_COLUMNS if row.get(c) not in (None, "")), None)
    used = {spec.columns.get(f, f) for f in spec.fields} | {answer_column, *_ID_COLUMNS}
    meta = {k: v for k, v in row.items() if k not in used}
    return Example(str(uid) if uid is not None else f"{split}-{n}", fields, label, answers, meta)


def read_text(path: Path) -> str:
    """The whole file as text; missing, unreadable, non-UTF-8 or empty files fail naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions") from None
    record_read(path, data)
    bom = next((name for mark, name in _OTHER_BOMS.items() if data.startswith(mark)), None)
    if bom:
        raise DataError(f"{path}: file is {bom} text (byte-order mark {data[:2].hex(' ')}); re-save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # -sig: a BOM from Excel/Notepad is not part of the first column
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte {data[e.start]:#04x}); re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: file is empty; it should hold the rows of a split")
    return text


def _lines(path: Path) -> list[str]:
    # split('\n'), not splitlines(): tweets and reviews may hold \u2028 or \x85 inside one line.
    text = read_text(path)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _table(path: Path, delimiter: str, header: list[str] | None = None) -> tuple[list[str], Iterable[Row]]:
    """(header, rows) of a CSV/TSV; TSV is unquoted as GLUE writes it; ragged rows fail with their line."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting)
    if header is None:
        header = [h.strip() for h in next(reader)]

    def rows() -> Iterable[Row]:
        try:
            for cells in reader:
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise DataError(
                        f"{path}:{reader.line_num}: {len(cells)} columns, expected {len(header)} "
                        f"({', '.join(header)}); fix the row's separators or quoting"
                    )
                yield reader.line_num, dict(zip(header, cells))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed row ({e})") from None

    return header, rows()


def _jsonl(path: Path) -> Iterable[Row]:
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno}); fix or remove the line"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line, got {type(row).__name__}")
        yield n, row


def _build(
    spec: TaskSpec, task: Task, split: str, path: Path, rows: Iterable[Row], skip_unlabelled: bool = False
) -> list[Example]:
    out = []
    for i, (line, row) in enumerate(rows):
        ex = to_example(spec, task, row, split, i, f"{path}:{line}", skip_unlabelled)
        if ex is not None:
            out.append(ex)
    if not out and not skip_unlabelled:
        raise DataError(f"{path}: no rows; split '{split}' would be empty")
    return out


def _no_data(spec: TaskSpec, task: Task) -> DataError:
    return DataError(f"task '{task.name}' has no default data; pass --data PATH ({EXPECTS[spec.format]})")


def _sources(
    spec: TaskSpec, task: Task, path: str | None, defaults: dict[str, list[str]] | None, ext: str = ""
) -> list[tuple[str, Path]]:
    """(split, file) pairs to read from `path`.

    A single file is one split named from the file. In a folder, the spec's `files` are all required;
    otherwise the format's default names are read where present (the first existing candidate per
    split), or, with no defaults, every file ending in `ext`.
    """
    if path is None:
        raise _no_data(spec, task)
    p = Path(path)
    if p.is_file():
        return [(split_of(p.name, task.eval_split), p)]
    if not p.is_dir():
        raise DataError(f"{path}: no such file or folder; expected {EXPECTS[spec.format]}")
    if spec.files:
        missing = [f for f in spec.files.values() if not (p / f).is_file()]
        if missing:
            raise DataError(
                f"{path}: missing {', '.join(missing)}; task '{task.name}' expects "
                f"{', '.join(spec.files.values())} in this folder"
            )
        return [(split, p / f) for split, f in spec.files.items()]
    if defaults is None:
        found = [(split_of(f.name, task.eval_split), f) for f in sorted(p.glob(f"*{ext}")) if f.is_file()]
    else:
        found = []
        for split, candidates in defaults.items():
            hit = next((p / c for c in candidates if (p / c).is_file()), None)
            if hit is not None:
                found.append((split, hit))
    if not found:
        raise DataError(f"{path}: no data files found; expected {EXPECTS[spec.format]}")
    seen: dict[str, Path] = {}
    for split, f in found:
        if split in seen:  # e.g. train.jsonl and train_full.jsonl: reading both would silently drop one
            raise DataError(
                f"{path}: {seen[split].name} and {f.name} are both split '{split}'; "
                "keep one, or name the files per split with 'files' in the task spec"
            )
        seen[split] = f
    return found


def _glue_tsv(spec: TaskSpec, task: Task, path: str | None) -> dict[str, list[Example]]:
    defaults = {s: [f"{s}.tsv"] for s in ("train", "dev", "test")}
    out = {}
    for split, file in _sources(spec, task, path, defaults):
        header, rows = _table(file, "\t")
        if split == "test" and spec.label_column not in header and task.kind == "choices":
            continue  # GLUE test files carry no labels: nothing to score against
        out[split] = _build(spec, task, split, file, rows)
    return out


def _sst5(spec: TaskSpec, task: Task, path: str | None) -> dict[str, list[Example]]:
    defaults = {s: [f"stsa.fine.{s}"] for s in ("train", "dev", "test")}
    out = {}
    for split, file in _sources(spec, task, path, defaults):
        rows = []
        for n, line in enumerate(_lines(file), 1):
            if not line.strip():
                continue
            label, _, text = line.partition(" ")
            if not label.isdigit() or not text.strip():
                raise DataError(f"{file}:{n}: expected '<label 0-4> <sentence>', got {line[:40]!r}")
            rows.append((n, {"label": label, "text": text}))
        out[split] = _build(spec, task, split, file, rows)
    return out


def _tweeteval(spec: TaskSpec, task: Task, path: str | None) -> dict[str, list[Example]]:
    if path is None:
        raise _no_data(spec, task)
    p = Path(path)
    folder = p.parent if p.is_file() else p
    if p.is_file():
        texts = [folder / (p.name.removesuffix("_labels.txt").removesuffix("_text.txt") + "_text.txt")]
    elif p.is_dir():
        texts = sorted(folder.glob("*_text.txt"))
    else:
        raise DataError(f"{path}: no such file or folder; expected {EXPECTS['tweeteval']}")
    if not texts:
        raise DataError(f"{path}: no *_text.txt files; expected {EXPECTS['tweeteval']}")
    mapping = {}
    label_file_name = LABEL_FILES["tweeteval"]
    if (folder / label_file_name).is_file():
        for line in _lines(folder / label_file_name):
            if line.strip():
                key, _, name = line.strip().partition("\t")
                mapping[key.strip()] = name.strip()
        if task.labels_from_data:  # the data names the labels, in the order of their ids
            ids = sorted(mapping, key=lambda k: int(k) if k.lstrip("-").isdigit() else k)
            task.use_labels([mapping[k] for k in ids], str(folder / label_file_name))
    elif task.labels_from_data:
        raise DataError(f"{folder}: {label_file_name} is missing; task '{task.name}' reads its label names from "
                        "it (lines '<id><TAB><name>', as TweetEval ships them)")
    out = {}
    for text_file in texts:
        prefix = text_file.name.removesuffix("_text.txt")
        label_file = folder / f"{prefix}_labels.txt"
        if not label_file.is_file():
            raise DataError(
                f"{text_file}: its labels file {label_file.name} is missing; TweetEval keeps "
                "labels in {split}_labels.txt beside {split}_text.txt"
            )
        lines, labels = _lines(text_file), _lines(label_file)
        if len(lines) != len(labels):
            raise DataError(
                f"{text_file} has {len(lines)} lines but {label_file} has {len(labels)}; "
                "each tweet needs exactly one label line"
            )
        split = split_of(prefix, task.eval_split)
        rows = []
        for n, (text, label) in enumerate(zip(lines, labels), 1):
            label = label.strip()
            rows.append((n, {"text": text, "label": mapping.get(label, label)}))
        out[split] = _build(spec, task, split, text_file, rows)
    return out


def _superglue(spec: TaskSpec, task: Task, path: str | None) -> dict[str, list[Example]]:
    defaults = {
        "val": ["val.jsonl"],
        "train": ["train.jsonl", "fewglue/train.jsonl"],
        "dev32": ["fewglue/dev32.jsonl"],
        "test": ["test.jsonl"],
    }
    out = {}
    for split, file in _sources(spec, task, path, defaults):
        examples = _build(spec, task, split, file, _jsonl(file), skip_unlabelled=split == "test")
        if examples:  # SuperGLUE's test.jsonl has no labels at all: drop it rather than fail
            out[split] = examples
    return out


# AG's text lost the '&' of its HTML entities (' #39;s', ' quot;'); '#145;'-'#151;' are cp1252 quotes/dashes.
_AG_LOST_AMP = re.compile(r" ?#(\d+);| ?(?<!\w)(quot|amp|lt|gt);")
_AG_SPACE = re.compile(r"\s+")


def _ag_entity(m: re.Match[str]) -> str:
    if m[2]:
        return html.unescape(f"&{m[2]};")
    n = int(m[1])
    if n > 0x10FFFF:
        return m[0]
    return bytes([n]).decode("cp1252", "ignore") if 128 <= n < 160 else chr(n)


def _ag_clean(s: str) -> str:
    """Undo AG's quirks: real entities ('&lt;'), entities that lost their '&', and '\\' for a newline."""
    s = _AG_LOST_AMP.sub(_ag_entity, html.unescape(s))
    return _AG_SPACE.sub(" ", s.replace("\\", " ")).strip()


def _ag_news(spec: TaskSpec, task: Task, path: str | None) -> dict[str, list[Example]]:
    defaults = {s: [f"{s}.csv"] for s in ("train", "dev", "test")}
    out = {}
    for split, file in _sources(spec, task, path, defaults):
        _, table = _table(file, ",", header=["class", "title", "description"])
        rows = []
        for n, row in table:
            title, desc = _ag_clean(row["title"]), _ag_clean(row["description"])
            cls = row["class"].strip()
            # Classes are numbered 1-4 in the files; the task's labels are 0-based. A number outside 1-4
            # must fail as itself: '0' would otherwise read as index 0 and '9' be reported as 8.
            if cls.isdecimal():
                if not 1 <= int(cls) <= len(task.labels):
                    raise DataError(f"{file}:{n}: class {cls!r} is not an AG News class (1-{len(task.labels)}: "
                                    f"{', '.join(task.labels)}); fix the row")
                label: Any = int(cls) - 1
            else:
                label = cls
            joined = f"{title} {desc}" if title.endswith((".", "!", "?")) else f"{title}. {desc}"
            rows.append((n, {"label": label, "title": title, "description": desc, "text": joined}))
        out[split] = _build(spec, task, split, file, rows)
    return out


def _generic(ext: str) -> Loader:
    def load(spec: TaskSpec, task: Task, path: str | None) -> dict[str, list[Example]]:
        out = {}
        for split, file in _sources(spec, task, path, None, ext):
            rows = _jsonl(file) if ext == ".jsonl" else _table(file, ",")[1]
            out[split] = _build(spec, task, split, file, rows)
        return out

    return load


def _hotpotqa(spec: TaskSpec, task: Task, path: str | None) -> dict[str, list[Example]]:
    # Imported on use: HotpotQA's reader and context policy live in their own module.
    hotpotqa = import_module("promptlab.tasks.hotpotqa")
    out = hotpotqa.load_hotpotqa(path)
    if path is not None:  # it reads the JSON itself (json.load on the open file), so record it here
        record_read(hotpotqa._find_file(Path(path)))
    return out


# Formats whose reader loads from the hub itself when given no path (their rows need more than a column map).
HUB_NATIVE = {"hotpotqa"}
# Formats whose folders carry a file naming the labels ('<id><TAB><name>' lines), which a spec may take its
# label names from (`labels_from: data`): the file belongs to the format, so no spec names it.
LABEL_FILES = {"tweeteval": "mapping.txt"}

FORMATS: dict[str, Loader] = {
    "glue-tsv": _glue_tsv,
    "sst5": _sst5,
    "tweeteval": _tweeteval,
    "superglue-jsonl": _superglue,
    "ag-news-csv": _ag_news,
    "jsonl": _generic(".jsonl"),
    "csv": _generic(".csv"),
    "hotpotqa": _hotpotqa,
}


def from_hub(spec: TaskSpec, task: Task) -> dict[str, list[Example]]:
    """Every labelled split of `datasets.load_dataset(**spec.hub)`, rows mapped as local files are."""
    hub = spec.hub or {}
    try:
        import datasets  # heavy: imported only when a task is loaded without local data

        dataset = datasets.load_dataset(**hub)
    except Exception as e:  # noqa: BLE001 -- offline, unknown dataset, bad cache: all mean "use --data"
        reason = first_line(e)[:160]
        raise DataError(
            f"task '{task.name}' has no local data and the hub is unreachable ({reason}); "
            f"pass --data PATH (e.g. {EXPECTS.get(spec.format, 'a local copy')})"
        ) from None
    name = "/".join(str(v) for v in (hub.get("path"), hub.get("name")) if v)
    if task.labels_from_data:  # on the hub, the label feature names the labels
        feature = next(iter(dataset.values())).features.get(spec.label_column)
        task.use_labels(list(getattr(feature, "names", None) or []), f"hub {name} column '{spec.label_column}'")
    out = {}
    for hub_split, rows in dataset.items():
        split = split_of(hub_split, task.eval_split)
        examples = []
        for i, row in enumerate(rows):
            ex = to_example(
                spec, task, row, split, i, f"hub {name} {hub_split} row {i}", skip_unlabelled=True
            )
            if ex is not None:
                examples.append(ex)
        if examples:  # hub test splits are often unlabelled (-1): leave them out
            out[split] = examples
    return out
