"""Run directories: written whole or not at all, and read back for reports.

A run is built in a hidden sibling directory and renamed into place (atomic.py), with metrics.json written
last, so a crash never leaves a directory that looks complete. Read back, a run is its metrics.json plus what
its predictions.jsonl gives a report: a 95% bootstrap interval per metric and, for choice tasks, the
confusion matrix.
"""

from __future__ import annotations

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
from .atomic import replacing, temp_sibling
from .config import RunConfig
from .errors import ConfigError, DataError
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
    with replacing(out, temp_sibling(out)) as tmp:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # deepest first: parents made for this run go too
            try:
                p.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(tmp, ignore_errors=True)


# -- reading runs back (report.py) ------------------------------------------------------------------------
# metric name -> field of a predictions.jsonl record holding that metric per example
PER_EXAMPLE = {"accuracy": "correct", "em": "em", "f1": "score"}


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
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise DataError(f"'{p}' is not a directory; pass run directories or a compare --out directory")
        if (p / "metrics.json").is_file():
            found.append(p)
            continue
        below = sorted({m.parent for depth in ("*", "*/*", "*/*/*") for m in p.glob(f"{depth}/metrics.json")
                        if not any(part.startswith(".") for part in m.relative_to(p).parts)})
        below = [d for d in below if "artifact" not in d.relative_to(p).parts]
        if not below:
            raise DataError(f"'{p}' holds no finished runs (no metrics.json); pass a run or compare directory")
        found += below
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
    run["ci"] = {}
    for name in run.get("metrics", {}):
        key = PER_EXAMPLE.get(name)
        scores = [float(r[key]) for r in records if key in r and r[key] is not None] if key else []
        if scores and len(scores) == len(records):
            lo, hi = bootstrap_ci(scores, n=1000, seed=0)
            run["ci"][name] = [lo, hi]
    has_labels = "correct" in records[0] if records else "accuracy" in run.get("metrics", {})
    run["kind"] = "choices" if has_labels else "text"
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
    return [load_run(p) for p in discover(paths)]
