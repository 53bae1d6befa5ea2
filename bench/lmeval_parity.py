"""promptlab's choice scores against lm-evaluation-harness's `hf` backend, example by example, and their speed.

For tiny random models with a real BPE tokenizer (tests/lmeval_tiny.py: GPT-2 and Llama shapes, causal; T5,
seq2seq) and two tasks (SST-2 dev, RTE val from ../shared/data), zero-shot and 4-shot: the same JSONL files are read
by a promptlab task spec and by an lm-eval task YAML (`dataset_path: json`); the few-shot demonstrations are the
ones promptlab's few-shot method picks (2 per class, seed 0), written to lm-eval's `fewshot_split` and taken in
order by its `first_n` sampler. Per-example log-likelihoods, picks (acc and acc_norm) and accuracies are compared;
throughput is the median of --repeats timings, same batch size and torch threads, in one process.

    PYTHONPATH=src:tests python bench/lmeval_parity.py --n 100 --repeats 3 --threads 2 --batch-size 32

Needs the optional extra `lm-eval` (pip install 'promptlab[lmeval]'); skips a task whose data is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import lmeval_tiny

from promptlab.backbones import load_backbone
from promptlab.config import HardConfig, RunConfig
from promptlab.methods import FitContext, get_method
from promptlab.tasks import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")

TASKS = {
    "sst2": {"fields": ["text"], "labels": ["negative", "positive"], "verbalizers": ["negative", "positive"],
             "template": "Movie review: {text}\nSentiment:"},
    "rte": {"fields": ["premise", "hypothesis"], "labels": ["entailment", "not_entailment"],
            "verbalizers": ["yes", "no"], "template": "{premise}\nQuestion: Is it true that \"{hypothesis}\"? Yes or "
                                                      "no?\nAnswer:"},
}


def read_rows(name: str, n: int) -> tuple[list[dict], list[dict]] | None:
    """(evaluation rows, training rows) with integer labels, or None when the data is absent. Texts are stripped
    as promptlab's loaders strip them, so both harnesses read the same characters."""
    if name == "sst2":
        dev, train = DATA / "sst2" / "dev.tsv", DATA / "sst2" / "train.tsv"
        if not dev.is_file():
            return None

        def tsv(p: Path, k: int) -> list[dict]:
            with p.open() as f:
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:k]
            return [{"text": r["sentence"].strip(), "label": int(r["label"])} for r in rows]
        return tsv(dev, n), tsv(train, 400)
    val, train = DATA / "rte" / "val.jsonl", DATA / "rte" / "fewglue" / "train.jsonl"
    if not val.is_file() or not train.is_file():
        return None
    names = TASKS["rte"]["labels"]

    def jl(p: Path, k: int) -> list[dict]:
        rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()][:k]
        return [{"premise": r["premise"].strip(), "hypothesis": r["hypothesis"].strip(),
                 "label": r["label"] if isinstance(r["label"], int) else names.index(r["label"])} for r in rows]
    return jl(val, n), jl(train, 400)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({"idx": i, **r}) + "\n" for i, r in enumerate(rows)))


def promptlab_spec(d: Path, name: str) -> Path:
    t = TASKS[name]
    spec = {"name": f"pl-{name}", "description": f"{name}, as lm-eval reads it", "kind": "choices", "format": "jsonl",
            "fields": t["fields"], "labels": t["labels"], "verbalizers": t["verbalizers"],
            "descriptions": [f"{v}." for v in t["labels"]], "metrics": ["accuracy"], "eval_split": "test",
            "files": {"train": "train.jsonl", "test": "test.jsonl"},
            "templates": [{"name": "parity", "text": t["template"]}]}
    p = d / f"pl-{name}.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def lmeval_yaml(d: Path, name: str) -> None:
    t = TASKS[name]
    jinja = re.sub(r"\{(\w+)\}", r"{{\1}}", t["template"])
    cfg = {"task": f"pl_{name}", "dataset_path": "json",
           "dataset_kwargs": {"data_files": {"test": str(d / "test.jsonl"), "fewshot": str(d / "fewshot.jsonl")}},
           "test_split": "test", "fewshot_split": "fewshot", "fewshot_config": {"sampler": "first_n"},
           "output_type": "multiple_choice", "doc_to_text": jinja, "doc_to_target": "label",
           "doc_to_choice": t["verbalizers"], "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}
    (d / f"pl_{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="gpt2,llama,t5")
    ap.add_argument("--tasks", default="sst2,rte")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    root = Path(tempfile.mkdtemp(prefix="lmeval-parity-"))
    data = {name: read_rows(name, args.n) for name in args.tasks.split(",")}
    skipped = [k for k, v in data.items() if v is None]
    data = {k: v for k, v in data.items() if v is not None}
    # The tokenizer learns the data, and the template and verbalizer words as a real vocabulary holds them (" positive",
    # " no" are one token in GPT-2's and Llama's): lmeval_tiny.corpus() repeats them.
    texts = [" ".join(str(v) for k, v in r.items() if k != "label") for rows in data.values() for part in rows
             for r in part] + lmeval_tiny.corpus() * 5
    results = []
    for kind in args.models.split(","):
        mdir = lmeval_tiny.build(kind, root / "models" / kind, seed=0, texts=texts, vocab=4000, positions=2048)
        bb = load_backbone(str(mdir), dtype="float32", device="cpu")
        lm = HFLM(pretrained=str(mdir), backend="seq2seq" if kind == "t5" else "causal", batch_size=args.batch_size,
                  device="cpu", dtype="float32")
        for name, (evals, train) in data.items():
            d = root / kind / name
            d.mkdir(parents=True)
            write_jsonl(d / "test.jsonl", evals)
            write_jsonl(d / "train.jsonl", train)
            task = get_task(str(promptlab_spec(d, name)))
            splits = task.splits(str(d))
            for shots in (0, 4):
                method = get_method("few-shot" if shots else "zero-shot")
                cfg = RunConfig(task=str(d), model=str(mdir), method=method.name, batch_size=args.batch_size,
                                hard=HardConfig(shots=shots // 2 or 1, selection="balanced"))
                pred = method.fit(FitContext(bb, task, splits["train"], [], cfg, task.template(None)))
                demos = getattr(pred, "demos", [])
                e = d / f"lmeval-{shots}shot"  # its own files: the datasets cache keys on them
                e.mkdir()
                write_jsonl(e / "test.jsonl", evals)
                # zero-shot: any rows (datasets refuses an empty split); num_fewshot=0 reads none of them
                write_jsonl(e / "fewshot.jsonl", [{**ex.fields, "label": ex.label} for ex in demos] or train[:1])
                lmeval_yaml(e, name)
                exs = splits["test"]
                inputs = pred.inputs(exs)
                pl_time, ll = median_time(partial(bb.score_choices, inputs, task.verbalizers,
                                                  batch_size=args.batch_size), args.repeats)
                tm = TaskManager(include_path=str(e))
                lm_time, out = median_time(partial(
                    simple_evaluate, model=lm, tasks=[f"pl_{name}"], num_fewshot=len(demos), task_manager=tm, log_samples=True,
                    batch_size=args.batch_size, bootstrap_iters=0, verbosity="ERROR"), args.repeats)
                samples = sorted(out["samples"][f"pl_{name}"], key=lambda s: s["doc_id"])
                theirs = torch.tensor([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
                ctx0 = samples[0]["arguments"][0][0] if "arguments" in samples[0] else None
                same_text = ctx0 is None or ctx0 == inputs[0] or ctx0 == inputs[0].rstrip()
                if not same_text and args.debug:
                    print(repr(ctx0), "\n", repr(inputs[0]), [ex.id for ex in exs[:5]])
                norm = torch.tensor([float(max(1, len(v))) for v in task.verbalizers])
                gold = torch.tensor([ex.label for ex in exs])
                row = {"model": kind, "task": name, "shots": len(demos), "n": len(exs),
                       "max_abs_diff": float((ll - theirs).abs().max()),
                       "same_choice": float((ll.argmax(1) == theirs.argmax(1)).float().mean()),
                       "same_choice_norm": float(((ll / norm).argmax(1) == (theirs / norm).argmax(1)).float().mean()),
                       "acc_promptlab": float((ll.argmax(1) == gold).float().mean()),
                       "acc_lmeval": out["results"][f"pl_{name}"]["acc,none"],
                       "acc_norm_promptlab": float(((ll / norm).argmax(1) == gold).float().mean()),
                       "acc_norm_lmeval": out["results"][f"pl_{name}"]["acc_norm,none"],
                       "same_context_text": same_text,
                       "promptlab_s": round(pl_time, 3), "lmeval_s": round(lm_time, 3),
                       "speedup": round(lm_time / pl_time, 2)}
                # lm-eval's scoring alone, without building the task and its prompts: the fair core comparison
                reqs = [req for s in samples for req in s["arguments"]] if "arguments" in samples[0] else None
                if reqs is not None:
                    from lm_eval.api.instance import Instance
                    inst = [Instance("loglikelihood", {}, tuple(a), i) for i, a in enumerate(reqs)]
                    core, _ = median_time(partial(lm.loglikelihood, inst, disable_tqdm=True), args.repeats)
                    row["lmeval_loglikelihood_s"] = round(core, 3)
                    row["speedup_core"] = round(core / pl_time, 2)
                results.append(row)
                print(json.dumps(row), flush=True)
    print(f"skipped (data absent): {skipped}" if skipped else "all tasks present")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
