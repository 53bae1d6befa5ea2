"""The GPU check, in one go (`make gpu-check`): promptlab on a CUDA machine, end to end, in a few minutes.

On a ~0.5B-parameter random model of Qwen2.5-0.5B's shape, frozen weights in bf16 (--dtype auto on CUDA): train
prompt tuning and prefix tuning on the bundled sentiment task through promptlab's own pipeline, evaluate them,
serve a mix of both prompts and a hard prompt through the serving engine (answers must equal the offline
predictors'), run the data-parallel loop on 2 processes when 2 GPUs are visible, and assert that every tensor
reaching the model's forward sat on the GPU. Prints step time, tokens/s, peak GPU memory and the training step's
achieved FLOP/s against the GPU's bf16 peak, and writes them to bench/results/gpu_check.json.

    python bench/gpu_check.py              # on a CUDA machine; elsewhere: one line saying so, exit 2
    python bench/gpu_check.py --cpu-smoke  # the same code on a tiny model on the CPU (tests/test_bench.py runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets, by a substring of the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0}
SHAPES = {"qwen2-0.5b": (896, 24, 14, 2, 4864, 151936), "tiny": (64, 2, 4, 2, 128, 400)}


def build_model(out: Path, shape: str) -> Path:
    """Random weights of the shape, and a byte-level BPE tokenizer trained here (no download; transformers 5 loads
    a qwen2 directory's tokenizer as Qwen2Tokenizer, which needs a tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["the food was great and the staff were lovely", "terrible film awful acting", "positive negative neutral"]
    bpe.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(out)
    cfg = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      intermediate_size=inter, vocab_size=vocab, max_position_embeddings=2048,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    return out


def watch_devices(model: torch.nn.Module) -> set[str]:
    """Every device a tensor given to the model's forward sat on, from now on."""
    seen: set[str] = set()

    def hook(module, args, kwargs):
        seen.update(t.device.type for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def step_flops(backbone, method_name: str, batch: int, length: int) -> tuple[float, float]:
    """(FLOPs, seconds) of one training step of `method_name` as promptlab's loss computes it."""
    from peft import get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    from promptlab.methods import get_method
    from promptlab.training import make_optimizer

    m = get_method(method_name)
    model = get_peft_model(backbone.model, m.peft_config(backbone, 20))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(m.optimizer, params, m.default_lr, 0.0)
    ids = torch.randint(1, 320, (batch, length), device=backbone.device)
    labels = ids.masked_fill(torch.arange(length, device=ids.device)[None] < length - 4, -100)

    def step() -> None:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    step()  # warm-up
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync = torch.cuda.synchronize if backbone.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    sync()
    model.eval()
    return float(counter.get_total_flops()), (time.perf_counter() - t0) / 3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU: the same code, for tests")
    ap.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"))
    args = ap.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch sees none); run it on a GPU machine, or --cpu-smoke to try the "
              "code on a tiny model", file=sys.stderr)
        return 2
    from promptlab.backbones import load_backbone
    from promptlab.config import RunConfig
    from promptlab.methods import load_predictor
    from promptlab.pipeline import load_data, run_one
    from promptlab.serving import Engine, Job, hard_servable, load_servable
    from promptlab.tasks import get_task

    device, shape = ("cpu", "tiny") if args.cpu_smoke else ("cuda", "qwen2-0.5b")
    steps, batch, length = (4, 4, 64) if args.cpu_smoke else (40, 16, 256)
    t_all = time.perf_counter()
    report: dict = {"device": device, "shape": shape}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", shape)
        bb = load_backbone(str(model_dir), device=device)
        report.update(dtype=str(bb.dtype).removeprefix("torch."), params=sum(p.numel() for p in bb.model.parameters()))
        if device == "cuda":
            report["gpu"] = torch.cuda.get_device_name(0)
        seen = watch_devices(bb.model)
        task = get_task("sentiment")
        runs = {}
        for method in ("prompt-tuning", "prefix-tuning"):
            cfg = RunConfig(task="sentiment", model=str(model_dir), method=method, device=device, eval_size=64)
            cfg.train.max_steps, cfg.train.batch_size, cfg.train.epochs, cfg.train.dev_size = steps, batch, 1, 32
            res = run_one(cfg, bb, task, load_data(task, cfg), Path(tmp) / method)
            m = res.metrics
            runs[method] = {"accuracy": m["metrics"]["accuracy"], "train_seconds": m["train_seconds"],
                            "steps": res.predictor.extras["steps"], "eval_examples_per_second":
                            m["eval_examples_per_second"], "device": m["device"]}
        report["runs"] = runs
        # serving: the two soft prompts and a hard prompt in mixed batches, against their offline predictors
        texts = ["the food was great", "terrible film", "the package arrived on tuesday", "i loved it"]
        from promptlab.tasks.base import Example

        examples = [Example(str(i), {"text": t}) for i, t in enumerate(texts)]
        engine = Engine(bb)
        servables = [load_servable(m, str(Path(tmp) / m), bb) for m in runs]
        servables.append(hard_servable("zs", "zero-shot", task, bb, RunConfig(device=device)))
        for s in servables:
            engine.attach(s)
        t0 = time.perf_counter()
        answers = engine.run([Job(s, examples) for s in servables])
        report["serve_seconds"] = round(time.perf_counter() - t0, 3)
        for s, got in zip(servables[:2], answers):
            offline = load_predictor(s.source, bb).predict(examples)
            assert [a.label for a in got] == [p.label for p in offline], (s.name, got, offline)
        report["serving_equals_offline"] = True
        flops, secs = step_flops(bb, "prompt-tuning", batch, length)
        report["train_step"] = {"method": "prompt-tuning", "batch": batch, "length": length,
                                "seconds": round(secs, 4), "tokens_per_second": round(batch * length / secs, 1),
                                "tflops_per_second": round(flops / secs / 1e12, 3)}
        if device == "cuda":
            report["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            name = report["gpu"]
            peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
            report["train_step"]["bf16_peak_tflops"] = peak
            report["train_step"]["utilisation"] = round(report["train_step"]["tflops_per_second"] / peak, 4) if peak else None
            if torch.cuda.device_count() >= 2:
                report["two_processes"] = two_processes(model_dir, tmp)
        report["devices_seen"] = sorted(seen)
        assert seen == {device}, f"tensors reached the model from {sorted(seen)}, not only {device}"
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(report, indent=2))
    if not args.cpu_smoke:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def two_processes(model_dir: Path, tmp: str) -> dict:
    """The data-parallel loop on 2 GPUs (torchrun), as the 2-process CPU test runs it."""
    out = Path(tmp) / "ddp"
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "promptlab.cli", "train", "--task", "sentiment",
           "--model", str(model_dir), "--method", "prompt-tuning", "--max-steps", "20", "--eval-size", "64",
           "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    ok = proc.returncode == 0 and (out / "metrics.json").is_file()
    training = json.loads((out / "metrics.json").read_text()).get("training") if ok else None
    return {"ok": ok, "seconds": round(time.perf_counter() - t0, 1), "training": training,
            "stderr_tail": None if ok else proc.stderr[-2000:]}


if __name__ == "__main__":
    sys.exit(main())
