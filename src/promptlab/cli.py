"""`promptlab`: one entry point, one small function per subcommand.

User mistakes raise PromptlabError and end here as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from .allocator import INFERENCE_COMMANDS, keep_freed_memory
from .config import (
    TRAINING,
    FlagAction,
    RunConfig,
    add_flags,
    build_config,
    check_value,
    eval_config,
    given_fields,
    prompt_config,
    setting,
    train_config,
    typed_name,
)
from .console import print_rows, quiet_libraries
from .errors import ConfigError, DataError, DiskFullError, PromptlabError, disk_full, first_line

DEMO_METHODS = ["zero-shot", "few-shot", "prompt-tuning", "prefix-tuning", "p-tuning", "hybrid",
                "linear-probe", "lora", "full-finetune"]
# --quick: one of each family, the soft one that works on a sentence encoder (input-level prompt tuning stays near
# chance on MiniLM), on a 240-example training sample: under 2 minutes on 2 cores.
QUICK_METHODS = ["zero-shot", "few-shot", "prefix-tuning", "linear-probe"]


# -- flags: generated from the config fields (config.add_flags); those here are not settings of a run -------
def add_common(p: argparse.ArgumentParser, command: str, out_required: bool = False) -> None:
    add_flags(p, command)
    p.add_argument("--config", help="a YAML config (e.g. a run's config.yaml); flags override it")
    if command != "predict":  # predict writes JSON lines to stdout: an --out it ignored would lose them silently
        p.add_argument("--out", required=out_required, help="run directory to write")
        p.add_argument("--overwrite", action="store_true", help="let --out replace a different run (another task, "
                       "model, method or data); a rerun of the same run replaces it without this")
    if command in TRAINING:
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


def _device_flags(p: argparse.ArgumentParser, dtype: bool = True, placement: bool = False) -> None:
    """--device (and --dtype; and --device-map, --max-memory, --offload-dir) for the commands that load a model
    without a run config (serve, inspect, transfer): the same settings, with the same help, as the config's."""
    names = ("device", "dtype")[: 2 if dtype else 1] + (("device_map", "max_memory", "offload_dir") if placement else ())
    for name in names:
        f = setting(RunConfig, name)
        p.add_argument(f"--{name.replace('_', '-')}", default=f.default, choices=f.metadata.get("choices"),
                       metavar=f.metadata.get("metavar"), help=f.metadata["help"])


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="promptlab", description="Prompt engineering vs prompt tuning, measured.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("tasks", help="list registered tasks")
    sub.add_parser("methods", help="list registered methods")

    p = sub.add_parser("eval", help="evaluate a hard method or a saved artifact")
    add_common(p, "eval")

    p = sub.add_parser("train", help="train a soft prompt (or baseline) and evaluate it")
    add_common(p, "train", out_required=True)

    p = sub.add_parser("predict", help="predict for texts or a JSONL file (JSON lines on stdout)")
    add_common(p, "predict")
    p.add_argument("--input", help="JSONL file with the task's fields per line")
    p.add_argument("texts", nargs="*", help="input texts (single-field tasks)")

    p = sub.add_parser("compare", help="run several methods and lay them side by side")
    add_common(p, "compare", out_required=True)
    p.add_argument("--methods", required=True, help="comma-separated method names")
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
    _device_flags(p, dtype=False)
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
    p.add_argument("--eval-size", "--limit", type=int, action=FlagAction,
                   help="evaluate at most N examples per task (seeded sample, as eval --eval-size)")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    _device_flags(p)
    p.add_argument("--out", required=True, help="directory for transfer.json, .md, .png and .html")

    p = sub.add_parser("demo", help="hard vs soft prompts on the bundled sentiment set with MiniLM")
    p.add_argument("--out", default="runs/demo", help="directory for the comparison and its report")
    p.add_argument("--quick", action="store_true", help="4 methods, 240 training examples, 2 epochs: under 2 minutes")

    p = sub.add_parser("serve", help="serve many prompts over HTTP from one frozen model (docs at /docs)")
    p.add_argument("--model", required=True, help="model alias (minilm), hub id or local directory")
    p.add_argument("--prompt", action="append", default=[], metavar="NAME=SOURCE",
                   help="a prompt to serve, repeatable: NAME=DIR (artifact or run directory) or "
                        "NAME=METHOD:TASK[:TEMPLATE] for a hard prompt, e.g. zs=zero-shot:sentiment")
    _device_flags(p, placement=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 0-65535 (0: any free one)")
    p.add_argument("--token", help="bearer token for PUT/DELETE /v1/prompts (default $PROMPTLAB_TOKEN; "
                                   "without one they are off)")
    p.add_argument("--artifact-root", action="append", default=[], metavar="DIR",
                   help="directories PUT may load from, repeatable (default the working directory)")
    p.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                   help="a task's data, repeatable: few-shot demos and prompt-search candidates are chosen from it as "
                        "eval chooses them, and a task that reads its label names from data reads them there "
                        "(default bundled data, else the hub)")
    p.add_argument("--max-batch", type=int, default=32, help="inputs per model batch (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill (default 5)")
    p.add_argument("--max-queue", type=int, default=256, help="queued requests before 503 (default 256)")
    p.add_argument("--max-inputs", type=int, default=64, help="inputs per request (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size (default 1 MB)")
    p.add_argument("--max-input-chars", type=int, default=10_000, help="characters per input field (default 10000)")
    p.add_argument("--no-kv-cache", action="store_true", help="recompute decoder-only soft prompts every request")
    p.add_argument("--engine", choices=("promptlab", "vllm"), default="promptlab",
                   help="who generates: promptlab's own mixed-prompt engine (default), or a vLLM server fed the soft "
                        "prompt as prompt_embeds (decoder-only, input-level soft prompts, generation only)")
    p.add_argument("--vllm-url", metavar="URL", help="with --engine vllm: the vLLM server, started with "
                   "--enable-prompt-embeds (e.g. http://127.0.0.1:8001)")
    p.add_argument("--vllm-model", metavar="NAME", help="with --engine vllm: the model name vLLM serves (default: "
                   "the first of its /v1/models)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to finish requests in flight on shutdown (default 30)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request's body may take to arrive before 408 (default 30)")
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
    from .placement import load_kwargs
    from .tasks import get_task

    task = get_task(cfg.task)
    data = load_data(task, cfg)
    backbone = load_backbone(cfg.model, max_length=cfg.max_input_tokens, dtype=cfg.dtype, device=cfg.device,
                             api=cfg.api,
                             placement=load_kwargs(cfg.device_map, cfg.max_memory, cfg.offload_dir))
    return task, data, backbone


def _print_table(runs: list[dict[str, Any]], title: str) -> None:
    from .report import HEADER, rows

    print_rows(HEADER, rows(runs), title, left=lambda i, h: h in ("method", "family"))


def _out(args: argparse.Namespace) -> Path | None:
    """--out as a path; an empty one (`--out ''`, an unset shell variable) is refused, not read as 'no --out'
    (eval would write nothing) or as '.'."""
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out is empty; name a directory, e.g. --out runs/NAME")
    return Path(args.out) if args.out is not None else None


def cmd_eval(args: argparse.Namespace) -> None:
    from contextlib import nullcontext

    from .pipeline import run_one
    from .runs import claimed

    cfg = eval_config(args)
    out = _out(args)
    with claimed(out, cfg, args.overwrite) if out else nullcontext():
        task, data, backbone = _setup(cfg)
        res = run_one(cfg, backbone, task, data, out)
    _print_table([res.row], f"{task.name} · {backbone.name}")
    if out:
        print(f"run written to {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from .checkpoints import discard, plan_for
    from .pipeline import run_one
    from .runs import claimed
    from .training import is_main_process

    out = _out(args)
    _resume_config(args)
    cfg = train_config(args)
    with claimed(out, cfg, args.overwrite):  # the lock covers the checkpoint work dir too
        plan = plan_for(out, cfg, args.resume)
        task, data, backbone = _setup(cfg)
        res = run_one(cfg, backbone, task, data, out, checkpoint=plan)
        if not is_main_process():
            return
        discard(plan.dir)  # the run directory is complete: its checkpoints have served
    _print_table([res.row], f"{task.name} · {backbone.name}")
    print(f"run written to {out}; artifact in {out / 'artifact'}")


def _resume_config(args: argparse.Namespace) -> None:
    """`--resume --out DIR` alone repeats the interrupted run: its recorded config is the base, flags override."""
    if not getattr(args, "resume", False) or getattr(args, "config", None):
        return
    from .checkpoints import saved_config, work_dir

    saved = saved_config(work_dir(Path(args.out)))
    if saved is None:
        raise ConfigError(f"--resume: no checkpoint to resume for --out '{args.out}'; run the command without --resume")
    args.config = str(saved)


def cmd_compare(args: argparse.Namespace, methods: list[str] | None = None, title: str | None = None) -> Path:
    from . import sweep
    from .checkpoints import plan_for
    from .report import headline, load_runs
    from .runs import claimed

    out = _out(args)
    _resume_config(args)
    cfg = build_config(args)
    names = methods or [m.strip() for m in args.methods.split(",") if m.strip()]
    sweep.check_methods(names, getattr(args, "seeds", None), getattr(args, "train_sizes", None))
    sweep.check_flags(names, cfg, given_fields(args))
    if getattr(args, "train_sizes", None):
        with claimed(out, cfg, getattr(args, "overwrite", False), layout="sweep"):
            return _compare_sizes(args, cfg, names, out, title)
    with claimed(out, cfg, getattr(args, "overwrite", False), layout="compare"):
        plan = plan_for(out, cfg, getattr(args, "resume", False), compare=True)
        task, data, backbone = _setup(cfg)
        dirs = sweep.compare(cfg, names, out, task, data, backbone, plan, title or "promptlab comparison",
                             log=lambda m: print(m, flush=True))
    if dirs is None:  # not the main process of a distributed run
        return out / "report.md"
    _print_table(headline(load_runs(dirs)), title or f"{task.name} · {backbone.name}")
    print(f"report written to {out / 'report.md'}; open {out / 'report.html'} in a browser (plots embedded)")
    return out / "report.md"


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
    print_rows(header, body, "data efficiency: headline score (%) by labelled training examples")
    _print_table(headline(res["runs"]), f"largest size · {task.name} · {backbone.name}")
    print(f"report written to {res['md']}; open {res['html']} in a browser (plots embedded)")
    return res["md"]


def cmd_report(args: argparse.Namespace) -> None:
    from .report import build, headline
    from .runs import check_writable

    dirs = [Path(d) for d in args.run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"'{d}' is not a directory; pass run directories or a compare --out directory")
    out = _out(args) or (dirs[0] if len(dirs) == 1 else Path(os.path.commonpath(
        [str(d.resolve()) for d in dirs])))
    check_writable(out, inside=True)
    res = build(dirs, out, args.title or "promptlab comparison")
    _print_table(headline(res["runs"]), args.title or "promptlab comparison")
    print(f"report written to {res['md']} and {res['html']}")


def cmd_predict(args: argparse.Namespace) -> None:
    """The server's code path (serving.Engine), so `predict` and `serve` cannot drift apart."""
    from .backbones import load_backbone
    from .methods import get_method
    from .placement import load_kwargs
    from .serving import Engine, hard_servable, load_servable
    from .tasks import get_task
    from .tasks.predict_inputs import predict_inputs

    cfg = build_config(args)
    if bool(cfg.prompt) == bool(args.method):
        raise ConfigError("predict needs --prompt DIR, or --task T with --method HARD")
    if args.method and get_method(args.method).trains:
        raise ConfigError(f"'{args.method}' must be trained first; pass its artifact with --prompt DIR")
    if cfg.prompt:  # the run that made it: its model and input budget, unless flags say otherwise
        prompt_config(cfg, args, own_task=False)
    else:
        get_method(args.method).check_flags(cfg, given_fields(args))
    backbone = load_backbone(cfg.model, max_length=cfg.max_input_tokens, dtype=cfg.dtype, device=cfg.device,
                             placement=load_kwargs(cfg.device_map, cfg.max_memory, cfg.offload_dir))
    if cfg.prompt:
        servable = load_servable("predict", cfg.prompt, backbone, cfg, get_task(args.task) if args.task else None)
    else:
        servable = hard_servable("predict", args.method, get_task(cfg.task), backbone, cfg)
    examples = predict_inputs(args.input, args.texts, servable.task)
    engine = Engine(backbone)
    engine.attach(servable)
    for ex, a in zip(examples, engine.predict(servable, examples, batch_size=cfg.batch_size)):
        print(json.dumps({"id": ex.id, "prediction": a.prediction, "score": a.score if a.score is not None else 0.0,
                          "input": a.input}, ensure_ascii=False))


def cmd_demo(args: argparse.Namespace) -> None:
    _out(args)
    ns = parser().parse_args(["compare", "--task", "sentiment", "--model", "minilm", "--methods", "x",
                              "--out", args.out])
    if args.quick:
        ns.epochs, ns.eval_size, ns.train_size = 2, 150, 240
    cmd_compare(ns, QUICK_METHODS if args.quick else DEMO_METHODS,
                title="promptlab demo: hard vs soft prompts · bundled sentiment · all-MiniLM-L6-v2")


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
        backbone = load_backbone(name, device=args.device)
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
    print_rows(header, body, f"{result['method']} · {args.dir} · {backbone.name}")
    print(summary(result))


def cmd_transfer(args: argparse.Namespace) -> None:
    from .backbones import load_backbone
    from .transfer import check_data_names, check_out, parse_pairs, run, table, write

    if not args.prompt:
        raise ConfigError("transfer needs at least one --prompt NAME=DIR, e.g. --prompt sst2=runs/sst2-prefix")
    check_value(setting(RunConfig, "eval_size"), args.eval_size, typed_name(args, "eval_size"))
    check_value(setting(RunConfig, "batch_size"), args.batch_size, "--batch-size")
    prompts = parse_pairs(args.prompt, "--prompt", "sst2=runs/sst2-prefix")
    data = dict(parse_pairs(args.data, "--data", "sst2=../shared/data/sst2"))
    tasks = list(dict.fromkeys(args.task))
    if not tasks:  # the prompts' own tasks
        from .artifacts import artifact_meta

        tasks = list(dict.fromkeys(artifact_meta(p)["task"] for _, p in prompts))
    check_data_names(data, tasks)  # before the model loads
    out = _out(args)
    check_out(out)
    backbone = load_backbone(args.model, dtype=args.dtype, device=args.device)
    result = run(backbone, prompts, tasks, data, args.eval_size, args.batch_size, log=lambda m: print(m, flush=True))
    write(out, result)
    header, body = table(result, mark_own=False)
    print_rows(header, body, f"transfer · {backbone.name} · score % (rows: prompts, columns: tasks)")
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
    quiet_libraries()
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
    except Exception as e:
        if disk_full(e):  # a write outside a run or checkpoint (a report's files): one line too
            where = getattr(e, "filename", None)
            print(f"promptlab: error: {DiskFullError.writing(repr(where) if where else 'a file', e)}", file=sys.stderr)
            return DiskFullError.exit_code
        if not (isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and _out_of_memory(e))):
            raise  # anything else is a bug and keeps its traceback
        print("promptlab: error: out of memory (" + first_line(e)[:160] + "); lower --batch-size "
              "or --train-batch-size, shorten inputs with --max-input-tokens, or use --dtype bfloat16", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
