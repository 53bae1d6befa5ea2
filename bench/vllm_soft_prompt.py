"""Soft prompts on vLLM (`serve --engine vllm`) against promptlab's own engine: token equality, then throughput.

    PYTHONPATH=src .venv/bin/python bench/vllm_soft_prompt.py     # writes bench/results/vllm.json, prints a table

1. A tiny random Llama (hidden 128, 2 heads of 64 — vLLM's CPU attention needs head_dim >= 64 —, 2 layers, the
   ByT5 byte vocabulary, output restricted to printable ASCII so greedy text never stops early), saved in float32;
   8 soft prompts written in PEFT format with random rows (prompt tuning, P-tuning, hybrid; 4-16 virtual tokens).
2. vLLM (`vllm serve MODEL --enable-prompt-embeds --dtype float32`) from its own virtualenv (--vllm-python).
3. Equality: --requests raw completions spread over the 8 prompts, greedy, --max-tokens each: promptlab's engine
   (one mixed batch, prompt KV cache) vs the vLLM engine (the same servables, prompt_embeds to vLLM). Where a row
   differs, the first diverging position and the top-2 logit margin there (from promptlab's full recompute) say
   whether it is a near-tie that float arithmetic may flip.
4. Throughput: the same mixed load (--clients concurrent clients, each request for one of the 8 prompts, round
   robin, --load requests) through promptlab's HTTP server (/v1/completions) with --engine promptlab, then with
   --engine vllm, and straight to vLLM with the embeddings precomputed (what the proxy adds). Median of --repeats.

Everything shares one 2-core machine with other jobs; the ratios within a repeat matter more than absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

COMMAND = "PYTHONPATH=src .venv/bin/python bench/vllm_soft_prompt.py"
TEXTS = ["the food was great and the staff were lovely", "who was born in the city?", "x", "terrible film",
         "the package arrived on tuesday", "which country is the package from?", "service was slow",
         "the hotel room was clean and quiet", "i would not recommend this product", "a b c d e f g"]
PROMPTS = [("prompt-tuning", 8), ("p-tuning", 4), ("hybrid", 6), ("prompt-tuning", 16), ("p-tuning", 12),
           ("hybrid", 10), ("prompt-tuning", 5), ("prompt-tuning", 12)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vllm-python", default=None, help="python of the vLLM virtualenv (default $PROMPTLAB_VLLM_PYTHON, "
                    ".venv-vllm/bin/python or /work/venv-vllm/bin/python)")
    ap.add_argument("--requests", type=int, default=32, help="completions compared token for token")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--load", type=int, default=64, help="requests per throughput run")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in promptlab's process")
    ap.add_argument("--vllm-arg", action="append", default=[], help="extra `vllm serve` argument, repeatable")
    ap.add_argument("--vllm-url", help="a vLLM server already running on the same model directory (--model-dir)")
    ap.add_argument("--model-dir", help="use this tiny model instead of building one (with --vllm-url)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "vllm.json"))
    args = ap.parse_args()

    from vllm_tiny import build_llama, vllm_python, vllm_server

    if args.vllm_python:
        os.environ["PROMPTLAB_VLLM_PYTHON"] = args.vllm_python
    py = vllm_python()
    if py is None:
        sys.exit("no python with vllm: install it (README: Serving at scale with vLLM) or pass --vllm-python")
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    model = Path(args.model_dir) if args.model_dir else build_llama(tmp / "llama")
    arts = make_prompts(model, tmp, args.max_tokens)
    result: dict[str, Any] = {"command": COMMAND + " " + " ".join(sys.argv[1:]), "machine": platform.platform(),
                              "cpu_count": os.cpu_count(), "torch_threads": args.threads, "model": describe(model),
                              "prompts": [f"{m}:{n}" for m, n in PROMPTS], "vllm_args": args.vllm_arg}
    server = nullcontext(args.vllm_url) if args.vllm_url else vllm_server(py, model, tmp / "vllm.log", extra=args.vllm_arg)
    with server as url:
        result["vllm_version"] = vllm_version(py)
        result["equality"] = equality(model, arts, url, args.requests, args.max_tokens)
        print(json.dumps(result["equality"]["summary"], indent=1), flush=True)
        result["throughput"] = throughput(model, arts, url, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)


def describe(model: Path) -> dict[str, Any]:
    cfg = json.loads((model / "config.json").read_text())
    return {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_attention_heads", "num_hidden_layers",
                                    "vocab_size", "torch_dtype", "dtype")}


def vllm_version(py: str) -> str:
    import subprocess

    out = subprocess.run([py, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True,
                         check=False, timeout=300)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def make_prompts(model: Path, tmp: Path, max_tokens: int) -> list[Path]:
    from test_serving import synth_artifact

    return [synth_artifact(model, tmp / f"p{i}", method, n, seed=10 + i, task="hotpotqa", max_new_tokens=max_tokens)
            for i, (method, n) in enumerate(PROMPTS)]


def states(model: Path, arts: list[Path], url: str):
    from promptlab.backbones import load_backbone
    from promptlab.serving.server import build_state
    from promptlab.serving.vllm_proxy import VllmClient, VllmEngine

    bb = load_backbone(str(model))
    specs = [f"p{i}={a}" for i, a in enumerate(arts)]
    own = build_state(bb, specs)
    via = build_state(bb, specs, engine=VllmEngine(bb, VllmClient(url)))
    return bb, own, via


def requests(n: int) -> list[tuple[str, str]]:
    return [(f"p{i % len(PROMPTS)}", TEXTS[(i * 7 + i // len(PROMPTS)) % len(TEXTS)]) for i in range(n)]


@torch.inference_mode()
def margin_at(bb, prompt: torch.Tensor, text: str, prefix: list[int]) -> dict[str, float]:
    """Top-2 logits after [P, x, prefix] by a full forward: a small gap is a near-tie rounding may flip."""
    ids = bb.tokenizer(text, truncation=True, max_length=bb.max_length)["input_ids"] + prefix
    emb = torch.cat([prompt, bb.model.get_input_embeddings()(torch.tensor(ids))])
    logits = bb.model(inputs_embeds=emb[None]).logits[0, -1].float()
    top = logits.topk(2)
    return {"top1": int(top.indices[0]), "top2": int(top.indices[1]), "gap": float(top.values[0] - top.values[1])}


def equality(model: Path, arts: list[Path], url: str, n: int, max_tokens: int) -> dict[str, Any]:
    from promptlab.serving import Job

    bb, own, via = states(model, arts, url)
    reqs = requests(n)
    jobs = lambda st: [Job(st.prompts[p], [], raw=[t], max_new_tokens=max_tokens) for p, t in reqs]
    want = [r[0].tokens for r in own.engine.run(jobs(own))]
    got = [r[0].tokens for r in via.engine.run(jobs(via))]
    rows = []
    for (p, t), w, g in zip(reqs, want, got):
        row: dict[str, Any] = {"prompt": p, "text": t, "equal": w == g}
        if w != g:
            k = next((i for i, (a, b) in enumerate(zip(w, g)) if a != b), min(len(w), len(g)))
            row.update(first_diff=k, promptlab=w[k:k + 4], vllm=g[k:k + 4],
                       margin=margin_at(bb, own.prompts[p].prompt, t, w[:k]))
        rows.append(row)
    # sampling goes to vLLM's sampler with a seed derived from the request's: the same seeded request twice
    from promptlab.serving.sampling import Sampler

    def sampled(seed: int) -> list[list[int]]:
        texts = [t for _, t in reqs[:8]]
        job = Job(via.prompts["p0"], [], raw=texts, max_new_tokens=max_tokens,
                  sampling=Sampler.for_rows(0.8, 0.95, seed, len(texts)))
        return [a.tokens for a in via.engine.run([job])[0]]

    first, again, other = sampled(7), sampled(7), sampled(8)
    equal = sum(r["equal"] for r in rows)
    summary = {"requests": n, "max_tokens": max_tokens, "equal_token_for_token": equal,
               "tokens_compared": sum(len(w) for w in want), "generated_lengths": sorted({len(g) for g in got})}
    summary["sampled_seed_repeats"] = first == again
    summary["sampled_other_seed_differs"] = first != other
    if equal < n:
        summary["first_diff_positions"] = [r["first_diff"] for r in rows if not r["equal"]]
        summary["top2_gaps_at_first_diff"] = [round(r["margin"]["gap"], 6) for r in rows if not r["equal"]]
    return {"summary": summary, "rows": rows}


def throughput(model: Path, arts: list[Path], url: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from test_serving import live_server

    from promptlab.serving.app import create_app

    _, own, via = states(model, arts, url)
    reqs = requests(args.load)
    runs: dict[str, list[dict[str, float]]] = {"promptlab": [], "vllm_via_promptlab": [], "vllm_direct": []}

    def load(post) -> dict[str, float]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            toks = list(pool.map(post, reqs))
        dt = time.perf_counter() - t0
        return {"seconds": dt, "requests_per_s": len(reqs) / dt, "tokens_per_s": sum(toks) / dt}

    def http_post(base: str):
        local = threading.local()

        def post(req: tuple[str, str]) -> int:
            if not hasattr(local, "c"):
                local.c = httpx.Client(timeout=600)
            r = local.c.post(base + "/v1/completions", json={"model": req[0], "prompt": req[1],
                                                              "max_tokens": args.max_tokens})
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])
        return post

    embeds = {r: via.engine.embeds(via.prompts[r[0]], r[1])[0] for r in set(reqs)}
    client = via.engine.client

    def direct(req: tuple[str, str]) -> int:
        return len(client.complete([embeds[req]], [args.max_tokens])[0])

    with live_server(create_app(own)) as (own_url, _, _), live_server(create_app(via)) as (via_url, _, _):
        for name, post in (("promptlab", http_post(own_url)), ("vllm_via_promptlab", http_post(via_url)),
                           ("vllm_direct", direct)):
            load(post)  # warm-up
        for rep in range(args.repeats):
            for name, post in (("promptlab", http_post(own_url)), ("vllm_via_promptlab", http_post(via_url)),
                               ("vllm_direct", direct)):
                runs[name].append(load(post))
                print(f"repeat {rep} {name}: {runs[name][-1]['requests_per_s']:.2f} req/s", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("requests_per_s", "tokens_per_s", "seconds")}
           for k, v in runs.items()}
    ratios = [b["requests_per_s"] / a["requests_per_s"] for a, b in zip(runs["promptlab"], runs["vllm_via_promptlab"])]
    return {"clients": args.clients, "requests": args.load, "max_tokens": args.max_tokens, "repeats": args.repeats,
            "median": med, "vllm_over_promptlab_per_repeat": ratios, "runs": runs}


def print_table(result: dict[str, Any]) -> None:
    eq = result["equality"]["summary"]
    print(f"\nequality: {eq['equal_token_for_token']}/{eq['requests']} requests token for token "
          f"({eq['tokens_compared']} tokens)")
    t = result["throughput"]
    print(f"throughput, {t['clients']} clients, {t['requests']} requests x {t['max_tokens']} tokens, median of "
          f"{t['repeats']}:")
    for k, v in t["median"].items():
        print(f"  {k:<20} {v['requests_per_s']:8.2f} req/s {v['tokens_per_s']:9.1f} tok/s")


if __name__ == "__main__":
    main()
