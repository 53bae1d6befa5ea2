"""One run, end to end: config -> task + backbone + method -> fit -> evaluate -> run directory.

`eval`, `train`, `compare` and `demo` are all this function with different configs, so a number in a
comparison and the same method run alone cannot disagree.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backbones import Backbone
from .config import RunConfig
from .errors import ConfigError
from .evaluation import EvalResult, evaluate
from .methods import FitContext, Predictor, get_method, read_meta
from .runs import write_run
from .splits import Data, resolve
from .tasks import get_task
from .tasks.base import Example, Task, Template


@dataclass
class RunResult:
    metrics: dict[str, Any]
    predictor: Predictor
    eval: EvalResult


def load_data(task: Task, cfg: RunConfig) -> Data:
    return resolve(task, task.splits(cfg.data), cfg)


def fit_inputs(task: Task, backbone: Backbone, template: Template, cfg: RunConfig,
               examples: list[Example]) -> tuple[list[Example], dict[str, Any]]:
    """Long-context tasks choose what fits the token budget around this template."""
    if task.fit_context is None or not examples:
        return examples, {}
    budget = cfg.max_input_tokens or task.extras.get("max_input_tokens") or backbone.max_length
    return task.fit_context(examples, backbone.tokenizer, int(budget), template)


def artifact_dir(path: str) -> Path:
    """Accept a run directory or the artifact directory inside it."""
    p = Path(path)
    return p / "artifact" if (p / "artifact").is_dir() else p


def load_predictor(path: str, backbone: Backbone, task: Task | None = None) -> Predictor:
    adir = artifact_dir(path)
    meta = read_meta(adir)
    backbone.check_fingerprint(meta.get("backbone", {}), f"artifact '{path}'")
    task = task or get_task(meta["task"])
    if task.kind == "choices" and meta.get("labels") and meta["labels"] != task.labels:
        raise ConfigError(f"artifact '{path}' predicts labels {meta['labels']} but task '{task.name}' has "
                          f"{task.labels}; evaluate it on the task it was trained for")
    method = get_method(meta["method"])
    return method.load(adir, backbone, task, meta)


def run_one(cfg: RunConfig, backbone: Backbone, task: Task, data: Data, out: Path | None,
            progress: bool = True) -> RunResult:
    if cfg.prompt:
        predictor = load_predictor(cfg.prompt, backbone, task)
        method_name, template, train_seconds = predictor.method, predictor.template, 0.0
    else:
        method = get_method(cfg.method)
        method.check(backbone, task)
        template = method.template_for(task, cfg, backbone.kind)
        train, dev = data.train, data.dev
        if method.trains:
            if not train:
                raise ConfigError(f"method '{cfg.method}' trains but task '{task.name}' has no training examples")
            train, _ = fit_inputs(task, backbone, template, cfg, train)
            dev, _ = fit_inputs(task, backbone, template, cfg, dev)
        t0 = time.perf_counter()
        predictor = method.fit(FitContext(backbone, task, train, dev, cfg, template))
        train_seconds = time.perf_counter() - t0 if method.trains else 0.0
        method_name = cfg.method
    examples, input_stats = fit_inputs(task, backbone, template, cfg, data.eval)
    result = evaluate(predictor, task, examples, batch_size=cfg.batch_size)
    total = backbone.total_params
    trainable = predictor.n_trainable()
    metrics: dict[str, Any] = {
        "task": task.name, "model": backbone.name, "method": method_name,
        "family": get_method(method_name).family, "split": data.info.get("eval_split"),
        "n_examples": len(examples), "metrics": result.metrics,
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": round(100.0 * trainable / total, 6) if total else 0.0,
        "artifact_bytes": 0, "train_seconds": round(train_seconds, 3), "eval_seconds": round(result.seconds, 3),
        "eval_examples_per_second": round(result.examples_per_second, 3),
        "train_examples": len(data.train), "dev_examples": len(data.dev), "data": data.info,
        "history": predictor.history, "input_stats": input_stats, "template": template.text,
        "versions": versions(),
    }
    if out is not None:
        write_run(out, cfg, metrics, result.records, predictor)
    return RunResult(metrics=metrics, predictor=predictor, eval=result)


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}
