"""One run, end to end: config -> task + backbone + method -> fit -> evaluate -> run directory.

`eval`, `train`, `compare` and `demo` are all this function with different configs, so a number in a
comparison and the same method run alone cannot disagree.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from . import console, devices, placement
from .artifacts import INSPECT_FILE, run_record
from .backbones import Backbone
from .checkpoints import CheckpointPlan
from .config import RunConfig
from .errors import ConfigError
from .evaluation import EvalResult, evaluate
from .inputs import fit_for, fit_inputs, predictor_budget, received_stats
from .inspect_prompt import analyse_predictor
from .methods import FitContext, Predictor, get_method, load_predictor
from .runs import confidence, write_run
from .splits import Data, resolve
from .tasks.base import Task
from .tasks.loaders import recording
from .training import is_main_process, seed_everything


@dataclass
class RunResult:
    metrics: dict[str, Any]
    predictor: Predictor
    eval: EvalResult

    @property
    def row(self) -> dict[str, Any]:
        """The run as a report's table reads it: metrics.json plus the 95% bootstrap intervals (runs.confidence)."""
        return {**self.metrics, "ci": confidence(self.metrics["metrics"], self.eval.records)}


def load_data(task: Task, cfg: RunConfig) -> Data:
    with recording() as files:  # every file the task's loader reads, with its sha256
        splits = task.splits(cfg.data)
    data = resolve(task, splits, cfg)
    spec = task.extras.get("spec_path")
    if spec and Path(spec).is_file():  # the task's definition is data too: its labels and templates
        files.setdefault(str(spec), hashlib.sha256(Path(spec).read_bytes()).hexdigest())
    data.info["files"] = dict(sorted(files.items()))
    return data


def run_one(cfg: RunConfig, backbone: Backbone, task: Task, data: Data, out: Path | None,
            checkpoint: CheckpointPlan | None = None) -> RunResult:
    """`checkpoint`: where a training method checkpoints and resumes from (the CLI's hidden work dir)."""
    devices.reset_peak(backbone.device)
    if backbone.kind == "api":  # its tokens and cost are this run's, not the compare's so far
        backbone.begin_run()
    if cfg.max_new_tokens is not None and backbone.kind == "encoder":
        raise ConfigError(f"--max-new-tokens sets the length of a generated answer, but '{backbone.name}' is an "
                          "encoder, which generates none (it compares the input with the labels); drop the flag")
    plan: dict[str, int] | None = None  # the work a training run is about to do
    if cfg.prompt:
        predictor = load_predictor(cfg.prompt, backbone, task)
        predictor.use_scoring(cfg.scoring)  # the artifact's (config.prompt_config), unless --scoring says otherwise
        if cfg.max_new_tokens and predictor.readout is not None:  # the flag beats the length saved at training
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
            virtual = method.virtual_tokens(cfg)
            train, _ = fit_inputs(task, backbone, template, cfg, train, virtual=virtual)
            dev, _ = fit_inputs(task, backbone, template, cfg, dev, virtual=virtual)
            plan = {"train_examples": len(train), **(method.plan(cfg, len(train)) or {}),
                    "eval_examples": len(data.eval)}
        t0 = time.perf_counter()
        seed_everything(cfg.seed)  # random inits depend on the seed alone, not on what ran before in a compare
        ctx = FitContext(backbone, task, train, dev, cfg, template, checkpoint=checkpoint if method.trains else None,
                         started=functools.partial(say_plan, cfg.method, plan))
        predictor = method.fit(ctx)
        template = predictor.template  # a search method chooses its template while fitting
        # A search (prompt-search) trains nothing but costs time: every fit is timed, so its cost shows.
        train_seconds = time.perf_counter() - t0
        method_name = cfg.method
    predictor.extras["run"] = run_record(cfg)  # what eval --prompt repeats: model, data, input budget
    budget = predictor_budget(predictor, cfg)
    predictor.check_room(budget)
    examples, _ = fit_for(predictor, cfg, data.eval)
    result = evaluate(predictor, task, examples, batch_size=cfg.batch_size, desc=f"{method_name} eval")
    # What the model read, demonstrations and all, tokenised as the backbone tokenises it: not what was selected.
    input_stats = received_stats(predictor, examples, [r["input"] for r in result.records], budget)
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
        "device": backbone.describe() if backbone.kind == "api" else
                  {**devices.describe(backbone.device, backbone.dtype),
                   **({"placement": placed} if (placed := placement.describe(backbone.model)) else {})},
        "versions": versions(), "git": git_revision(), "config": cfg.to_dict(),
    }
    if plan is not None:
        metrics["plan"] = plan
    if backbone.kind == "api":  # the server, how choices were scored, tokens billed and their estimated cost
        metrics["api"] = backbone.report()
    info = predictor.run_info()
    if info:
        metrics["method_info"] = info
    variants = predictor.variants()
    if variants:  # e.g. pez's unprojected soft prompt, on exactly the examples this run is scored on
        metrics["variants"] = {
            name: evaluate(v, task, examples, batch_size=cfg.batch_size, desc=f"{name} eval").metrics
            for name, v in variants.items()}
    if predictor.train_info:  # processes, examples per process, the step a resume began at
        metrics["training"] = predictor.train_info
    if out is not None and is_main_process():  # under torchrun / accelerate launch, rank 0 writes
        extra = {}
        if not cfg.prompt:  # a soft prompt just trained: what it learnt, for the report (which loads no model)
            inspected = analyse_predictor(predictor)
            if inspected is not None:
                extra[INSPECT_FILE] = inspected
        write_run(out, cfg, metrics, result.records, predictor, extra=extra)
    return RunResult(metrics=metrics, predictor=predictor, eval=result)


def say_plan(method: str, plan: dict[str, int] | None) -> None:
    """The plan line on stderr where someone may be waiting on it: at a terminal (as the progress bars), and for a
    long run wherever stderr goes (a log), since that is the run whose size surprises."""
    if plan is None or not is_main_process():
        return
    if console.on_terminal() or plan.get("steps", 0) > LONG_RUN_STEPS:
        print(plan_line(method, plan), file=sys.stderr, flush=True)


LONG_RUN_STEPS = 2000  # above this a CPU run takes hours: the plan line says how to ask for a quick one


def plan_line(method: str, plan: dict[str, int]) -> str:
    """The work a training run is about to do, in one line: the default --train-size is the whole pool (67,149
    SST-2 examples), which nothing else would say before the hours it takes."""
    n, m = plan["train_examples"], plan["eval_examples"]
    if "steps" not in plan:
        return f"promptlab: plan ({method}): {n:,} training examples, fitted in one go; {m:,} evaluation examples"
    line = (f"promptlab: plan ({method}): {n:,} training examples × {plan['epochs']} epochs = {plan['steps']:,} "
            f"optimizer steps (--train-batch-size {plan['batch_size']}, --grad-accum {plan['grad_accum']}); "
            f"{m:,} evaluation examples")
    if plan["steps"] > LONG_RUN_STEPS:
        line += "; for a quick run pass --train-size (e.g. 2000) or --max-steps (e.g. 500)"
    return line


def versions() -> dict[str, str]:
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
