"""Before/after of seq2seq choice scoring in one process: the `scoring.py` of a git revision (default main) against
the working tree's, and lm-eval 0.4.13's `HFLM.loglikelihood`, on the tiny T5 of bench/lmeval_parity.py, 0-shot,
timed interleaved (old, new, lm-eval per repeat) so that all three see the same machine state. Results:
bench/lmeval_parity.md, "T5 choice scoring: before and after"."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent)]
import lmeval_parity as P
import lmeval_tiny

from promptlab import scoring as new
from promptlab.backbones import load_backbone


def old_scoring(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:src/promptlab/scoring.py"], capture_output=True, text=True,
                         check=True).stdout
    path = Path(tempfile.mkdtemp()) / "scoring_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("promptlab.scoring_old", path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "promptlab"
    spec.loader.exec_module(mod)
    return mod


def lm_scores(lm, inst: list, c: int) -> torch.Tensor:
    return torch.tensor([o[0] for o in lm.loglikelihood(inst, disable_tqdm=True)]).view(-1, c)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tasks", default="sst2,rte")
    ap.add_argument("--rev", default="main")
    ap.add_argument("--shots", type=int, default=0, help="the first K training rows in front of each input, as "
                    "lm-eval writes demonstrations (text + \" \" + verbalizer, then a blank line)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    old = old_scoring(args.rev)
    data = {name: P.read_rows(name, args.n) for name in args.tasks.split(",")}
    texts = [" ".join(str(v) for k, v in r.items() if k != "label") for rows in data.values() for part in rows
             for r in part] + lmeval_tiny.corpus() * 5
    mdir = lmeval_tiny.build("t5", Path(tempfile.mkdtemp()) / "t5", seed=0, texts=texts, vocab=4000, positions=2048)
    bb = load_backbone(str(mdir), dtype="float32", device="cpu")
    lm = HFLM(pretrained=str(mdir), backend="seq2seq", batch_size=args.batch_size, device="cpu", dtype="float32")
    for name, (evals, train) in data.items():
        t = P.TASKS[name]
        verb = t["verbalizers"]

        def render(r: dict, template: str = t["template"]) -> str:
            return template.format(**{k: v for k, v in r.items() if k != "label"})
        head = "".join(f"{render(r)} {verb[r['label']]}\n\n" for r in train[: args.shots])
        inputs = [head + render(r) for r in evals]
        inst = [Instance("loglikelihood", {}, (x, " " + v), i)
                for i, (x, v) in enumerate((x, v) for x in inputs for v in verb)]
        runs = {"old": partial(old.score_choices, bb, inputs, verb, batch_size=args.batch_size),
                "new": partial(new.score_choices, bb, inputs, verb, batch_size=args.batch_size),
                "lmeval": partial(lm_scores, lm, inst, len(verb))}
        times = {k: [] for k in runs}
        outs = {k: f() for k, f in runs.items()}  # warm-up
        for _ in range(args.repeats):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"t5 {name} {args.shots}-shot n={len(inputs)}: old {med['old']:.4f}s new {med['new']:.4f}s "
              f"lm-eval loglikelihood {med['lmeval']:.4f}s | new vs old {med['old'] / med['new']:.2f}x, "
              f"lm-eval/old {med['lmeval'] / med['old']:.2f}x, lm-eval/new {med['lmeval'] / med['new']:.2f}x | "
              f"max |new-old| {(outs['new'] - outs['old']).abs().max():.2e}, "
              f"max |new-lmeval| {(outs['new'] - outs['lmeval']).abs().max():.2e}", flush=True)


if __name__ == "__main__":
    main()
