"""One run, end to end: config -> task + backbone + method -> fit -> evaluate -> run directory.

`eval`, `train`, `compare` and `demo` are all this function with different configs, so a number in a
comparison and the same method run alone cannot disagree.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backbones import Backbone, virtual_tokens
from .checkpoints import CheckpointPlan
from .config import RunConfig
from .errors import ConfigError
from .evaluation import EvalResult, evaluate
from .methods import FitContext, Predictor, get_method, read_meta
from .methods.adapted import CheckpointedFit
from .methods.soft import SoftMethod
from .runs import write_run
from .splits import Data, resolve
from .tasks import artifact_task
from .tasks.base import Example, Task, Template
from .tasks.loaders import recording
from .training import is_main_process, seed_everything


@dataclass
class RunResult:
    metrics: dict[str, Any]
    predictor: Predictor
    eval: EvalResult


def load_data(task: Task, cfg: RunConfig) -> Data:
    with recording() as files:  # every file the task's loader reads, with its sha256
        splits = task.splits(cfg.data)
    data = resolve(task, splits, cfg)
    spec = task.extras.get("spec_path")
    if spec and Path(spec).is_file():  # the task's definition is data too: its labels and templates
        files.setdefault(str(spec), hashlib.sha256(Path(spec).read_bytes()).hexdigest())
    data.info["files"] = dict(sorted(files.items()))
    return data


def fit_inputs(task: Task, backbone: Backbone, template: Template, cfg: RunConfig, examples: list[Example],
               virtual: int = 0, new_tokens: int | None = None) -> tuple[list[Example], dict[str, Any]]:
    """Long-context tasks choose what fits the token budget around this template. The budget is also what the
    model will keep: on an absolute-position model (GPT-2) the positions left after the `virtual` tokens of a
    soft prompt in front and, for a causal model, the `new_tokens` of its answer after (default the run's), so
    that nothing chosen is cut off again when the input is tokenised."""
    if task.fit_context is None or not examples:
        return examples, {}
    budget = cfg.max_input_tokens or task.extras.get("max_input_tokens") or backbone.max_length
    answer = (new_tokens or cfg.max_new_tokens or task.max_new_tokens) if backbone.kind == "causal" else 0
    room = backbone.input_budget(virtual=virtual, new_tokens=answer)
    return task.fit_context(examples, backbone.tokenizer, int(min(budget, room)), template)


def reserved(predictor: Predictor) -> dict[str, int | None]:
    """fit_inputs' reservations for a trained or loaded predictor: its soft prompt's positions, its answer length."""
    readout = getattr(predictor, "readout", None)
    return {"virtual": virtual_tokens(getattr(predictor, "model", None)),
            "new_tokens": readout.max_new_tokens if readout is not None else None}


def artifact_dir(path: str) -> Path:
    """Accept a run directory or the artifact directory inside it."""
    p = Path(path)
    return p / "artifact" if (p / "artifact").is_dir() else p


def artifact_meta(path: str) -> dict[str, Any]:
    """An artifact's promptlab.json, checked for what loading it needs: a damaged file fails in one line."""
    return read_meta(artifact_dir(path))


def load_predictor(path: str, backbone: Backbone, task: Task | None = None) -> Predictor:
    adir = artifact_dir(path)
    meta = artifact_meta(path)
    backbone.check_fingerprint(meta.get("backbone", {}), f"artifact '{path}'")
    task = artifact_task(meta, task)
    if task.kind == "choices" and meta.get("labels") and meta["labels"] != task.labels:
        raise ConfigError(f"artifact '{path}' predicts labels {meta['labels']} but task '{task.name}' has "
                          f"{task.labels}; evaluate it on the task it was trained for")
    method = get_method(meta["method"])
    return method.load(adir, backbone, task, meta)


def run_one(cfg: RunConfig, backbone: Backbone, task: Task, data: Data, out: Path | None,
            progress: bool = True, checkpoint: CheckpointPlan | None = None) -> RunResult:
    """`checkpoint`: where a training method checkpoints and resumes from (the CLI's hidden work dir)."""
    if cfg.prompt:
        predictor = load_predictor(cfg.prompt, backbone, task)
        if cfg.max_new_tokens and hasattr(predictor, "readout"):  # the flag beats the length saved at training
            predictor.readout.max_new_tokens = cfg.max_new_tokens
        method_name, template, train_seconds = predictor.method, predictor.template, 0.0
    else:
        method = get_method(cfg.method)
        method.check(backbone, task)
        template = method.template_for(task, cfg, backbone.kind)
        train, dev = data.train, data.dev
        if method.trains:
            if not train:
                raise ConfigError(f"method '{cfg.method}' trains but task '{task.name}' has no training examples")
            # a soft prompt (pez's too) takes positions in front of the input on absolute-position models
            virtual = cfg.train.virtual_tokens if isinstance(method, SoftMethod) else 0
            train, _ = fit_inputs(task, backbone, template, cfg, train, virtual=virtual)
            dev, _ = fit_inputs(task, backbone, template, cfg, dev, virtual=virtual)
        t0 = time.perf_counter()
        seed_everything(cfg.seed)  # random inits depend on the seed alone, not on what ran before in a compare
        ctx = (CheckpointedFit(backbone, task, train, dev, cfg, template, checkpoint=checkpoint)
               if method.trains and checkpoint is not None else FitContext(backbone, task, train, dev, cfg, template))
        predictor = method.fit(ctx)
        template = predictor.template  # a search method chooses its template while fitting
        # A search (prompt-search) trains nothing but costs time: every fit is timed, so its cost shows.
        train_seconds = time.perf_counter() - t0
        method_name = cfg.method
    examples, input_stats = fit_inputs(task, backbone, template, cfg, data.eval, **reserved(predictor))
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
        "versions": versions(), "git": git_revision(), "config": cfg.to_dict(),
    }
    info = predictor.run_info()
    if info:
        metrics["method_info"] = info
    variants = predictor.variants()
    if variants:  # e.g. pez's unprojected soft prompt, on exactly the examples this run is scored on
        metrics["variants"] = {name: evaluate(v, task, examples, batch_size=cfg.batch_size).metrics
                               for name, v in variants.items()}
    if getattr(predictor, "train_info", None):  # processes, examples per process, the step a resume began at
        metrics["training"] = predictor.train_info
    if out is not None and is_main_process():  # under torchrun / accelerate launch, rank 0 writes
        extra = {}
        if not cfg.prompt:  # a soft prompt just trained: what it learnt, for the report (which loads no model)
            from .inspect_prompt import INSPECT_FILE, analyse_predictor

            inspected = analyse_predictor(predictor)
            if inspected is not None:
                extra[INSPECT_FILE] = inspected
        write_run(out, cfg, metrics, result.records, predictor, extra=extra)
    return RunResult(metrics=metrics, predictor=predictor, eval=result)


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


@functools.cache
def git_revision() -> dict[str, Any] | None:
    """The commit of promptlab's own checkout (and whether tracked files differ from it), or None.

    Only when the package is imported from a git working tree's src/promptlab, so an installed copy never
    reports the revision of whatever repository it happens to sit in.
    """
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        # --no-optional-locks: `status` must not write the index while someone else commits.
        return subprocess.run(["git", "--no-optional-locks", "-C", str(src), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        if (top / "src" / "promptlab").resolve() != src:
            return None
        return {"revision": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None
