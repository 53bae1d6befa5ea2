"""API models against a local model: the same tiny model, evaluated through `promptlab serve`'s OpenAI-compatible
endpoints (`--model openai:MODEL@URL`) and loaded here, method by method.

    PYTHONPATH=src .venv/bin/python bench/api_parity.py [--limit 40]    # prints a Markdown table

Per method: whether every model input is the same text (cot: the server generated the same reasoning), how many
predictions agree, both accuracies, the HTTP requests the API run sent and the wall time of each run; then the
API run again, which must send none (the response cache). The model is a tiny GPT-2 with random weights (ASCII
bytes only, so cot's reasoning is text): it shows the plumbing agrees, not how good anything is.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

METHODS = {"zero-shot": [], "few-shot": ["--shots", "1"], "cot": [],
           "prompt-search": ["--candidates", "4", "--search-size", "16", "--shots", "1"]}


def run(argv: list[str]) -> tuple[dict, list[dict], float]:
    from promptlab.cli import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
    out = Path(argv[argv.index("--out") + 1])
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return json.loads((out / "metrics.json").read_text()), rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=40)
    args = ap.parse_args()
    from conftest import build_tiny
    from test_serving import ascii_model, live_server

    from promptlab.backbones import load_backbone
    from promptlab.serving.app import Limits, create_app
    from promptlab.serving.server import build_state

    tmp = Path(tempfile.mkdtemp(prefix="api-parity-"))
    model = ascii_model(build_tiny("causal", tmp / "causal"), tmp / "ascii")
    state = build_state(load_backbone(str(model)), [], Limits())
    print("| method | same inputs | same predictions | accuracy API / local | requests | cached rerun requests "
          "| seconds API / local / rerun |\n|---|---|---|---|---|---|---|")
    with live_server(create_app(state)) as (url, _, _):
        for method, extra in METHODS.items():
            common = ["--task", "sentiment", "--method", method, "--limit", str(args.limit), *extra]
            api = ["eval", "--model", f"openai:{model}@{url}/v1", *common, "--api-cache", str(tmp / "cache")]
            a, ar, at = run([*api, "--out", str(tmp / f"{method}-api")])
            loc, lr, lt = run(["eval", "--model", str(model), *common, "--out", str(tmp / f"{method}-local")])
            again, _, rt = run([*api, "--out", str(tmp / f"{method}-again")])
            same_in = [r["input"] for r in ar] == [r["input"] for r in lr]
            agree = sum(x["prediction"] == y["prediction"] for x, y in zip(ar, lr))
            u = a["api"]["usage"]
            print(f"| {method} | {same_in} | {agree}/{len(ar)} | {a['metrics']['accuracy']:.3f} / "
                  f"{loc['metrics']['accuracy']:.3f} | {u['requests']} ({a['api']['scoring']}) | "
                  f"{again['api']['usage']['requests']} of {again['api']['usage']['cached_requests']} cached | "
                  f"{at:.1f} / {lt:.1f} / {rt:.1f} |")


if __name__ == "__main__":
    main()
