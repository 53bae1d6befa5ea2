"""Do soft prompts transfer? Every prompt evaluated on every compatible task, on one frozen backbone.

A cell is the prompt's artifact evaluated on the task's evaluation examples through the same code as
`promptlab eval --prompt` (load_data, fit_inputs, evaluation.evaluate), so the diagonal — a prompt on the
task it was trained for — equals `eval`. Off the diagonal the readout uses the target task's labels;
where the prompt was trained with a label of the same name ('negative', 'positive'), that label keeps
the prompt's own anchor (encoders) or verbalizer (generative models), since it was trained against it;
other labels use the target task's. A cell is "n/a" with its reason when the prompt cannot answer the
task: another answer kind, another backbone, or a template over fields the task does not have.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import plots
from .artifacts import ADAPTER_WEIGHTS, artifact_dir, artifact_meta, check_compatible, load_anchors
from .backbones import Backbone
from .config import RunConfig
from .errors import ConfigError, PromptlabError
from .evaluation import evaluate
from .inputs import fit_inputs, reservations
from .markup import figure_html, md_table, page_html, plain_table_html
from .methods import get_method
from .methods.readout import label_anchors
from .pipeline import load_data
from .runs import check_writable, staged
from .tasks import get_task
from .tasks.base import Task, Template

RESULT_FILES = ("transfer.json", "transfer.md", "transfer.png", "transfer.html")


@dataclass
class Source:
    """One prompt of the matrix: NAME=DIR, its promptlab.json and where its run's data came from."""

    name: str
    path: str
    meta: dict[str, Any]
    data: str | None = None  # --data of the run that trained it, when it records one
    problem: str | None = None  # why it fits no task on this backbone (another model)


@dataclass
class Column:
    task: Task
    data: str | None
    examples: list[Any] = field(default_factory=list)


def parse_pairs(values: list[str], flag: str, example: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{flag} '{v}' needs NAME=VALUE, e.g. {flag} {example}")
        out.append((name.strip(), value.strip()))
    return out


def check_data_names(data: dict[str, str], task_names: list[str]) -> None:
    unknown = sorted(set(data) - set(task_names))
    if unknown:
        raise ConfigError(f"--data names task '{unknown[0]}', which is not a --task; add --task {unknown[0]} or drop it")


def read_sources(pairs: list[tuple[str, str]], backbone: Backbone) -> list[Source]:
    seen: set[str] = set()
    out = []
    for name, path in pairs:
        if name in seen:
            raise ConfigError(f"--prompt name '{name}' is given twice; name each prompt once")
        seen.add(name)
        if not Path(path).is_dir():
            raise ConfigError(f"--prompt {name}={path}: no such directory; pass a run or artifact directory")
        meta = artifact_meta(path)
        family = get_method(meta["method"]).family
        if family != "soft":
            raise ConfigError(f"--prompt {name}={path} is a {family} method ({meta['method']}); transfer compares "
                              "trained soft prompts (prompt-tuning, prefix-tuning, p-tuning, hybrid)")
        src = Source(name, path, meta, data=_recorded_data(path))
        try:
            check_compatible(meta, backbone, None, f"prompt '{name}'")
        except PromptlabError as e:
            src.problem = str(e).split(";")[0]
        if not artifact_dir(path).joinpath(ADAPTER_WEIGHTS).is_file():
            raise ConfigError(f"--prompt {name}={path} has no adapter_model.safetensors; retrain or restore it")
        out.append(src)
    return out


def _recorded_data(path: str) -> str | None:
    """The --data the prompt's run was trained with (metrics.json), when that path still exists here."""
    try:
        data = json.loads((Path(path) / "metrics.json").read_text()).get("config", {}).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return data if isinstance(data, str) and Path(data).exists() else None


def columns(task_names: list[str], data: dict[str, str], sources: list[Source], limit: int | None,
            batch_size: int) -> list[Column]:
    out = []
    for name in task_names:
        task = get_task(name)
        path = data.get(name) or data.get(task.name)
        if path is None:  # the data a prompt of this task was trained on, as its run recorded it
            path = next((s.data for s in sources if s.meta.get("task") == task.name and s.data), None)
        cfg = RunConfig(task=name, data=path, eval_size=limit, batch_size=batch_size)
        out.append(Column(task, path, load_data(task, cfg).eval))
    return out


def _source_labels(meta: dict[str, Any]) -> tuple[list[str], list[str] | None]:
    """The prompt's labels and verbalizers (promptlab.json; older artifacts: its task's spec, if registered)."""
    labels = list(meta.get("labels") or [])
    verbs = meta.get("verbalizers")
    if verbs is None:
        try:
            verbs = get_task(meta["task"]).verbalizers
        except PromptlabError:
            verbs = None
    return labels, list(verbs) if verbs and len(verbs) == len(labels) else None


def mapped_readout(predictor: Any, src: Source, task: Task, backbone: Backbone,
                   target_anchors: torch.Tensor | None, own: torch.Tensor | None) -> list[str]:
    """Point the predictor's readout at `task`: same-named labels keep the prompt's anchor or verbalizer.
    Returns the target labels that kept the prompt's own."""
    labels, verbs = _source_labels(src.meta)
    index = {lb.lower(): j for j, lb in enumerate(labels)}
    kept = [lb for lb in task.labels if lb.lower() in index]
    verbalizers = [verbs[index[lb.lower()]] if verbs and lb.lower() in index else v
                   for lb, v in zip(task.labels, task.verbalizers)]
    mapped = dataclasses.replace(task, verbalizers=verbalizers)
    anchors = None
    if backbone.kind == "encoder" and task.kind == "choices":
        anchors = torch.stack([own[index[lb.lower()]] if own is not None and lb.lower() in index else target_anchors[i]
                               for i, lb in enumerate(task.labels)])
    predictor.retarget(mapped, anchors)
    return kept


def incompatible(src: Source, task: Task) -> str | None:
    if src.problem:
        return src.problem
    kind = "choices" if src.meta.get("labels") else "text"
    if kind != task.kind:
        return f"prompt answers {kind}, task '{task.name}' needs {task.kind}"
    t = src.meta["template"]
    missing = Template(t["name"], t["text"]).fields() - {"choices"} - set(task.input_fields)
    if missing:
        return f"prompt's template uses {sorted(missing)}, task '{task.name}' has {task.input_fields}"
    return None


def run(backbone: Backbone, pairs: list[tuple[str, str]], task_names: list[str], data: dict[str, str],
        limit: int | None, batch_size: int = 32, log: Any = None) -> dict[str, Any]:
    """The whole matrix as plain data (transfer.json)."""
    check_data_names(data, task_names)
    sources = read_sources(pairs, backbone)
    cols = columns(task_names, data, sources, limit, batch_size)
    anchors = {c.task.name: label_anchors(backbone, c.task) if backbone.kind == "encoder" and c.task.kind == "choices"
               else None for c in cols}
    cells = []
    for src in sources:
        predictor, own = None, None
        for col in cols:
            task = col.task
            cell: dict[str, Any] = {"prompt": src.name, "task": task.name, "own": src.meta.get("task") == task.name,
                                    "metric": task.metrics[0], "score": None, "n": len(col.examples)}
            reason = incompatible(src, task)
            if reason:
                cells.append({**cell, "reason": reason})
                continue
            if predictor is None:  # one PEFT load per prompt; its readout is re-pointed per task
                predictor = get_method(src.meta["method"]).load(artifact_dir(src.path), backbone, task, src.meta)
                own = load_anchors(artifact_dir(src.path))
            kept = mapped_readout(predictor, src, task, backbone, anchors[task.name], own)
            examples, _ = fit_inputs(task, backbone, predictor.input_template(), RunConfig(task=task.name), col.examples,
                                     **reservations(predictor))
            res = evaluate(predictor, task, examples, batch_size=batch_size, desc=f"{src.name} on {task.name}")
            cell.update({"score": res.metrics[task.metrics[0]], "metrics": res.metrics, "labels_from_prompt": kept})
            if log:
                log(f"· {src.name} on {task.name}: {task.metrics[0]} {100 * cell['score']:.1f}%")
            cells.append(cell)
        del predictor
    return {
        "model": backbone.name, "limit": limit,
        "prompts": [{"name": s.name, "path": s.path, "method": s.meta["method"], "task": s.meta.get("task")}
                    for s in sources],
        "tasks": [{"name": c.task.name, "data": c.data, "n": len(c.examples), "metric": c.task.metrics[0],
                   "labels": c.task.labels} for c in cols],
        "cells": cells,
    }


# -- output ------------------------------------------------------------------------------------------------
def matrix(result: dict[str, Any]) -> tuple[list[str], list[str], list[list[dict[str, Any]]]]:
    rows = [p["name"] for p in result["prompts"]]
    cols = [t["name"] for t in result["tasks"]]
    at = {(c["prompt"], c["task"]): c for c in result["cells"]}
    return rows, cols, [[at[(r, c)] for c in cols] for r in rows]


def cell_text(c: dict[str, Any]) -> str:
    return "n/a" if c["score"] is None else f"{100 * c['score']:.1f}"


def table(result: dict[str, Any], mark_own: bool = True) -> tuple[list[str], list[list[str]]]:
    rows, cols, grid = matrix(result)
    by_name = {p["name"]: p for p in result["prompts"]}
    header = ["prompt (method, trained on)"] + cols
    body = []
    for r, line in zip(rows, grid):
        p = by_name[r]
        body.append([f"{r} ({p['method']}, {p['task']})"] +
                    [(f"**{cell_text(c)}**" if mark_own and c["own"] and c["score"] is not None else cell_text(c))
                     for c in line])
    return header, body


def notes(result: dict[str, Any]) -> list[str]:
    out = []
    for c in result["cells"]:
        if c["score"] is None:
            out.append(f"{c['prompt']} on {c['task']}: n/a — {c['reason']}")
        elif not c["own"]:
            task = next(t for t in result["tasks"] if t["name"] == c["task"])
            own = c.get("labels_from_prompt", [])
            rest = [lb for lb in task["labels"] if lb not in own]
            out.append(f"{c['prompt']} on {c['task']}: labels {', '.join(own) or 'none'} read out as the prompt was "
                       f"trained" + (f"; {', '.join(rest)} with the task's own" if rest else ""))
    return out


def markdown(result: dict[str, Any]) -> str:
    header, body = table(result)
    metric = ", ".join(sorted({t["metric"] for t in result["tasks"]}))
    lines = [f"# Soft-prompt transfer · {result['model']}", "",
             f"{metric} (%) of each prompt (rows) on each task's evaluation examples (columns; "
             + ", ".join(f"`{t['name']}` n={t['n']}" for t in result["tasks"])
             + "). **Bold**: the prompt's own task. n/a: the prompt cannot answer that task.", ""]
    lines += md_table(header, body)
    lines += ["", "![transfer matrix](transfer.png)", "", "Label mapping by name and n/a reasons:", ""]
    lines += [f"- {n}" for n in notes(result)]
    return "\n".join(lines) + "\n"


def heatmap(result: dict[str, Any]) -> bytes:
    rows, cols, grid = matrix(result)
    return plots.transfer_heatmap([[c["score"] for c in line] for line in grid],
                                  [[c["own"] for c in line] for line in grid], rows, cols)


def html_page(result: dict[str, Any], png: bytes) -> str:
    import html

    header, body = table(result, mark_own=False)
    _, _, grid = matrix(result)

    def own(r: int, i: int, v: str) -> str:  # the prompt's own task in bold
        return f"<b>{html.escape(v)}</b>" if i and grid[r][i - 1]["own"] else html.escape(v)

    title = f"Soft-prompt transfer · {result['model']}"
    fig = figure_html({"name": "transfer", "title": "transfer matrix", "png": png,
                       "caption": "Score (%) of each prompt on each task; outlined: the prompt's own task."})
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes(result))
    return page_html(title, f"<h1>{html.escape(title)}</h1>\n{plain_table_html(header, body, {0}, own)}\n"
                            f"{fig}\n<ul class=\"findings\">{items}</ul>")


def check_out(out: Path) -> None:
    check_writable(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "transfer.json").exists():
        raise ConfigError(f"--out '{out}' is a non-empty directory that holds no transfer matrix; choose another path")


def write(out: Path, result: dict[str, Any]) -> None:
    """All four files or none: built aside and moved into place (runs.staged)."""
    png = heatmap(result)
    with staged(out) as tmp:
        (tmp / "transfer.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
        (tmp / "transfer.md").write_text(markdown(result))
        (tmp / "transfer.png").write_bytes(png)
        (tmp / "transfer.html").write_text(html_page(result, png), encoding="utf-8")
