"""`promptlab`: one entry point, one small function per subcommand.

User mistakes raise PromptlabError and end here as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from .allocator import INFERENCE_COMMANDS, keep_freed_memory
from .config import RunConfig, check_value, from_dict, load_yaml, validate
from .errors import ConfigError, DataError, PromptlabError, first_line

DEMO_METHODS = ["zero-shot", "few-shot", "prompt-tuning", "prefix-tuning", "p-tuning", "hybrid",
                "linear-probe", "lora", "full-finetune"]
# --quick: one of each family, the soft one that works on a sentence encoder (input-level prompt tuning stays near
# chance on MiniLM), on a 240-example training sample: under 2 minutes on 2 cores.
QUICK_METHODS = ["zero-shot", "few-shot", "prefix-tuning", "linear-probe"]


# -- flags -> config ---------------------------------------------------------------------------------
FLAG_MAP = {  # flag dest -> (section, field)
    "task": (None, "task"), "model": (None, "model"), "method": (None, "method"), "data": (None, "data"),
    "split": (None, "split"), "prompt": (None, "prompt"), "limit": (None, "eval_size"),
    "eval_size": (None, "eval_size"), "max_input_tokens": (None, "max_input_tokens"),
    "max_new_tokens": (None, "max_new_tokens"), "batch_size": (None, "batch_size"), "seed": (None, "seed"),
    "epochs": ("train", "epochs"), "lr": ("train", "lr"), "train_size": ("train", "train_size"),
    "virtual_tokens": ("train", "virtual_tokens"), "init": ("train", "init"), "init_text": ("train", "init_text"),
    "max_steps": ("train", "max_steps"), "patience": ("train", "patience"), "train_batch_size": ("train", "batch_size"),
    "template": ("hard", "template"), "shots": ("hard", "shots"), "selection": ("hard", "selection"),
    "candidates": ("hard", "candidates"), "dev_size": ("hard", "search_size"), "search_on": ("hard", "search_on"),
    "checkpoint_every": ("train", "checkpoint_every"), "keep_checkpoints": ("train", "keep_checkpoints"),
    "schedule": ("train", "schedule"), "warmup": ("train", "warmup"), "dtype": (None, "dtype"),
    "train_anchors": ("train", "train_anchors"), "prefix_projection": ("train", "prefix_projection"),
}


def build_config(args: argparse.Namespace) -> RunConfig:
    base: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    cfg = from_dict(RunConfig, base, args.config or "config") if base else RunConfig()
    for dest, (section, name) in FLAG_MAP.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        check_value(name, value, "--" + dest.replace("_", "-"))  # the error names the flag the user typed
        setattr(getattr(cfg, section) if section else cfg, name, value)
    for part, where in ((cfg, "flags"), (cfg.train, "flags"), (cfg.hard, "flags")):
        validate(part, where)
    return cfg


def _config_method(args: argparse.Namespace) -> str | None:
    """The method a --config file names (a run's config.yaml does), so the run can be repeated from it."""
    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    method = data.get("method") if isinstance(data, dict) else None
    return method if isinstance(method, str) else None


def add_common(p: argparse.ArgumentParser, out_required: bool = False, out: bool = True) -> None:
    p.add_argument("--task", help="task name (promptlab tasks) or a task spec YAML")
    p.add_argument("--data", help="data file or folder in the task's official format")
    p.add_argument("--model", help="model alias (minilm), hub id or local directory")
    p.add_argument("--config", help="a YAML config (e.g. a run's config.yaml); flags override it")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--dtype", help="frozen weights' dtype: float32 (default) or bfloat16 (half the memory, faster "
                                   "on CPUs with AMX/AVX512-BF16; trainable parameters stay float32)")
    p.add_argument("--max-input-tokens", type=int, help="input budget; long contexts are selected to fit")
    p.add_argument("--max-new-tokens", type=int, help="generation length for text answers")
    p.add_argument("--template", help="hard-prompt template name of the task")
    p.add_argument("--shots", type=int, help="few-shot demonstrations (per class for choice tasks)")
    p.add_argument("--selection", help="few-shot selection: random, balanced or nearest")
    p.add_argument("--candidates", type=int, help="prompt-search: candidate prompts scored at most (default 30)")
    p.add_argument("--dev-size", type=int, help="prompt-search: labelled examples scoring each candidate (200)")
    p.add_argument("--search-on", help="prompt-search: score candidates on train (default) or dev")
    if out:  # predict writes JSON lines to stdout: an --out it ignored would lose them silently
        p.add_argument("--out", required=out_required, help="run directory to write")


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-size", type=int, help="training examples to use (seeded sample)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default per method)")
    p.add_argument("--virtual-tokens", type=int, help="soft tokens (default 20)")
    p.add_argument("--init", help="soft prompt init: random, vocab, text, labels, or prompt:DIR to start from "
                                  "another run's trained prompt (same method and model; SPoT)")
    p.add_argument("--init-text", help="text for --init text (given alone, it implies --init text)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--patience", type=int, help="early stopping patience in epochs")
    p.add_argument("--train-anchors", action="store_true", default=None,
                   help="encoders, choice tasks: train the label anchors too (a classes x hidden head, initialised "
                        "from the label descriptions)")
    p.add_argument("--prefix-projection", type=int, metavar="H",
                   help="prefix-tuning: train the prefix through an H-wide MLP (Li & Liang); the artifact keeps "
                        "only the computed prefix (default 0: train it directly)")
    p.add_argument("--schedule", help="learning-rate schedule: constant (default) or linear (warm-up, then decay to 0)")
    p.add_argument("--warmup", type=float, help="with --schedule linear: fraction of the planned steps warming up (0.06)")
    p.add_argument("--train-batch-size", type=int, help="training batch size (default 16)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps and at each epoch end (default 100)")
    p.add_argument("--keep-checkpoints", type=int, help="newest checkpoints kept while the run is in progress (2)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run into --out from its last checkpoint (its settings unless "
                        "flags change them); rerunning the same command resumes too")


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage (20 lines) above its error; a mistyped flag gets one line, like every
    other user mistake, and points to --help for the rest."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; see '{self.prog} --help'")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a TCP port; use a number from 0 to 65535, e.g. 8000")
    return int(text)


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="promptlab", description="Prompt engineering vs prompt tuning, measured.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="list registered tasks")
    sub.add_parser("methods", help="list registered methods")

    p = sub.add_parser("eval", help="evaluate a hard method or a saved artifact")
    add_common(p)
    p.add_argument("--method", help="a hard method (zero-shot, few-shot, cot)")
    p.add_argument("--prompt", help="a saved artifact (or run) directory")
    p.add_argument("--split", help="evaluation split (default the task's official one)")
    p.add_argument("--limit", type=int, help="evaluate at most N examples")

    p = sub.add_parser("train", help="train a soft prompt (or baseline) and evaluate it")
    add_common(p, out_required=True)
    add_train(p)
    p.add_argument("--method", help="a soft method or baseline (or the method of --config)")
    p.add_argument("--split")
    p.add_argument("--limit", type=int)

    p = sub.add_parser("predict", help="predict for texts or a JSONL file (JSON lines on stdout)")
    add_common(p, out=False)
    p.add_argument("--prompt", help="a saved artifact (or run) directory")
    p.add_argument("--method", help="a hard method, with --task")
    p.add_argument("--input", help="JSONL file with the task's fields per line")
    p.add_argument("texts", nargs="*", help="input texts (single-field tasks)")

    p = sub.add_parser("compare", help="run several methods and lay them side by side")
    add_common(p, out_required=True)
    add_train(p)
    p.add_argument("--methods", required=True, help="comma-separated method names")
    p.add_argument("--eval-size", type=int)
    p.add_argument("--split")
    p.add_argument("--train-sizes", help="data-efficiency curve: comma-separated training-set sizes (total labelled "
                   "examples, e.g. 8,32,128,512,2000); every method runs at each, into OUT/n{size}-s{seed}/{method}")
    p.add_argument("--seeds", type=int, help="with --train-sizes: seeds per size for sizes <= 128 (default 3)")

    p = sub.add_parser("report", help="write report.md and report.html (plots embedded) from finished runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run, compare or --train-sizes directories")
    p.add_argument("--out", help="report directory (default: the one RUN_DIR given, else their common parent)")
    p.add_argument("--title", help="report title")

    p = sub.add_parser("inspect", help="what a soft prompt learnt: nearest words, norms, movement from its init")
    p.add_argument("dir", metavar="DIR", help="a soft-prompt run directory or its artifact directory")
    p.add_argument("--model", help="the model it was trained on (default: the one the run records)")
    p.add_argument("--top", type=int, default=5, help="nearest vocabulary tokens per soft token (default 5)")
    p.add_argument("--json", action="store_true", help="print the analysis as JSON instead of a table")

    p = sub.add_parser("transfer", help="evaluate soft prompts on each other's tasks: a transfer matrix")
    p.add_argument("--model", required=True, help="the model the prompts were trained on")
    p.add_argument("--prompt", action="append", default=[], metavar="NAME=DIR",
                   help="a soft prompt (run or artifact directory), repeatable")
    p.add_argument("--task", action="append", default=[], metavar="TASK",
                   help="a task to evaluate every prompt on, repeatable (default: the prompts' own tasks)")
    p.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                   help="data for a task, repeatable (default: what the prompt's run of that task used, else "
                        "the task's bundled data)")
    p.add_argument("--limit", type=int, help="evaluate at most N examples per task (seeded sample, as eval --limit)")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    p.add_argument("--out", required=True, help="directory for transfer.json, .md, .png and .html")

    p = sub.add_parser("demo", help="hard vs soft prompts on the bundled sentiment set with MiniLM")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="4 methods, 240 training examples, 2 epochs: under 2 minutes")

    p = sub.add_parser("serve", help="serve many prompts over HTTP from one frozen model (docs at /docs)")
    p.add_argument("--model", required=True, help="model alias (minilm), hub id or local directory")
    p.add_argument("--prompt", action="append", default=[], metavar="NAME=SOURCE",
                   help="a prompt to serve, repeatable: NAME=DIR (artifact or run directory) or "
                        "NAME=METHOD:TASK[:TEMPLATE] for a hard prompt, e.g. zs=zero-shot:sentiment")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="frozen weights' dtype (bfloat16: half the memory, faster on CPUs with AMX/AVX512-BF16)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 0-65535 (0: any free one)")
    p.add_argument("--token", help="bearer token for PUT/DELETE /v1/prompts (default $PROMPTLAB_TOKEN; "
                                   "without one they are off)")
    p.add_argument("--artifact-root", action="append", default=[], metavar="DIR",
                   help="directories PUT may load from, repeatable (default the working directory)")
    p.add_argument("--max-batch", type=int, default=32, help="inputs per model batch (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill (default 5)")
    p.add_argument("--max-queue", type=int, default=256, help="queued requests before 503 (default 256)")
    p.add_argument("--max-inputs", type=int, default=64, help="inputs per request (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size (default 1 MB)")
    p.add_argument("--max-input-chars", type=int, default=10_000, help="characters per input field (default 10000)")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute decoder-only soft prompts every request")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to finish requests in flight on shutdown (default 30)")
    return ap


# -- commands ----------------------------------------------------------------------------------------
def cmd_tasks(args: argparse.Namespace) -> None:
    from .tasks import describe

    for name, desc in describe():
        print(f"{name:<22} {desc}")


def cmd_methods(args: argparse.Namespace) -> None:
    from .methods import describe

    for name, family, summary in describe():
        print(f"{name:<15} {family:<9} {summary}")


def _setup(cfg: RunConfig) -> tuple[Any, Any, Any]:
    from .backbones import load_backbone
    from .pipeline import load_data
    from .tasks import get_task

    task = get_task(cfg.task)
    data = load_data(task, cfg)
    backbone = load_backbone(cfg.model, dtype=cfg.dtype)
    return task, data, backbone


def _print_table(runs: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    from .report import HEADER, rows

    body = rows(runs)
    table = Table(title=title)
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if h in ("method", "family") else "right",
                         min_width=max((len(r[i]) for r in body), default=0))
    for r in body:
        table.add_row(*r)
    _print_wide(table)


def _print_wide(table: Any) -> None:
    """Cells never wrap or shrink (a number cut in two misreads; headers may wrap): the console is made at
    least as wide as the widest cell of every column needs."""
    from rich.console import Console

    wide = Console(width=1000)
    need = wide.measure(table, options=wide.options).maximum  # rich crops (not wraps) below this with min_width
    Console(width=max(120, Console().width, need)).print(table)


def cmd_eval(args: argparse.Namespace) -> None:
    from .pipeline import run_one
    from .runs import check_out_dir

    cfg = build_config(args)
    method = args.method or (None if cfg.prompt else _config_method(args))
    if bool(cfg.prompt) == bool(method):
        raise ConfigError("eval needs exactly one of --method HARD or --prompt DIR")
    if method:
        from .methods import get_method

        if get_method(method).trains:
            raise ConfigError(f"'{method}' must be trained first: promptlab train --method {method} "
                              "--out DIR, then promptlab eval --prompt DIR")
    out = Path(args.out) if args.out else None
    if out:
        check_out_dir(out)
    if cfg.prompt and not getattr(args, "task", None):
        from .artifacts import artifact_meta

        cfg.task = artifact_meta(cfg.prompt)["task"]
    task, data, backbone = _setup(cfg)
    res = run_one(cfg, backbone, task, data, out)
    _print_table([res.metrics], f"{task.name} · {backbone.name}")
    if out:
        print(f"run written to {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from .checkpoints import discard
    from .pipeline import run_one
    from .runs import check_out_dir
    from .training import is_main_process

    _resume_config(args)
    cfg = train_config(args)
    out = Path(args.out)
    check_out_dir(out)
    plan = _checkpoint_plan(args, cfg, out)
    task, data, backbone = _setup(cfg)
    res = run_one(cfg, backbone, task, data, out, checkpoint=plan)
    if is_main_process():
        discard(plan.dir)  # the run directory is complete: its checkpoints have served
        _print_table([res.metrics], f"{task.name} · {backbone.name}")
        print(f"run written to {out}; artifact in {out / 'artifact'}")


def train_config(args: argparse.Namespace) -> RunConfig:
    """`train`'s config, with the checks that need the method (also what bench/ builds its training runs with)."""
    from .methods import get_method

    cfg = build_config(args)
    if not (args.method or _config_method(args)):
        raise ConfigError("train needs --method SOFT, e.g. --method prompt-tuning (promptlab methods lists them)")
    method = get_method(cfg.method)
    if not method.trains:
        raise ConfigError(f"'{cfg.method}' is a {method.family} method and trains nothing; use promptlab eval "
                          f"--method {cfg.method}, or train a soft method (prompt-tuning, prefix-tuning, ...)")
    _check_prompt_flags(args, cfg, method)
    return cfg


def _check_prompt_flags(args: argparse.Namespace, cfg: RunConfig, method: Any) -> None:
    """Flags that shape a soft prompt are refused where nothing would read them, instead of being ignored (and,
    for --init, recorded in the run as if they had been). `compare` keeps them for the members they apply to."""
    from .methods.soft import PROMPT_INIT, SoftMethod

    if cfg.train.prefix_projection and cfg.method != "prefix-tuning":
        raise ConfigError(f"--prefix-projection reparameterises prefix-tuning's prefix; {cfg.method} has none, "
                          "drop the flag")

    given = [flag for flag, key in (("--virtual-tokens", "virtual_tokens"), ("--init", "init"),
                                    ("--init-text", "init_text")) if getattr(args, key, None) is not None]
    if not isinstance(method, SoftMethod):
        if given:
            raise ConfigError(f"{given[0]} shapes a soft prompt; {cfg.method} trains none, drop the flag")
        return
    how = method.init_of(cfg)
    if cfg.train.init_text and how != "text":
        raise ConfigError(f"--init-text is the text that --init text starts from; this run starts from {how}, "
                          "drop one of the two")
    if not method.takes_init() and how != "random" and not how.startswith(PROMPT_INIT):
        flags = [f"--init {cfg.train.init}"] * bool(cfg.train.init) + ["--init-text"] * bool(cfg.train.init_text)
        raise ConfigError(f"{method.name}'s prompt comes from its MLP encoder, which PEFT initialises; drop "
                          f"{' and '.join(flags)}")


def _resume_config(args: argparse.Namespace) -> None:
    """`--resume --out DIR` alone repeats the interrupted run: its recorded config is the base, flags override."""
    if not getattr(args, "resume", False) or getattr(args, "config", None):
        return
    from .checkpoints import saved_config, work_dir

    saved = saved_config(work_dir(Path(args.out)))
    if saved is None:
        raise ConfigError(f"--resume: no checkpoint to resume for --out '{args.out}'; run the command without --resume")
    args.config = str(saved)


def _checkpoint_plan(args: argparse.Namespace, cfg: RunConfig, out: Path, compare: bool = False) -> Any:
    """Checkpoints go to a hidden sibling of --out; a rerun with the same settings continues from them."""
    from .checkpoints import CheckpointPlan, check_resumable, clear_stale_staging, work_dir

    work = work_dir(out)
    ignore = ("method",) if compare else ()
    if check_resumable(work, cfg.to_dict(), explicit=bool(getattr(args, "resume", False)), ignore=ignore):
        clear_stale_staging(out)
    return CheckpointPlan(dir=work, config_file=work / "config.yaml", config_text=cfg.to_yaml())


def cmd_compare(args: argparse.Namespace, methods: list[str] | None = None, title: str | None = None) -> Path:
    from .checkpoints import discard
    from .methods import get_method
    from .pipeline import run_one
    from .report import write_report
    from .runs import check_out_dir, staged
    from .training import is_main_process

    _resume_config(args)
    cfg = build_config(args)
    names = methods or [m.strip() for m in args.methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty; name at least one method, e.g. zero-shot,prompt-tuning")
    for n in names:
        get_method(n)  # unknown names fail before any work
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # both would write the same run directory
        raise ConfigError(f"--methods names '{twice[0]}' twice; list each method once")
    if getattr(args, "seeds", None) is not None and not getattr(args, "train_sizes", None):
        raise ConfigError("--seeds sets the seeds per size of a --train-sizes curve; add --train-sizes, or use "
                          "--seed for one comparison")
    out = Path(args.out)
    if getattr(args, "train_sizes", None):
        return _compare_sizes(args, cfg, names, out, title)
    check_out_dir(out, compare=True)
    plan = _checkpoint_plan(args, cfg, out, compare=True)
    task, data, backbone = _setup(cfg)
    for n in names:
        get_method(n).check(backbone, task)
    runs = []
    main = is_main_process()  # under torchrun / accelerate launch every process trains; rank 0 writes
    # all methods or none: a failure part-way leaves --out as it was (and each method's checkpoints)
    with staged(out) if main else nullcontext(None) as stage:
        for n in names:
            run_cfg = from_dict(RunConfig, {**cfg.to_dict(), "method": n}, "config")
            if main:
                print(f"· {n} …", flush=True)
            res = run_one(run_cfg, backbone, task, data, stage / n if stage else None,
                          checkpoint=replace(plan, dir=plan.dir / n))
            runs.append(res.metrics)
        if stage:
            write_report([stage / n for n in names], stage, title or "promptlab comparison")
    if not main:
        return out / "report.md"
    discard(plan.dir)
    from .report import headline, load_runs

    _print_table(headline(load_runs([out / n for n in names])), title or f"{task.name} · {backbone.name}")
    report = out / "report.md"
    print(f"report written to {report}; open {out / 'report.html'} in a browser (plots embedded)")
    return report


def _compare_sizes(args: argparse.Namespace, cfg: RunConfig, names: list[str], out: Path, title: str | None) -> Path:
    """compare --train-sizes: every method at every size (sweep.py), then one report with the curve."""
    from . import sweep
    from .methods import get_method
    from .report import build, curve, curve_table, headline

    if cfg.train.train_size is not None:
        raise ConfigError("--train-size and --train-sizes exclude each other; give the sizes in --train-sizes")
    sizes = sweep.parse_sizes(args.train_sizes)
    seeds = args.seeds if args.seeds is not None else sweep.DEFAULT_SEEDS
    sweep.plan(sizes, seeds, cfg.seed)  # a bad --seeds fails before any loading
    sweep.check_sweep_out(out)
    task, _, backbone = _setup(cfg)
    for n in names:
        get_method(n).check(backbone, task)
    dirs = sweep.run(cfg, names, out, sizes, seeds, task, backbone, log=lambda m: print(m, flush=True))
    res = build(dirs, out, title or f"data efficiency · {task.name} · {backbone.name}")
    header, body = curve_table(curve(res["runs"]))
    _print_rows(header, body, "data efficiency: headline score (%) by labelled training examples")
    _print_table(headline(res["runs"]), f"largest size · {task.name} · {backbone.name}")
    print(f"report written to {res['md']}; open {res['html']} in a browser (plots embedded)")
    return res["md"]


def _print_rows(header: list[str], body: list[list[str]], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right", min_width=max((len(r[i]) for r in body), default=0))
    for r in body:
        table.add_row(*r)
    _print_wide(table)


def cmd_report(args: argparse.Namespace) -> None:
    from .report import build, headline
    from .runs import check_writable

    dirs = [Path(d) for d in args.run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"'{d}' is not a directory; pass run directories or a compare --out directory")
    out = Path(args.out) if args.out else (dirs[0] if len(dirs) == 1 else Path(os.path.commonpath(
        [str(d.resolve()) for d in dirs])))
    check_writable(out, inside=True)
    res = build(dirs, out, args.title or "promptlab comparison")
    _print_table(headline(res["runs"]), args.title or "promptlab comparison")
    print(f"report written to {res['md']} and {res['html']}")


def cmd_predict(args: argparse.Namespace) -> None:
    """The server's code path (serving.Engine), so `predict` and `serve` cannot drift apart."""
    from .backbones import load_backbone
    from .methods import get_method
    from .serving import Engine, hard_servable, load_servable
    from .tasks import get_task

    cfg = build_config(args)
    if bool(cfg.prompt) == bool(args.method):
        raise ConfigError("predict needs --prompt DIR, or --task T with --method HARD")
    if args.method and get_method(args.method).trains:
        raise ConfigError(f"'{args.method}' must be trained first; pass its artifact with --prompt DIR")
    backbone = load_backbone(cfg.model, dtype=cfg.dtype)
    if cfg.prompt:
        servable = load_servable("predict", cfg.prompt, backbone, cfg, get_task(args.task) if args.task else None)
    else:
        servable = hard_servable("predict", args.method, get_task(cfg.task), backbone, cfg)
    examples = _predict_inputs(args, servable.task)
    engine = Engine(backbone)
    engine.attach(servable)
    for ex, a in zip(examples, engine.predict(servable, examples, batch_size=cfg.batch_size)):
        print(json.dumps({"id": ex.id, "prediction": a.prediction, "score": a.score if a.score is not None else 0.0,
                          "input": a.input}, ensure_ascii=False))


def _predict_inputs(args: argparse.Namespace, task: Any) -> list[Any]:
    from .tasks.base import Example

    if args.input and args.texts:
        raise ConfigError("predict takes TEXT arguments or --input FILE.jsonl, not both")
    if args.input:
        path = Path(args.input)
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
    if not args.texts:
        raise ConfigError("predict needs input: TEXT arguments or --input FILE.jsonl")
    if len(task.input_fields) != 1:
        raise ConfigError(f"task '{task.name}' has fields {task.input_fields}; pass them with --input FILE.jsonl")
    return [Example(str(i), {task.input_fields[0]: t}) for i, t in enumerate(args.texts)]


def cmd_demo(args: argparse.Namespace) -> None:
    ns = parser().parse_args(["compare", "--task", "sentiment", "--model", "minilm", "--methods", "x",
                              "--out", args.out])
    if args.quick:
        ns.epochs, ns.eval_size, ns.train_size = 2, 150, 240
    cmd_compare(ns, QUICK_METHODS if args.quick else DEMO_METHODS,
                title="promptlab demo: hard vs soft prompts · bundled sentiment · all-MiniLM-L6-v2")


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notices) would bury promptlab's own output."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # its retry notices: ten lines before a failed download's one-line error
    except ImportError:
        pass


def cmd_inspect(args: argparse.Namespace) -> None:
    from .backbones import load_backbone
    from .errors import ModelError
    from .inspect_prompt import analyse_dir, artifact_of, recorded_model, summary, table_rows

    if args.top <= 0:
        raise ConfigError(f"--top must be a positive number, got {args.top}; use 1 or more")
    artifact_of(args.dir)  # a missing DIR fails before a model loads
    name = args.model or recorded_model(args.dir)
    if name is None:
        raise ConfigError(f"'{args.dir}' does not record its model; pass --model, the one it was trained on")
    try:
        backbone = load_backbone(name)
    except ModelError as e:
        if args.model:
            raise
        raise ConfigError(f"the run's model '{name}' cannot be loaded here ({str(e).split(': ', 1)[-1][:120]}); "
                          "pass --model") from None
    result = analyse_dir(args.dir, backbone, args.top)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    header, body = table_rows(result)
    _print_rows(header, body, f"{result['method']} · {args.dir} · {backbone.name}")
    print(summary(result))


def cmd_transfer(args: argparse.Namespace) -> None:
    from .backbones import load_backbone
    from .transfer import check_data_names, check_out, parse_pairs, run, table, write

    if not args.prompt:
        raise ConfigError("transfer needs at least one --prompt NAME=DIR, e.g. --prompt sst2=runs/sst2-prefix")
    if args.limit is not None:
        check_value("eval_size", args.limit, "--limit")
    check_value("batch_size", args.batch_size, "--batch-size")
    prompts = parse_pairs(args.prompt, "--prompt", "sst2=runs/sst2-prefix")
    data = dict(parse_pairs(args.data, "--data", "sst2=../shared/data/sst2"))
    tasks = list(dict.fromkeys(args.task))
    if not tasks:  # the prompts' own tasks
        from .artifacts import artifact_meta

        tasks = list(dict.fromkeys(artifact_meta(p)["task"] for _, p in prompts))
    check_data_names(data, tasks)  # before the model loads
    out = Path(args.out)
    check_out(out)
    backbone = load_backbone(args.model)
    result = run(backbone, prompts, tasks, data, args.limit, args.batch_size, log=lambda m: print(m, flush=True))
    write(out, result)
    header, body = table(result, mark_own=False)
    _print_rows(header, body, f"transfer · {backbone.name} · score % (rows: prompts, columns: tasks)")
    print(f"matrix written to {out / 'transfer.md'}; open {out / 'transfer.html'} in a browser")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serving.server import serve

    serve(args)


COMMANDS = {"tasks": cmd_tasks, "methods": cmd_methods, "eval": cmd_eval, "train": cmd_train,
            "predict": cmd_predict, "compare": cmd_compare, "demo": cmd_demo, "report": cmd_report,
            "serve": cmd_serve, "inspect": cmd_inspect, "transfer": cmd_transfer}


def _out_of_memory(e: BaseException) -> bool:
    """torch's allocators raise RuntimeError (CUDA's OutOfMemoryError is one) with these words."""
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    try:
        args = parser().parse_args(argv)
        if args.command in INFERENCE_COMMANDS:
            keep_freed_memory()
        COMMANDS[args.command](args)
    except PromptlabError as e:
        print(f"promptlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("promptlab: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:
        if not (isinstance(e, MemoryError) or _out_of_memory(e)):
            raise  # anything else is a bug and keeps its traceback
        print("promptlab: error: out of memory (" + first_line(e)[:160] + "); lower --batch-size "
              "or --train-batch-size, shorten inputs with --max-input-tokens, or use --dtype bfloat16", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
