"""A promptlab soft prompt (PEFT prompt tuning) scored by lm-eval (`--model hf --model_args pretrained=BASE,peft=DIR`)
beside `promptlab eval --prompt DIR`: accuracies and per-example log-likelihoods on the same SST-2 dev examples.

    PYTHONPATH=src:tests python bench/lmeval_peft.py --n 200 --train-size 200

Tiny GPT-2 (tests/lmeval_tiny.py, random weights, BPE trained on the data), 8 virtual tokens, 1 epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import lmeval_tiny
from lmeval_parity import TASKS, lmeval_yaml, promptlab_spec, read_rows, write_jsonl

from promptlab.backbones import load_backbone
from promptlab.cli import main as promptlab
from promptlab.methods import load_predictor
from promptlab.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--train-size", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    rows = read_rows("sst2", args.n)
    if rows is None:
        print("SST-2 data absent: skipped")
        return
    evals, train = rows
    root = Path(tempfile.mkdtemp(prefix="lmeval-peft-"))
    texts = [r["text"] for r in evals + train]
    base = lmeval_tiny.build("gpt2", root / "base", seed=0, texts=texts, vocab=4000, positions=2048)
    d = root / "data"
    d.mkdir()
    write_jsonl(d / "test.jsonl", evals)
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "fewshot.jsonl", train[:1])
    TASKS["sst2"]["template"] = "{text}"  # soft prompts read the bare input (Task.plain_template)
    spec = promptlab_spec(d, "sst2")
    lmeval_yaml(d, "sst2")
    run = root / "run"
    common = ["--task", str(spec), "--data", str(d), "--model", str(base), "--seed", "0"]
    assert promptlab(["train", *common, "--method", "prompt-tuning", "--virtual-tokens", "8", "--epochs", "1",
                      "--train-size", str(args.train_size), "--out", str(run)]) == 0
    assert promptlab(["eval", *common, "--prompt", str(run), "--out", str(root / "again")]) == 0
    ours = json.loads((root / "again" / "metrics.json").read_text())["metrics"]

    bb = load_backbone(str(base), dtype="float32", device="cpu")
    task = get_task(str(spec))
    pred = load_predictor(str(run), bb, task)
    exs = task.splits(str(d))["test"]
    inputs = pred.inputs(exs)
    ll = bb.score_choices(inputs, task.verbalizers, pred.model.eval(), scoring=pred.scoring)

    out = simple_evaluate(model="hf", model_args=f"pretrained={base},peft={run / 'artifact'},dtype=float32",
                          tasks=["pl_sst2"], num_fewshot=0, task_manager=TaskManager(include_path=str(d)),
                          log_samples=True, batch_size=32, bootstrap_iters=0, device="cpu", verbosity="ERROR")
    samples = sorted(out["samples"]["pl_sst2"], key=lambda s: s["doc_id"])
    theirs = torch.tensor([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    res = out["results"]["pl_sst2"]
    print(json.dumps({
        "n": len(exs), "scoring": pred.scoring,
        "promptlab_eval_prompt": {"accuracy": ours["accuracy"], "acc_norm": ours.get("acc_norm")},
        "lmeval_peft": {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]},
        "max_abs_diff": float((ll - theirs).abs().max()),
        "mean_abs_diff": float((ll - theirs).abs().mean()),
        "same_choice": float((ll.argmax(1) == theirs.argmax(1)).float().mean()),
    }, indent=1))


if __name__ == "__main__":
    main()
