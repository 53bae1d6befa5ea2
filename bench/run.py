"""promptlab's benchmark suite: P1–P5 against the seed recipe and against this machine's own matmul limit.

    python bench/run.py                          # all five; writes bench/results/<name>.json and the
                                                 # summary table in bench/README.md (`make bench`)
    python bench/run.py --only P1,P4 --repeats 5 --threads 2

Method, the same for every comparison:
- Each side of a comparison runs in its own fresh process (peak RSS is per process), and the sides alternate
  A B A B A B within one invocation, so both see the same load on a shared machine. A record's `ratio` is the
  median of the per-pair ratios (promptlab ÷ baseline, or the fraction for P4); min/max are over the pairs.
- Every process runs with the same thread count (`--threads`, default 1: OMP/MKL threads and the tokenizers'
  thread pool). On a machine shared with other jobs a multi-threaded OpenMP process stalls whenever one of
  its threads is descheduled, and a batch-1 loop suffers from that far more than a batched one; one thread
  per process keeps the ratio about the software rather than about the neighbours' load.
- The baseline is `../shared/peer/seed_recipe.py`, run unchanged as its own command (its own timers, its own
  JSON line); promptlab runs its real code paths: the CLI's parser and config, `pipeline.run_one`, the
  training loop, the task's context selection.
- The load average is recorded at the start and end of every benchmark.

`--size tiny` runs everything on a tiny T5 in seconds (tests/test_bench.py uses it so the suite cannot rot);
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEED = SHARED / "peer" / "seed_recipe.py"
DATA = SHARED / "data" / "hotpotqa" / "hotpot_dev_distractor_v1.0-299.json"
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
MARK_START, MARK_END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


@dataclass
class Size:
    """How big each benchmark is. `full` is what bench/results holds; `tiny` only proves the code runs."""

    p1_questions: int = 32  # HotpotQA questions answered per repeat
    p2_steps: int = 4  # training steps of batch 8 per repeat (P2, P3)
    p4_steps: int = 1  # timed training steps per repeat (P4)
    matmul_n: int = 2048  # square fp32 matmul for the machine's limit
    p5_examples: int = 300
    batch: int = 8  # training batch size, as in the seed (per_device_train_batch_size=8)
    max_new_tokens: int = 63  # the seed's generate(max_length=64) for T5 = decoder start + 63 new tokens
    max_input_tokens: int = 512


SIZES = {"full": Size(), "tiny": Size(p1_questions=2, p2_steps=1, p4_steps=1, matmul_n=128, p5_examples=12,
                                      batch=2, max_new_tokens=4, max_input_tokens=64)}


# ------------------------------------------------------------------------------------------ environment


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "RAYON_NUM_THREADS": str(threads),  # the Rust tokenizers' pool (the seed's; promptlab's CLI turns it off)
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
    })
    return env


def machine(threads: int) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "platform": platform.platform()}


def versions() -> dict[str, str]:
    import accelerate
    import datasets
    import peft
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "datasets": datasets.__version__,
            "tokenizers": tokenizers.__version__}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ------------------------------------------------------------------------------------------------ jobs
# A job is one measured process: a promptlab worker (this file, `job KIND`) or the seed recipe's own command.
# In-process mode (tests) calls the same functions directly; its timings and RSS are meaningless.


@dataclass
class Runner:
    threads: int = 1
    inprocess: bool = False
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)

    def promptlab(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        if self.inprocess:
            return JOBS[kind](spec)
        cmd = [sys.executable, str(Path(__file__).resolve()), "job", kind, json.dumps(spec)]
        return self._run(cmd)

    def seed(self, args: list[str]) -> dict[str, Any]:
        if self.inprocess:
            return _seed_inprocess(args)
        return self._run([sys.executable, str(SEED), "run", *args])

    def _run(self, cmd: list[str]) -> dict[str, Any]:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, env=thread_env(self.threads), cwd=ROOT)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"benchmark job failed ({p.returncode}): {' '.join(cmd)[:300]}\n{p.stderr[-3000:]}")
        return json.loads(lines[-1])


def _seed_inprocess(args: list[str]) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("seed_recipe", SEED)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ns = argparse.Namespace(model=None, data=str(DATA), train=200, eval=50, epochs=5.0, max_steps=-1,
                            fix_context=False)
    it = iter(args)
    for a in it:
        key = a.lstrip("-").replace("-", "_")
        if key == "fix_context":
            ns.fix_context = True
        else:
            val = next(it)
            ns.__dict__[key] = type(getattr(ns, key))(val) if getattr(ns, key) is not None else val
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mod.run(ns)
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def _threads(spec: dict[str, Any], inference: bool = False) -> None:
    import torch

    from promptlab.allocator import keep_freed_memory

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as promptlab.cli.main does
    if inference:  # as promptlab.cli.main does for eval/predict/serve/transfer; training keeps glibc's defaults
        keep_freed_memory()
    torch.set_num_threads(int(spec.get("threads") or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()))


def _cli_config(argv: list[str]) -> Any:
    """The config the `promptlab` CLI builds from these arguments (same parser, same validation: a recorded command
    must be one the CLI accepts)."""
    from promptlab.cli import parser
    from promptlab.config import build_config, train_config

    args = parser().parse_args(argv)
    return train_config(args) if args.command == "train" else build_config(args)


def _setup(cfg: Any, attention: str | None = None) -> tuple[Any, Any, Any]:
    """What the CLI's _setup does. `attention="sdpa"` keeps transformers' attention (the "before" arm)."""
    from promptlab.backbones import load_backbone
    from promptlab.pipeline import load_data
    from promptlab.tasks import get_task

    task = get_task(cfg.task)
    # The seed's script imports peft at its top, before its timers start; promptlab imports it on first use, inside
    # run_one. Import it here too, so neither side's timed region pays for loading a library (0.17 s).
    import peft  # noqa: F401

    return task, load_data(task, cfg), load_backbone(cfg.model, max_length=cfg.max_input_tokens, attention=attention,
                                                     dtype=cfg.dtype)


def job_eval(spec: dict[str, Any]) -> dict[str, Any]:
    """`promptlab eval ...` minus process start and model loading: run_one (context selection, batched
    generation, metrics, run directory) is timed whole, so promptlab pays for everything the seed's loop does."""
    from promptlab.pipeline import run_one

    _threads(spec, inference=True)
    cfg = _cli_config(spec["argv"])
    task, data, backbone = _setup(cfg, spec.get("attention"))
    with tempfile.TemporaryDirectory(dir=spec.get("tmp")) as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        res = run_one(cfg, backbone, task, data, Path(tmp) / "run")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    m = res.metrics
    preds = [r["prediction"] for r in res.eval.records]
    return {"examples": m["n_examples"], "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "examples_per_s": m["n_examples"] / seconds,
            "generate_examples_per_s": m["eval_examples_per_second"],
            "max_new_tokens": getattr(res.predictor, "max_new_tokens", None),
            "input_tokens": m["input_stats"].get("input_tokens"), "predictions_sha1": _sha(preds),
            "predictions": preds, "peak_rss_mb": peak_rss_mb()}


def job_train(spec: dict[str, Any]) -> dict[str, Any]:
    """`promptlab train ...` with the training loop timed from its call to the end of its last step (the dev
    evaluation that follows is excluded, as the seed's timer excludes its evaluation)."""
    from promptlab.methods import adapted
    from promptlab.pipeline import run_one

    _threads(spec)
    cfg = _cli_config(spec["argv"])
    task, data, backbone = _setup(cfg, spec.get("attention"))
    marks: list[tuple[str, float, int]] = []
    cpu: list[float] = []  # process CPU time at the loop's start and at its first dev evaluation
    original = adapted.train_loop

    def timed_loop(*args: Any, **kw: Any) -> Any:
        loss_fn, dev_fn = kw.pop("loss_fn"), kw.pop("dev_fn")  # fit_adapted passes both by keyword

        def loss_w(m: Any, idx: list[int]) -> Any:
            marks.append(("step", time.perf_counter(), len(idx)))
            return loss_fn(m, idx)

        def dev_w(m: Any) -> float:
            marks.append(("dev", time.perf_counter(), 0))
            cpu.append(time.process_time())
            return dev_fn(m)

        marks.append(("start", time.perf_counter(), 0))
        cpu.append(time.process_time())
        return original(*args, loss_fn=loss_w, dev_fn=dev_w, **kw)

    adapted.train_loop = timed_loop
    try:
        with tempfile.TemporaryDirectory(dir=spec.get("tmp")) as tmp:
            res = run_one(cfg, backbone, task, data, Path(tmp) / "run")
    finally:
        adapted.train_loop = original
    end = next(i for i, mk in enumerate(marks) if mk[0] == "dev")
    steps = [mk for mk in marks[:end] if mk[0] == "step"]
    bounds = [mk[1] for mk in steps] + [marks[end][1]]
    step_s = [b - a for a, b in itertools.pairwise(bounds)]
    seconds = marks[end][1] - marks[0][1]
    n = sum(mk[2] for mk in steps)
    return {"steps": len(steps), "examples": n, "train_seconds": round(seconds, 3),
            "train_cpu_seconds": round(cpu[1] - cpu[0], 3), "train_examples_per_s": n / seconds,
            "train_loss": [h.get("train_loss") for h in res.metrics.get("history", [])],
            "step_seconds": [round(s, 3) for s in step_s],
            "step_seconds_median": statistics.median(step_s[1:] if len(step_s) > 2 else step_s),
            "peak_rss_mb": peak_rss_mb()}


def job_flops(spec: dict[str, Any]) -> dict[str, Any]:
    """P4 in one process: a prompt-tuning training step (promptlab's loss, optimizer and clipping, as in
    training.py) timed and FLOP-counted, alternated with a dense fp32 matmul at the same thread count."""
    import torch
    from peft import get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from promptlab.inputs import fit_inputs
    from promptlab.methods import get_method
    from promptlab.methods.readout import Readout
    from promptlab.training import make_optimizer, seed_everything

    _threads(spec)
    cfg = _cli_config(spec["argv"])
    task, data, backbone = _setup(cfg)
    method = get_method("prompt-tuning")
    template = method.template_for(task, cfg, backbone.kind)
    examples, _ = fit_inputs(task, backbone, template, cfg, data.train[: spec["batch"]])
    inputs = [template.render(e) for e in examples]
    seed_everything(0)
    model = get_peft_model(backbone.model, method.peft_config(backbone, cfg.train.virtual_tokens))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(method.optimizer, params, method.default_lr, 0.0)
    readout = Readout(backbone, task)
    model.train()

    def step() -> None:
        loss = readout.loss(model, inputs, examples)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    n = spec["matmul_n"]
    a, b = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a.bfloat16(), b.bfloat16()

    def matmul_rate(x: torch.Tensor = a, y: torch.Tensor = b) -> float:
        reps = max(3, int(4e10 // (2 * n**3)))  # ~40 GFLOP per measurement
        with torch.inference_mode():
            x @ y
            t0 = time.perf_counter()
            for _ in range(reps):
                x @ y
            return 2 * n**3 * reps / (time.perf_counter() - t0)

    pairs = []
    for _ in range(spec["repeats"]):  # A B A B: the step and the machine's limit under the same load
        t0 = time.perf_counter()
        for _ in range(spec["steps"]):
            step()
        step_s = (time.perf_counter() - t0) / spec["steps"]
        pairs.append({"step_seconds": step_s, "step_flops_per_s": flops / step_s, "matmul_flops_per_s": matmul_rate(),
                      "bf16_matmul_flops_per_s": matmul_rate(a16, b16)})
    return {"step_flops": flops, "pairs": pairs, "input_tokens": [len(x) for x in backbone.tokenizer(inputs)["input_ids"]],
            "batch": len(inputs), "threads": torch.get_num_threads()}


def job_preprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """Everything promptlab does to turn loaded HotpotQA examples into model inputs: context selection for the
    token budget (inputs.fit_inputs) and the tokenisation the training loop does per batch (lm_batch)."""
    from promptlab.methods import get_method
    from promptlab.inputs import fit_inputs

    _threads(spec, inference=True)
    cfg = _cli_config(spec["argv"])
    task, _, backbone = _setup(cfg)
    examples = task.splits(cfg.data)["dev"][: spec["examples"]]
    template = get_method("prompt-tuning").template_for(task, cfg, backbone.kind)
    b = spec["batch"]
    t0 = time.perf_counter()
    fitted, stats = fit_inputs(task, backbone, template, cfg, examples)
    inputs = [template.render(e) for e in fitted]
    tokens = 0
    for s in range(0, len(inputs), b):
        batch = backbone.lm_batch(inputs[s : s + b], [e.answers[0] for e in fitted[s : s + b]])
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - t0
    return {"examples": len(examples), "seconds": round(seconds, 4), "examples_per_s": len(examples) / seconds,
            "input_tokens": stats.get("input_tokens"), "answer_survival": stats.get("answer_survival"),
            "tokens": tokens}


JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "eval": job_eval, "train": job_train, "flops": job_flops, "preprocess": job_preprocess}


def _sha(items: list[str]) -> str:
    import hashlib

    return hashlib.sha1("\x00".join(items).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- the suite


@dataclass
class Context:
    model: str
    data: str
    size: Size
    repeats: int
    runner: Runner
    work: Path
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def official_rows(ids: list[str], data: str) -> list[dict[str, Any]]:
    rows = {r["_id"]: r for r in json.loads(Path(data).read_text())}
    return [rows[i] for i in ids]


def promptlab_split(ctx: Context, argv: list[str]) -> Any:
    from promptlab.pipeline import load_data
    from promptlab.tasks import get_task

    cfg = _cli_config(argv)
    return load_data(get_task(cfg.task), cfg)


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def record(rid: str, metric: str, unit: str, target: str, pairs: list[tuple[float, float]], commands: dict[str, str],
           better: str, extra: dict[str, Any] | None = None, names: tuple[str, str] = ("promptlab", "baseline")) -> dict:
    """One record: per-pair ratios (A ÷ B), their median as `ratio`, raw values of both sides."""
    ratios = [a / b for a, b in pairs]
    r = statistics.median(ratios)
    met = None
    if target:
        op, value = target.split()
        met = r >= float(value) if op == ">=" else r <= float(value)
    a_vals, b_vals = [a for a, _ in pairs], [b for _, b in pairs]
    return {"id": rid, "metric": metric, "unit": unit, "ratio": round(r, 4), "target": target, "met": met,
            "better": better, **{k: round(v, 4) for k, v in summarise(ratios).items() if k != "median"},
            "median": round(statistics.median(a_vals), 4), "min_value": round(min(a_vals), 4),
            "max_value": round(max(a_vals), 4), "repeats": len(pairs),
            names[0]: {k: round(v, 4) for k, v in summarise(a_vals).items()} | {"values": [round(v, 4) for v in a_vals]},
            names[1]: {k: round(v, 4) for k, v in summarise(b_vals).items()} | {"values": [round(v, 4) for v in b_vals]},
            "ratios": [round(x, 4) for x in ratios], "command": commands, **(extra or {})}


def _cpu_summary(ratios: list[float]) -> dict[str, Any]:
    """Stock CPU seconds ÷ promptlab CPU seconds per pair: with one thread, far less load-sensitive than wall time."""
    return {"median": round(statistics.median(ratios), 4), "min": round(min(ratios), 4), "max": round(max(ratios), 4),
            "values": [round(r, 4) for r in ratios]}


def _fmt(cmd: list[str]) -> str:
    return " ".join(cmd)


def bench_p1(ctx: Context) -> list[dict]:
    s, work = ctx.size, ctx.work
    art = work / "p1-artifact"
    shutil.rmtree(art, ignore_errors=True)
    dev_cfg = work / "bench-config.yaml"
    dev_cfg.write_text("train:\n  dev_size: 2\n")
    common = ["--task", "hotpotqa", "--data", ctx.data, "--model", ctx.model,
              "--max-input-tokens", str(s.max_input_tokens), "--max-new-tokens", str(s.max_new_tokens)]
    # A prompt-tuning artifact (20 random virtual tokens, one step: speed does not depend on its values), so both
    # sides generate through a PEFT prompt-tuned model, as the seed's loop does after its training.
    train_argv = ["train", "--method", "prompt-tuning", "--init", "random", "--train-size", str(s.batch),
                  "--epochs", "1", "--max-steps", "1", "--train-batch-size", str(s.batch), "--config", str(dev_cfg),
                  "--out", str(art), *common]
    from promptlab.cli import main as cli_main

    with contextlib.redirect_stdout(io.StringIO()):
        if ctx.runner.inprocess:
            assert cli_main(train_argv) == 0
        else:
            subprocess.run([sys.executable, "-m", "promptlab.cli", *train_argv], check=True, capture_output=True,
                           env=thread_env(ctx.runner.threads), cwd=ROOT)
    eval_argv = ["eval", "--prompt", str(art), "--limit", str(s.p1_questions), *common]
    data = promptlab_split(ctx, eval_argv)
    ids = [e.id for e in data.eval]
    # The seed answers rows[train : train + eval] of its --data file: give it a file whose rows after the 8
    # training rows are exactly promptlab's evaluation questions, in the same order.
    all_rows = json.loads(Path(ctx.data).read_text())
    filler = [r for r in all_rows if r["_id"] not in set(ids)][: s.batch]
    seed_file = work / "p1-seed-data.json"
    seed_file.write_text(json.dumps(filler + official_rows(ids, ctx.data)))
    seed_args = ["--model", ctx.model, "--data", str(seed_file), "--train", str(len(filler)), "--eval", str(len(ids)),
                 "--max-steps", "1", "--fix-context"]
    bf16_argv = [*eval_argv, "--dtype", "bfloat16"]
    pairs, pairs16, extra_a, extra_b, extra_c = [], [], [], [], []
    for i in range(ctx.repeats):  # A B C A B C: promptlab, seed, promptlab with --dtype bfloat16
        a = ctx.runner.promptlab("eval", {"argv": eval_argv})
        b = ctx.runner.seed(seed_args)
        c = ctx.runner.promptlab("eval", {"argv": bf16_argv})
        ctx.runner.log(f"P1 repeat {i + 1}: promptlab {a['examples_per_s']:.3f} ex/s, seed {b['eval_examples_per_s']:.3f} "
                       f"ex/s, promptlab --dtype bfloat16 {c['examples_per_s']:.3f} ex/s")
        assert a["examples"] == b["eval_examples"] == c["examples"] == len(ids)
        assert a["max_new_tokens"] == s.max_new_tokens, a
        pairs.append((a["examples_per_s"], b["eval_examples_per_s"]))
        pairs16.append((c["examples_per_s"], b["eval_examples_per_s"]))
        extra_a.append(a)
        extra_b.append(b)
        extra_c.append(c)
    agree = _agreement(extra_a[0].pop("predictions"), extra_c[0]["predictions"])
    for r in extra_a + extra_c:
        r.pop("predictions", None)
    cmds = {"promptlab": "promptlab " + _fmt(eval_argv) + "   (timed: pipeline.run_one, model already loaded)",
            "baseline": f"python {SEED} run " + _fmt(seed_args) + "   (timed: its eval loop, eval_examples_per_s)",
            "artifact": "promptlab " + _fmt(train_argv)}
    note = ("same model dir, same questions in the same order, inputs capped at "
            f"{s.max_input_tokens} tokens (seed: truncation; promptlab: context selection), "
            f"{s.max_new_tokens} new tokens at most (seed: max_length={s.max_new_tokens + 1})")
    return [record("P1", "HotpotQA answers generated per second", "examples/s", ">= 10", pairs, cmds, "higher",
                   {"questions": len(ids), "promptlab_runs": extra_a, "baseline_runs": extra_b, "note": note}),
            record("P1", "HotpotQA answers per second, promptlab --dtype bfloat16 (opt-in; seed fp32)", "examples/s",
                   ">= 10", pairs16, {**cmds, "promptlab": "promptlab " + _fmt(bf16_argv)}, "higher",
                   {"questions": len(ids), "bf16_runs": extra_c, "agreement_with_fp32": agree,
                    "note": note + "; bf16 answers differ from fp32 ones where greedy decoding meets a near-tie "
                                   "(agreement_with_fp32)"})]


def _agreement(a: list[str], b: list[str]) -> dict[str, float]:
    """How close bf16 answers are to fp32 ones: identical answers, and the HotpotQA F1 of one against the other."""
    from promptlab import metrics

    return {"identical": round(sum(x == y for x, y in zip(a, b)) / max(len(a), 1), 4),
            # identical answers count 1: HotpotQA's F1 gives 0 to two answers that normalise to nothing
            "mean_f1": round(sum(1.0 if x == y else metrics.f1(y, [x]) for x, y in zip(a, b)) / max(len(a), 1), 4)}


def _train_argv(ctx: Context, method: str, steps: int, dev_cfg: Path) -> list[str]:
    s = ctx.size
    init = ["--init", "random"] if method != "full-finetune" else []  # train refuses soft-prompt flags for it
    return ["train", "--task", "hotpotqa", "--data", ctx.data, "--model", ctx.model, "--method", method,
            *init, "--train-size", str(steps * s.batch), "--epochs", "1", "--max-steps", str(steps),
            "--train-batch-size", str(s.batch), "--max-input-tokens", str(s.max_input_tokens),
            "--max-new-tokens", "8", "--limit", "1", "--config", str(dev_cfg), "--out", str(ctx.work / "unused")]


def bench_p2(ctx: Context) -> list[dict]:
    s = ctx.size
    dev_cfg = ctx.work / "bench-config.yaml"
    dev_cfg.write_text("train:\n  dev_size: 2\n")
    argv = _train_argv(ctx, "prompt-tuning", s.p2_steps, dev_cfg)
    data = promptlab_split(ctx, argv)
    train_rows = official_rows([e.id for e in data.train], ctx.data)
    evals = official_rows([data.eval[0].id], ctx.data)
    seed_file = ctx.work / "p2-seed-data.json"
    seed_file.write_text(json.dumps(train_rows + evals))
    seed_args = ["--model", ctx.model, "--data", str(seed_file), "--train", str(len(train_rows)), "--eval", "1",
                 "--max-steps", str(s.p2_steps), "--fix-context"]
    argv16 = [*argv, "--dtype", "bfloat16"]
    speed, rss, speed16, rss16, runs_a, runs_b, runs_c = [], [], [], [], [], [], []
    for i in range(ctx.repeats):  # A B C: promptlab, seed, promptlab with --dtype bfloat16
        a = ctx.runner.promptlab("train", {"argv": argv})
        b = ctx.runner.seed(seed_args)
        c = ctx.runner.promptlab("train", {"argv": argv16})
        ctx.runner.log(f"P2 repeat {i + 1}: promptlab {a['train_examples_per_s']:.3f} ex/s {a['peak_rss_mb']} MB, "
                       f"seed {b['train_examples_per_s']:.3f} ex/s {b['peak_rss_mb']} MB, promptlab --dtype bfloat16 "
                       f"{c['train_examples_per_s']:.3f} ex/s {c['peak_rss_mb']} MB")
        assert a["steps"] == b["steps"] == c["steps"] == s.p2_steps, (a, b)
        speed.append((a["train_examples_per_s"], b["train_examples_per_s"]))
        rss.append((a["peak_rss_mb"], b["peak_rss_mb"]))
        speed16.append((c["train_examples_per_s"], b["train_examples_per_s"]))
        rss16.append((c["peak_rss_mb"], b["peak_rss_mb"]))
        runs_a.append(a)
        runs_b.append(b)
        runs_c.append(c)
    cmds = {"promptlab": "promptlab " + _fmt(argv) + "   (timed: the training loop's steps; RSS: ru_maxrss of the process)",
            "baseline": f"python {SEED} run " + _fmt(seed_args) + "   (its train_examples_per_s and peak_rss_mb)"}
    cmds16 = {**cmds, "promptlab": "promptlab " + _fmt(argv16)}
    extra = {"steps": s.p2_steps, "batch": s.batch, "promptlab_runs": runs_a, "baseline_runs": runs_b,
             "note": "same training examples (promptlab's seeded sample, written as the seed's --data), batch 8; "
                     "seed: inputs padded to 512, labels padded to 64 with the pad id; promptlab: context selected "
                     "to 512 tokens, dynamic padding, labels masked with -100"}
    bf = "(opt-in --dtype bfloat16: frozen weights bf16, soft prompt and optimizer fp32; seed fp32)"
    return [record("P2", "prompt-tuning training examples per second", "examples/s", ">= 1.5", speed, cmds, "higher", extra),
            record("P2", "prompt-tuning training peak RSS", "MB", "<= 0.7", rss, cmds, "lower",
                   {"steps": s.p2_steps, "batch": s.batch}),
            record("P2", f"prompt-tuning training examples per second {bf}", "examples/s", ">= 1.5", speed16, cmds16,
                   "higher", {"bf16_runs": runs_c, "train_loss_fp32_vs_bf16": [
                       (a["train_loss"], c["train_loss"]) for a, c in zip(runs_a, runs_c)]}),
            record("P2", f"prompt-tuning training peak RSS {bf}", "MB", "<= 0.7", rss16, cmds16, "lower", None)]


def bench_p3(ctx: Context) -> list[dict]:
    s = ctx.size
    dev_cfg = ctx.work / "bench-config.yaml"
    dev_cfg.write_text("train:\n  dev_size: 2\n")
    steps = max(s.p2_steps, 3) if s is SIZES["full"] else s.p2_steps
    pt, ft = _train_argv(ctx, "prompt-tuning", steps, dev_cfg), _train_argv(ctx, "full-finetune", steps, dev_cfg)
    pt16 = [*pt, "--dtype", "bfloat16"]
    mem, step, mem16, step16, runs_a, runs_b, runs_c = [], [], [], [], [], [], []
    for i in range(ctx.repeats):  # A B C: prompt tuning, full fine-tuning, prompt tuning on bf16 weights
        a = ctx.runner.promptlab("train", {"argv": pt})
        b = ctx.runner.promptlab("train", {"argv": ft})
        c = ctx.runner.promptlab("train", {"argv": pt16})
        ctx.runner.log(f"P3 repeat {i + 1}: prompt tuning {a['step_seconds_median']:.2f} s/step {a['peak_rss_mb']} MB, "
                       f"full fine-tuning {b['step_seconds_median']:.2f} s/step {b['peak_rss_mb']} MB, prompt tuning "
                       f"bf16 {c['step_seconds_median']:.2f} s/step {c['peak_rss_mb']} MB")
        mem.append((a["peak_rss_mb"], b["peak_rss_mb"]))
        step.append((a["step_seconds_median"], b["step_seconds_median"]))
        mem16.append((c["peak_rss_mb"], b["peak_rss_mb"]))
        step16.append((c["step_seconds_median"], b["step_seconds_median"]))
        runs_a.append(a)
        runs_b.append(b)
        runs_c.append(c)
    cmds = {"promptlab": "promptlab " + _fmt(pt), "baseline": "promptlab " + _fmt(ft)}
    names = ("prompt_tuning", "full_finetune")
    extra = {"steps": steps, "batch": s.batch, "prompt_tuning_runs": runs_a, "full_finetune_runs": runs_b,
             "note": "step time: median over steps 2..N (the first step allocates); memory: peak RSS of each process"}
    return [record("P3", "peak RSS, prompt tuning / full fine-tuning", "MB", "<= 0.5", mem, cmds, "lower", extra, names),
            record("P3", "training step time, prompt tuning / full fine-tuning", "s/step", "<= 0.75", step, cmds,
                   "lower", {"steps": steps, "batch": s.batch}, names),
            record("P3", "peak RSS, prompt tuning on bf16 weights (--dtype bfloat16) / full fine-tuning (fp32: it trains "
                   "the weights)", "MB", "<= 0.5", mem16, {**cmds, "promptlab": "promptlab " + _fmt(pt16)}, "lower",
                   {"bf16_runs": runs_c}, names),
            record("P3", "training step time, prompt tuning on bf16 weights / full fine-tuning (fp32)", "s/step",
                   "<= 0.75", step16, {**cmds, "promptlab": "promptlab " + _fmt(pt16)}, "lower", None, names)]


def bench_p4(ctx: Context) -> list[dict]:
    s = ctx.size
    argv = ["train", "--task", "hotpotqa", "--data", ctx.data, "--model", ctx.model, "--method", "prompt-tuning",
            "--train-size", str(s.batch), "--max-input-tokens", str(s.max_input_tokens), "--out", str(ctx.work / "unused")]
    out = ctx.runner.promptlab("flops", {"argv": argv, "batch": s.batch, "steps": s.p4_steps,
                                         "matmul_n": s.matmul_n, "repeats": ctx.repeats})
    out16 = ctx.runner.promptlab("flops", {"argv": [*argv, "--dtype", "bfloat16"], "batch": s.batch,
                                           "steps": s.p4_steps, "matmul_n": s.matmul_n, "repeats": ctx.repeats})
    for i, (p, q) in enumerate(zip(out["pairs"], out16["pairs"])):
        ctx.runner.log(f"P4 repeat {i + 1}: step {p['step_seconds']:.2f} s = {p['step_flops_per_s'] / 1e9:.1f} GFLOP/s, "
                       f"matmul {p['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; bf16 step {q['step_seconds']:.2f} s = "
                       f"{q['step_flops_per_s'] / 1e9:.1f} GFLOP/s, bf16 matmul {q['bf16_matmul_flops_per_s'] / 1e9:.1f}")
    pairs = [(p["step_flops_per_s"] / 1e9, p["matmul_flops_per_s"] / 1e9) for p in out["pairs"]]
    p16_32 = [(q["step_flops_per_s"] / 1e9, q["matmul_flops_per_s"] / 1e9) for q in out16["pairs"]]
    p16_16 = [(q["step_flops_per_s"] / 1e9, q["bf16_matmul_flops_per_s"] / 1e9) for q in out16["pairs"]]
    job16 = f"python bench/run.py job flops with --dtype bfloat16 (prompt tuning, batch {s.batch}, model {ctx.model})"
    bf16 = [record("P4", "bf16 training-step FLOP/s (--dtype bfloat16) as a fraction of dense fp32 matmul FLOP/s",
                   "GFLOP/s", ">= 0.4", p16_32, {"promptlab": job16, "baseline": f"torch.mm, {s.matmul_n}² fp32"},
                   "higher", {"step_flops": out16["step_flops"]}, ("training_step", "matmul")),
            record("P4", "bf16 training-step FLOP/s as a fraction of dense bf16 matmul FLOP/s (utilisation at its own "
                   "precision)", "GFLOP/s", "", p16_16, {"promptlab": job16, "baseline": f"torch.mm, {s.matmul_n}² bf16"},
                   "higher", None, ("training_step", "matmul"))]
    return [record("P4", "training-step model FLOP/s as a fraction of dense fp32 matmul FLOP/s", "GFLOP/s", ">= 0.4",
                   pairs, {"promptlab": f"python bench/run.py job flops (prompt tuning, batch {s.batch}, "
                                        f"model {ctx.model}; FLOPs by torch.utils.flop_counter.FlopCounterMode)",
                           "baseline": f"torch.mm of two {s.matmul_n}x{s.matmul_n} fp32 matrices, same process"},
                   "higher", {"step_flops": out["step_flops"], "batch": out["batch"], "input_tokens": out["input_tokens"],
                              "threads": out["threads"]}, ("training_step", "matmul"))] + bf16


def bench_p5(ctx: Context) -> list[dict]:
    s = ctx.size
    n = s.p5_examples
    argv = ["train", "--task", "hotpotqa", "--data", ctx.data, "--model", ctx.model, "--method", "prompt-tuning",
            "--max-input-tokens", str(s.max_input_tokens), "--out", str(ctx.work / "unused")]
    rows = json.loads(Path(ctx.data).read_text())[:n]
    seed_file = ctx.work / "p5-seed-data.json"
    seed_file.write_text(json.dumps(rows))
    seed_args = ["--model", ctx.model, "--data", str(seed_file), "--train", str(n - 1), "--eval", "1",
                 "--max-steps", "1", "--fix-context"]
    pairs, runs_a, runs_b = [], [], []
    for i in range(ctx.repeats):
        a = ctx.runner.promptlab("preprocess", {"argv": argv, "examples": n, "batch": s.batch})
        b = ctx.runner.seed(seed_args)
        ctx.runner.log(f"P5 repeat {i + 1}: promptlab {a['seconds']:.3f} s, seed map {b['preprocess_s']:.3f} s")
        pairs.append((a["examples_per_s"], n / b["preprocess_s"]))
        runs_a.append(a)
        runs_b.append(b)
    return [record("P5", f"preprocessing {n} HotpotQA examples with context, examples per second", "examples/s",
                   ">= 5", pairs, {"promptlab": "python bench/run.py job preprocess: inputs.fit_inputs (context "
                                                f"selection to {s.max_input_tokens} tokens) + Backbone.lm_batch per batch "
                                                f"of {s.batch}, examples from the same file",
                                   "baseline": f"python {SEED} run " + _fmt(seed_args) + "   (its preprocess_s: the two "
                                               "datasets.map calls)"},
                   "higher", {"examples": n, "promptlab_runs": runs_a, "baseline_runs": [
                       {k: b[k] for k in ("preprocess_s", "train_examples", "eval_examples")} for b in runs_b]})]


BENCHES: dict[str, tuple[str, Callable[[Context], list[dict]]]] = {
    "P1": ("p1_generation", bench_p1), "P2": ("p2_prompt_tuning_training", bench_p2),
    "P3": ("p3_prompt_tuning_vs_full_finetune", bench_p3), "P4": ("p4_flops_utilisation", bench_p4),
    "P5": ("p5_preprocessing", bench_p5)}


def make_tiny_model(out: Path, data: str) -> Path:
    """A tiny T5 with a SentencePiece T5Tokenizer (what the seed recipe loads), trained on the HotpotQA file."""
    import sentencepiece as spm
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    rows = json.loads(Path(data).read_text())[:60]
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(r["question"] + "\n" + r["answer"] + "\n" + "\n".join(" ".join(s) for _, s in r["context"])
                                for r in rows))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "spiece"), vocab_size=600,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    corpus.unlink()
    (out / "spiece.vocab").unlink()
    tok = T5Tokenizer.from_pretrained(str(out), extra_ids=100)
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(cfg).save_pretrained(str(out))
    return out


def ensure_model(size: str, model: str | None, data: str, work: Path) -> str:
    if model:
        return model
    if size == "tiny":
        path = work / "t5tiny"
        if not (path / "model.safetensors").is_file():
            make_tiny_model(path, data)
        return str(path)
    path = work / "t5seed"
    if not (path / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(SEED), "make-model", str(path), "--data", data], check=True,
                       capture_output=True)
    return str(path)


def run_suite(only: list[str], size: str = "full", repeats: int = 3, threads: int = 1, model: str | None = None,
              data: str = str(DATA), results: Path = RESULTS, readme: Path | None = README,
              work: Path = WORK, inprocess: bool = False) -> dict[str, dict]:
    work.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    model = ensure_model(size, model, data, work)
    runner = Runner(threads=threads, inprocess=inprocess)
    ctx = Context(model=model, data=data, size=SIZES[size], repeats=repeats, runner=runner, work=work)
    info = {"machine": machine(threads), "versions": versions(), "model": model, "data": data, "size": size,
            "suite_command": "python bench/run.py " + " ".join(sys.argv[1:]) if not inprocess else "in-process"}
    out = {}
    for bid in only:
        name, fn = BENCHES[bid]
        runner.log(f"== {bid} ({name}), load average {loadavg()}")
        start, t0 = loadavg(), time.perf_counter()
        recs = fn(ctx)
        doc = {"benchmark": name, **info, "load_average": {"start": start, "end": loadavg()},
               "wall_seconds": round(time.perf_counter() - t0, 1), "records": recs}
        (results / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        out[name] = doc
        for r in recs:
            verdict = "no target" if r["met"] is None else "met" if r["met"] else "MISSED"
            runner.log(f"   {r['id']} {r['metric']}: ratio {r['ratio']} (target {r['target'] or '—'}, {verdict})")
    if readme is not None:
        write_table(results, readme)
    return out


def write_table(results: Path, readme: Path) -> None:
    """Replace the block between the markers in bench/README.md with a table of every results file."""
    docs = [json.loads(p.read_text()) for p in sorted(results.glob("p*.json"))]
    def met(m: bool | None) -> str:
        return "—" if m is None else "yes" if m else "**no**"


    if not docs:
        return
    header = ("| id | what | promptlab (median, min–max) | baseline (median, min–max) | ratio (median, min–max) "
              "| target | met | repeats | load avg start → end |")
    lines = [MARK_START, "", header, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in docs:
        for r in d["records"]:
            sides = [k for k in r if isinstance(r[k], dict) and "values" in r[k]]
            a, b = r[sides[0]], r[sides[1]]
            def cell(v: dict, unit: str = r["unit"]) -> str:
                f = (lambda x: f"{x:,.0f}") if v["median"] >= 1000 else (lambda x: f"{x:.3g}")
                return f"{f(v['median'])} ({f(v['min'])}–{f(v['max'])}) {unit}"

            la = d["load_average"]
            lines.append(f"| {r['id']} | {r['metric']} ({sides[0].replace('_', ' ')} vs {sides[1].replace('_', ' ')}) "
                         f"| {cell(a)} | {cell(b)} | **{r['ratio']:.3g}** ({r['min']:.3g}–{r['max']:.3g}) "
                         f"| {r['target'] or '—'} | {met(r['met'])} | {r['repeats']} | {la['start'][0]} → {la['end'][0]} |")
    d = docs[-1]
    m, v = d["machine"], d["versions"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} thread(s) per process. "
              + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
              ("Commands (exact, per record) and every repeat's raw numbers are in `bench/results/*.json`; "
               f"suite: `{d['suite_command'].strip()}`."), "", MARK_END]
    text = readme.read_text() if readme.is_file() else "# Benchmarks\n\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + "\n".join(lines) + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + "\n".join(lines) + "\n"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["job"]:  # a measured worker process
        print(json.dumps(JOBS[argv[1]](json.loads(argv[2]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="P1,P2,P3,P4,P5", help="comma-separated benchmark ids")
    ap.add_argument("--repeats", type=int, default=3, help="A/B pairs per comparison (medians need >= 3)")
    ap.add_argument("--threads", type=int, default=1, help="threads per process, the same for both sides")
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--model", help="a model directory (default: bench/work/t5seed, built by the seed's make-model)")
    ap.add_argument("--data", default=str(DATA), help="the official HotpotQA dev JSON")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--no-readme", action="store_true", help="do not update the table in bench/README.md")
    a = ap.parse_args(argv)
    if not Path(a.data).is_file():
        print(f"bench: no HotpotQA data at {a.data}; pass --data", file=sys.stderr)
        return 2
    only = [x.strip().upper() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in BENCHES]
    if unknown:
        print(f"bench: unknown benchmark {unknown[0]}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    run_suite(only, a.size, a.repeats, a.threads, a.model, a.data, Path(a.results),
              None if a.no_readme else README)
    return 0


if __name__ == "__main__":
    sys.exit(main())
