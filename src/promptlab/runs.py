"""Run directories: written whole or not at all, and read back for reports.

A run is built in a hidden sibling directory and renamed into place (atomic.py), with metrics.json written
last, so a crash never leaves a directory that looks complete. Read back, a run is its metrics.json plus what
its predictions.jsonl gives a report: a 95% bootstrap interval per metric and, for choice tasks, the
confusion matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .artifacts import INSPECT_FILE, artifact_bytes
from .atomic import locked, replacing, temp_sibling
from .config import RunConfig
from .errors import ConfigError, DataError, DiskFullError, disk_full
from .methods.base import Predictor
from .metrics import bootstrap_ci

RUN_FILES = ("config.yaml", "metrics.json", "predictions.jsonl")


# What `promptlab report` writes into a directory (report.build), and so what run and sweep directories may hold.
REPORT_MD, REPORT_HTML, PLOTS_DIR = "report.md", "report.html", "plots"
REPORT_FILES = (REPORT_MD, REPORT_HTML, PLOTS_DIR)
# What write_run puts in a run directory, and what a report adds to it: a rerun replaces the directory whole, so
# anything else in it is a user's file and the rerun is refused.
RUN_ENTRIES = frozenset({*RUN_FILES, "artifact", INSPECT_FILE, *REPORT_FILES})


def check_out_dir(out: Path, compare: bool = False) -> None:
    """Fail before any work if --out cannot become a run directory (`compare`: a comparison's), or if writing
    it would delete anything promptlab did not write."""
    check_not_link(out)
    check_writable(out)
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ConfigError(f"--out '{out}' is the current directory or holds it; name a directory for the run, "
                          "e.g. --out runs/NAME")
    if not out.is_dir() or not any(out.iterdir()):
        return
    run = (out / "metrics.json").exists() or (out / "config.yaml").exists()
    comparison = _is_compare_dir(out)
    if compare and run:
        raise ConfigError(f"--out '{out}' is a single run, not a comparison; choose another path")
    if not compare and comparison:
        raise ConfigError(f"--out '{out}' holds a comparison, which a single run would replace; choose another path")
    if not run and not comparison:
        raise ConfigError(f"--out '{out}' is a non-empty directory that is not a promptlab run; choose another path")
    strangers = sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES)
    if run and strangers:
        raise ConfigError(f"--out '{out}' is a run directory that also holds '{strangers[0]}', which rerunning "
                          "would delete; move it away or choose another path")


def check_not_link(out: Path) -> None:
    """A symlinked --out is refused rather than written through: a rerun replaces the run directory whole, which
    would either remove the link (rmtree refuses) or the tree it points to, found only after all the work."""
    if out.is_symlink():
        raise ConfigError(f"--out '{out}' is a symbolic link (to '{os.readlink(out)}'); promptlab does not write "
                          "through links: pass the real directory path, or choose another path")


# What makes two runs the same run for --out: a rerun of it may replace it; another run needs --overwrite.
# `prompt` is the artifact an `eval --prompt` run evaluates (its method is the artifact's).
SAME_RUN = ("task", "model", "method", "data", "prompt")


def recorded_config(run: Path) -> dict[str, Any] | None:
    """The config a finished (or half-finished) run recorded: config.yaml, else metrics.json's `config`."""
    for name, read in (("config.yaml", yaml.safe_load), ("metrics.json", lambda t: json.loads(t).get("config"))):
        try:
            cfg = read((run / name).read_text())
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(cfg, dict):
            return cfg
    return None


def check_same_run(out: Path, config: RunConfig, layout: str = "run") -> None:
    """--out may hold only an earlier run of this same run (SAME_RUN), which the new one then replaces; a
    comparison ('compare', runs one level down) or a sweep ('sweep', two levels down) only runs of the same task,
    model and data, each method in its own folder. Anything else is refused with what differs: `--overwrite`
    says replacing it is meant."""
    depth = {"run": "", "compare": "*/", "sweep": "*/*/"}[layout]
    keys = SAME_RUN if layout == "run" else ("task", "model", "data")
    now = config.to_dict()
    found = {f.parent for name in ("config.yaml", "metrics.json") for f in out.glob(depth + name)
             if not any(part.startswith(".") for part in f.relative_to(out).parts)}  # a killed run's staging
    for run in sorted(found):
        before = recorded_config(run)
        where = "" if run == out else f" in '{run}'"
        if before is None:
            raise ConfigError(f"--out '{out}' holds a run whose config cannot be read{where}; choose another path, "
                              "or pass --overwrite to replace it")
        changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if before.get(k) != now.get(k)]
        if changed:
            raise ConfigError(f"--out '{out}' holds another run{where} ({', '.join(changed)}); choose another "
                              "path, or pass --overwrite to replace it")


def lock_file(out: Path) -> Path:
    """The lock beside --out (`runs/.x.lock` for `runs/x`): it covers the run directory, its staging siblings
    and its checkpoint work directory (`runs/.x.work`), however --out is spelled."""
    out = out.resolve()
    return out.parent / f".{out.name}.lock"


@contextmanager
def claimed(out: Path, config: RunConfig, overwrite: bool = False, layout: str = "run") -> Iterator[Path]:
    """--out for the length of a command: checked before any work (check_out_dir; for a sweep, its own check
    runs inside the block), locked against a second promptlab run writing it at the same time, and refused
    when it holds another run unless `overwrite`. `layout`: 'run', 'compare' or 'sweep'. Under torchrun only
    rank 0 (the writer) takes the lock."""
    if layout == "sweep":  # sweep.check_sweep_out, which continues an earlier sweep, runs inside the block
        check_not_link(out)
        check_writable(out, inside=True)
    else:
        check_out_dir(out, compare=layout == "compare")
    if int(os.environ.get("RANK", "0")) != 0:  # training.is_main_process, without importing the training stack
        yield out
        return
    with locked(lock_file(out), f"--out '{out}'"):
        if not overwrite:
            check_same_run(out, config, layout)
        yield out


def check_writable(out: Path, inside: bool = False) -> None:
    """Whether `out` can be written as a directory: beside it (a run is built in a sibling and renamed into place)
    or, `inside`, in it (a report or a sweep writes into an existing directory). Tried, not inferred from
    permission bits: root ignores them, and a read-only file system does not show in them."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; choose a directory path")
    parent = out if inside and out.is_dir() else out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():  # e.g. --out notes.txt/run: no permission would make that a directory
        raise ConfigError(f"--out '{out}' cannot be created: '{parent}' is a file, not a directory; "
                          "choose another path")
    try:
        Path(tempfile.mkdtemp(prefix=".promptlab-probe-", dir=parent)).rmdir()
    except OSError as e:
        raise ConfigError(f"--out '{out}' is not writable ({e.strerror or type(e).__name__} in '{parent}'); "
                          "choose another path") from None


def _is_compare_dir(out: Path) -> bool:
    """A comparison holds runs one level down (and its report); a run's own report does not make it one."""
    return any((p / "metrics.json").exists() for p in out.iterdir() if p.is_dir() and p.name != "artifact")


def write_run(out: Path, config: RunConfig, metrics: dict[str, Any], records: list[dict[str, Any]],
              predictor: Predictor | None, extra: dict[str, Any] | None = None) -> None:
    """`extra`: more JSON files of the run by name (inspect.json), written before metrics.json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out, temp_sibling(out), f"run '{out}'") as tmp:
        (tmp / "config.yaml").write_text(config.to_yaml())
        for name, value in (extra or {}).items():
            (tmp / name).write_text(json.dumps(value, indent=2, ensure_ascii=False))
        with open(tmp / "predictions.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if predictor is not None:
            predictor.save(tmp / "artifact")
            metrics["artifact_bytes"] = artifact_bytes(tmp / "artifact")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A hidden sibling of `out` to build several runs in (compare); they move into `out` only when all succeed.

    A failure part-way (the third method of a comparison) leaves `out` as it was, byte for byte.
    """
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        yield tmp
        out.mkdir(exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            dest = out / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(entry, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # deepest first: parents made for this run go too
            try:
                p.rmdir()
            except OSError:
                break
        if disk_full(e):  # a run inside named the hidden staging directory
            raise DiskFullError.writing(f"comparison '{out}'", e) from None
        raise
    shutil.rmtree(tmp, ignore_errors=True)


# -- reading runs back (report.py) ------------------------------------------------------------------------
# metric name -> fields of a predictions.jsonl record holding that metric per example, the first found used
# (runs written before records had an "f1" field hold a text task's F1 in "score")
PER_EXAMPLE = {"accuracy": ("correct",), "acc_norm": ("correct_norm",), "em": ("em",), "f1": ("f1", "score")}


def read_run(path: Path) -> dict[str, Any]:
    f = path / "metrics.json"
    if not f.is_file():
        raise DataError(f"'{path}' is not a finished run (no metrics.json); pass a run directory")
    try:
        run = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"'{f}' is not valid JSON; rerun that run") from None
    if not isinstance(run, dict) or not isinstance(run.get("method"), str) or not isinstance(run.get("metrics"), dict):
        raise DataError(f"'{f}' is not a promptlab run's metrics (no 'method' and 'metrics'); pass promptlab run "
                        "directories")
    return run


def discover(paths: list[Path]) -> list[Path]:
    """Run directories under each path: the path itself, or its finished runs up to three levels down
    (a compare dir holds method/ runs; a --train-sizes sweep holds n{size}-s{seed}/method/ runs)."""
    found: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise DataError(f"'{p}' is not a directory; pass run directories or a compare --out directory")
        if (p / "metrics.json").is_file():
            below = [p]
        else:
            below = sorted({m.parent for depth in ("*", "*/*", "*/*/*") for m in p.glob(f"{depth}/metrics.json")
                            if not any(part.startswith(".") for part in m.relative_to(p).parts)})
            below = [d for d in below if "artifact" not in d.relative_to(p).parts]
        if not below:
            raise DataError(f"'{p}' holds no finished runs (no metrics.json); pass a run or compare directory")
        for d in below:  # a directory given twice (or a run and its compare dir) is one run, counted once
            if d.resolve() not in seen:
                seen.add(d.resolve())
                found.append(d)
    return found


def _records(path: Path) -> list[dict[str, Any]]:
    f = path / "predictions.jsonl"
    if not f.is_file():
        return []
    try:
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError:
        raise DataError(f"'{f}' is not valid JSON lines; rerun that run") from None


def _labels(path: Path, records: list[dict[str, Any]]) -> list[str]:
    meta = path / "artifact" / "promptlab.json"
    if meta.is_file():
        try:
            labels = json.loads(meta.read_text()).get("labels") or []
            if labels:
                return list(labels)
        except json.JSONDecodeError:
            pass
    seen: list[str] = []
    for r in records:
        for v in (r.get("gold"), r.get("prediction")):
            if isinstance(v, str) and v not in seen:
                seen.append(v)
    return sorted(seen)


def confidence(metrics: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """A 95% bootstrap interval per metric, from the per-example scores the records hold (none where they lack
    one): what a report shows beside each score, and a single run's table too."""
    out = {}
    for name in metrics:
        keys = PER_EXAMPLE.get(name, ())
        key = next((k for k in keys if records and k in records[0]), None)
        scores = [float(r[key]) for r in records if key in r and r[key] is not None] if key else []
        if scores and len(scores) == len(records):
            lo, hi = bootstrap_ci(scores, n=1000, seed=0)
            out[name] = [lo, hi]
    return out


def load_run(path: Path) -> dict[str, Any]:
    """metrics.json plus what a report derives: seed, per-metric CI, confusion matrix, labels."""
    run = read_run(path)
    records = _records(path)
    cfg = run.get("config")
    if not isinstance(cfg, dict):
        try:
            cfg = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
        except yaml.YAMLError:
            cfg = {}
    run["run_dir"] = str(path)
    run["seed"] = (cfg or {}).get("seed")
    if (cfg or {}).get("prompt"):  # a saved artifact evaluated again: it learnt from the run that trained it
        run["evaluated_artifact"] = True
    run["ci"] = confidence(run.get("metrics", {}), records)
    has_labels = "correct" in records[0] if records else "accuracy" in run.get("metrics", {})
    run["kind"] = "choices" if has_labels else "text"
    ids = "\n".join(sorted(str(r.get("id")) for r in records)).encode()  # which examples were scored, in short
    run["eval_set"] = {"split": run.get("split"), "n": run.get("n_examples"),
                       "ids": hashlib.sha256(ids).hexdigest()[:12] if records else None}
    inspected = path / "inspect.json"  # a soft run's nearest words, norms and movement (inspect_prompt.py)
    if inspected.is_file():
        try:
            run["inspect"] = json.loads(inspected.read_text())
        except json.JSONDecodeError:
            pass
    if run["kind"] == "choices" and records:
        labels = _labels(path, records)
        index = {lb: i for i, lb in enumerate(labels)}
        mat = [[0] * len(labels) for _ in labels]
        for r in records:
            g, p = index.get(r.get("gold")), index.get(r.get("prediction"))
            if g is not None and p is not None:
                mat[g][p] += 1
        run["labels"], run["confusion"] = labels, mat
    return run


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    runs = [load_run(p) for p in discover(paths)]
    check_comparable(runs)
    return runs


def _eval_set(e: dict[str, Any]) -> str:
    return f"split '{e['split']}', {e['n']} examples" + (f", ids {e['ids']}" if e["ids"] else "")


def check_comparable(runs: list[dict[str, Any]]) -> None:
    """One report ranks methods, so its runs must share the model, the task and the evaluation set (split,
    count and the ids scored, from predictions.jsonl): a table or curve mixing them would compare nothing."""
    first = runs[0] if runs else {}
    for r in runs[1:]:
        a, b = first["eval_set"], r["eval_set"]
        differ = [(k, repr(first.get(k)), repr(r.get(k))) for k in ("model", "task")]
        if (a["split"], a["n"]) != (b["split"], b["n"]) or (a["ids"] and b["ids"] and a["ids"] != b["ids"]):
            differ.append(("evaluation set", _eval_set(a), _eval_set(b)))  # ids: only where both have predictions
        for what, x, y in differ:
            if x != y:
                raise DataError(f"'{first['run_dir']}' and '{r['run_dir']}' differ in {what} ({x} vs {y}); a "
                                "report compares runs of one model, task and evaluation set: report them separately")
