"""How training cost grows with model size and input length: prompt tuning, prefix tuning, LoRA, full fine-tuning.

Random weights of real shapes (Qwen2: grouped-query attention, SwiGLU, RMSNorm; the largest is Qwen2.5-0.5B's
layers and vocabulary, with an untied output head: 630M parameters), one training step as promptlab takes it (the method's PEFT config from promptlab,
its optimizer kind and default lr, the causal LM loss), each setting in a fresh process so that its peak RSS is
its own. Gradient checkpointing (--gradient-checkpointing) is measured beside the plain step for the methods that
take it.

    python bench/cost_growth.py                     # all sizes x lengths x methods -> bench/results/cost_growth.json,
                                                    # bench/cost_growth.md and bench/results/cost_growth.png
    python bench/cost_growth.py --sizes 30M --lengths 128 --steps 1   # a quick look

The claim tested: prompt tuning's memory is the frozen weights plus activations (no gradients or optimizer state
for the weights), and its step time about 2/3 of full fine-tuning's (the backward pass still runs through every
layer for the activations' gradients, but computes no weight gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (hidden, layers, heads, kv heads, intermediate, vocab): ~30M, ~125M and Qwen2.5-0.5B's own shape (494M).
SIZES = {
    "30M": (384, 6, 6, 2, 1024, 32000),
    "125M": (768, 12, 12, 2, 2048, 32000),
    "500M": (896, 24, 14, 2, 4864, 151936),
}
METHODS = ["prompt-tuning", "prefix-tuning", "lora", "full-finetune"]
CHECKPOINTED = {"prompt-tuning", "lora", "full-finetune"}  # prefix tuning refuses it (DESIGN.md)


def one(size: str, length: int, method: str, batch: int, steps: int, checkpointing: bool) -> dict:
    """One setting, in this process: build, warm up one step, time `steps` steps."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from promptlab.methods import get_method
    from promptlab.training import make_optimizer

    torch.manual_seed(0)
    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    cfg = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                      max_position_embeddings=4096, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    m = get_method(method)
    if method == "full-finetune":
        model.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        if method == "lora":
            peft_cfg = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        else:
            backbone = type("B", (), {"kind": "causal", "name": "qwen2-random", "hidden_size": hidden,
                                      "model": model})()  # what promptlab's peft_config reads of a Backbone
            peft_cfg = m.peft_config(backbone, 20)
        model = get_peft_model(model, peft_cfg)
    if checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(m.optimizer, params, m.default_lr, 0.0)
    model.train()
    ids = torch.randint(0, vocab, (batch, length))
    labels = ids.clone()
    labels[:, : length - 4] = -100  # the answer: the last few tokens, as promptlab's loss on a verbalizer
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step allocates the optimizer state and warms the allocator
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"size": size, "length": length, "method": method, "checkpointing": checkpointing, "batch": batch,
            "total_params": total, "trainable_params": sum(p.numel() for p in params),
            "step_seconds": round(step, 4), "seconds_per_example": round(step / batch, 5),
            "step_times": [round(t, 4) for t in times],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_all(args: argparse.Namespace) -> list[dict]:
    out = []
    for size in args.sizes.split(","):
        for length in [int(x) for x in args.lengths.split(",")]:
            for method in METHODS:
                for ckpt in (False, True) if method in CHECKPOINTED else (False,):
                    cmd = [sys.executable, __file__, "--one", json.dumps([size, length, method, args.batch,
                                                                          args.steps, ckpt])]
                    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                    if proc.returncode != 0:
                        raise SystemExit(f"{size} {length} {method}: {proc.stderr.strip().splitlines()[-1]}")
                    rec = json.loads(proc.stdout.strip().splitlines()[-1])
                    print(json.dumps(rec), flush=True)
                    out.append(rec)
    return out


def write(records: list[dict], command: str) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "cost_growth.json").write_text(json.dumps({"command": command, "records": records}, indent=2))
    key = {(r["size"], r["length"], r["method"], r["checkpointing"]): r for r in records}
    lines = [("| size | length | method | trainable | peak RSS MB | s/example | RSS with checkpointing | s/example with "
              "checkpointing | RSS / full FT | time / full FT |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["checkpointing"]:
            continue
        ck = key.get((r["size"], r["length"], r["method"], True))
        ft = key[(r["size"], r["length"], "full-finetune", False)]
        ck_rss = f"{ck['peak_rss_mb']:,.0f}" if ck else "—"
        ck_time = f"{ck['seconds_per_example']:.3f}" if ck else "—"
        lines.append(f"| {r['size']} | {r['length']} | {r['method']} | {r['trainable_params']:,} | {r['peak_rss_mb']:,.0f} "
                     f"| {r['seconds_per_example']:.3f} | {ck_rss} | {ck_time} | {r['peak_rss_mb'] / ft['peak_rss_mb']:.2f} "
                     f"| {r['seconds_per_example'] / ft['seconds_per_example']:.2f} |")
    table = "\n".join(lines)
    (HERE / "cost_growth.md").write_text(
        "# How training cost grows (CPU, random weights of Qwen2 shapes)\n\n"
        f"Produced by `{command}` on this project's 2-core machine; each row is its own process (peak RSS includes "
        "the Python runtime and torch, ~0.3 GB), step time the median of the timed steps after one warm-up step.\n\n"
        + table + "\n\n![cost growth](results/cost_growth.png)\n")
    plot(records)


def plot(records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in METHODS:
        for length, style in ((128, "--"), (512, "-")):
            rows = [r for r in records if r["method"] == method and r["length"] == length and not r["checkpointing"]]
            if not rows:
                continue
            x = [r["total_params"] / 1e6 for r in rows]
            axes[0].plot(x, [r["peak_rss_mb"] / 1024 for r in rows], style, marker="o", label=f"{method} L={length}")
            axes[1].plot(x, [r["seconds_per_example"] for r in rows], style, marker="o", label=f"{method} L={length}")
    for ax, what in zip(axes, ("peak RSS (GB)", "seconds per example")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model parameters (millions)")
        ax.set_ylabel(what)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "results" / "cost_growth.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--lengths", default="128,512")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*json.loads(args.one))))
        return
    records = run_all(args)
    write(records, "python bench/cost_growth.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
