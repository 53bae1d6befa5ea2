"""Hard and soft prompts on a tiny chat model, chat template on and off: that each runs end to end, how long the
rendered input is, and that a reload reads the same. Random weights: accuracies are chance and say nothing about
which rendering (or soft-prompt placement) is better — only that it works.

    PYTHONPATH=src python bench/chat_templates.py [OUT_DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from chat_templates import build_chat_model

RUNS = [
    ("eval", "zero-shot", []),
    ("eval", "few-shot", ["--shots", "1"]),
    ("eval", "cot", []),
    ("train", "prompt-tuning", ["--train-size", "32", "--epochs", "2", "--virtual-tokens", "8"]),
    ("train", "hybrid", ["--train-size", "32", "--epochs", "2", "--virtual-tokens", "8"]),
]


def promptlab(*argv: str) -> None:
    done = subprocess.run(["promptlab", *argv], check=False, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"promptlab {' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")


def inputs(run: Path) -> list[str]:
    return [json.loads(line)["input"] for line in (run / "predictions.jsonl").read_text().splitlines()]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/promptlab-chat-bench")
    model = build_chat_model("llama", out / "tiny-llama-chat")
    print("| method | chat template | accuracy | input tokens (median) | reload reads the same | seconds |")
    print("|---|---|---|---|---|---|")
    for verb, method, extra in RUNS:
        for mode in ("auto", "off"):
            run = out / f"{method}-{mode}"
            common = ["--task", "sentiment", "--model", str(model), "--limit", "24", "--seed", "0"]
            chat = ["--chat-template", mode] + (["--system-prompt", "You label reviews."] if mode == "auto" else [])
            t0 = time.perf_counter()
            promptlab(verb, *common, "--method", method, *extra, *chat, "--out", str(run), "--overwrite")
            seconds = time.perf_counter() - t0
            promptlab("eval", *common, "--prompt", str(run), "--out", str(run) + "-again", "--overwrite")
            m = json.loads((run / "metrics.json").read_text())
            same = inputs(run) == inputs(Path(str(run) + "-again"))
            print(f"| {method} | {mode} | {m['metrics']['accuracy']:.3f} | {m['input_stats']['input_tokens']['median']:.0f}"
                  f" | {'yes' if same else 'NO'} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
