"""Data-parallel training: 2 CPU processes (gloo, launched by torchrun as `accelerate launch` does on GPUs)
reach the soft prompt of 1 process with the same global batch.

Tolerance: max |difference| <= 1e-6 on the prompt (values ~0.05; measured ~1e-8). The two runs do the same
arithmetic in another order: each process pads and reduces its half-batch, and DDP sums the two gradients,
so float32 rounding differs in the last bits. Dropout is off in this model: with it on, each process would
draw its own masks and the runs would agree in distribution only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from promptlab.checkpoints import work_dir

# 27 examples in batches of 8: the last batch (3) splits 2 + 1, which exercises the shard re-weighting.
ARGV = ["train", "--task", "sentiment", "--method", "prompt-tuning", "--train-size", "27", "--epochs", "2",
        "--virtual-tokens", "4", "--limit", "8", "--train-batch-size", "8", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def no_dropout_encoder(tiny_models, tmp_path_factory) -> Path:
    from transformers import BertModel

    out = tmp_path_factory.mktemp("nodrop") / "encoder"
    shutil.copytree(tiny_models["encoder"], out)
    BertModel.from_pretrained(out, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(out)
    return out


def test_two_processes_match_one_with_the_same_global_batch(no_dropout_encoder, run_cli, tmp_path):
    (tmp_path / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    argv = [*ARGV, "--model", str(no_dropout_encoder), "--config", str(tmp_path / "fast.yaml")]
    single, multi = tmp_path / "single", tmp_path / "multi"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process runs: tiny models, shared cores
    try:
        code, _, err = run_cli(*argv, "--out", single)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "promptlab.cli", *argv, "--out", str(multi)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run written to") == 1  # rank 0 reports and writes; rank 1 only trains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.yaml", "multi", "single"]  # no work dir left
    assert not work_dir(multi).exists()

    a = load_file(str(single / "artifact" / "adapter_model.safetensors"))
    b = load_file(str(multi / "artifact" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert not torch.equal(a[k], torch.zeros_like(a[k]))
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)

    ms, mm = (json.loads((d / "metrics.json").read_text()) for d in (single, multi))
    assert [(h["epoch"], h["step"]) for h in mm["history"]] == [(1, 4), (2, 8)]  # 4 global batches per epoch
    assert [(h["epoch"], h["step"]) for h in ms["history"]] == [(1, 4), (2, 8)]
    for hs, hm in zip(ms["history"], mm["history"]):
        assert hm["train_loss"] == pytest.approx(hs["train_loss"], rel=1e-6)  # averaged over both processes
        assert hm["dev_score"] == hs["dev_score"]
    assert mm["metrics"] == ms["metrics"]
    # The work was split, not repeated: rank 0 computed losses on half of each batch (27 = 4+4 + 4+4 + 4+4 + 2+1).
    assert ms["training"]["processes"] == 1 and ms["training"]["examples_per_process"] == 2 * 27
    assert mm["training"]["processes"] == 2 and mm["training"]["examples_per_process"] == 2 * 14


@pytest.mark.slow
def test_fsdp_shards_the_frozen_blocks_and_reaches_the_same_prompt(no_dropout_encoder, run_cli, tmp_path):
    """ACCELERATE_USE_FSDP=true (what `accelerate launch --config_file docs/accelerate_fsdp.yaml` sets): the BERT
    layers sharded over 2 gloo processes with torch's FSDP2, the prompt replicated; same prompt as 1 process.
    (`accelerate launch --cpu` with that config starts one process, so torchrun launches here.)"""
    (tmp_path / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    argv = [*ARGV, "--model", str(no_dropout_encoder), "--config", str(tmp_path / "fast.yaml")]
    single, multi = tmp_path / "single", tmp_path / "multi"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = run_cli(*argv, "--out", single)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_FSDP": "true"}
    env.pop("RANK", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "promptlab.cli", *argv, "--out", str(multi)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(str(single / "artifact" / "adapter_model.safetensors"))
    b = load_file(str(multi / "artifact" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # the whole prompt, not a shard of it
        assert b[k].shape == a[k].shape and not torch.equal(a[k], torch.zeros_like(a[k]))
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    training = json.loads((multi / "metrics.json").read_text())["training"]
    sharded = training["sharding"]
    assert training["processes"] == 2 and sharded["kind"] == "fsdp2" and sharded["sharded_blocks"] == 2  # 2 BertLayers
    assert sharded["block_bytes_this_process"] * 2 == sharded["block_bytes"]  # each process holds half the blocks
    assert "sharding" not in json.loads((single / "metrics.json").read_text())["training"]


def test_fsdp_refuses_a_method_that_trains_inside_the_blocks(tiny_models):
    """LoRA's weights live inside the blocks FSDP shards: refused in one line."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from promptlab.errors import ConfigError
    from promptlab.sharding import check_trainable, frozen_blocks

    model = AutoModel.from_pretrained(tiny_models["encoder"])
    model.requires_grad_(False)
    blocks = frozen_blocks(model)
    assert [type(b).__name__ for b in blocks] == ["BertLayer", "BertLayer"]  # BertEmbeddings stays whole
    get_peft_model(model, LoraConfig(target_modules=["query", "value"], r=2))
    with pytest.raises(ConfigError, match="trains weights inside them") as e:
        check_trainable(blocks, "lora")
    assert "\n" not in str(e.value)


def test_without_fsdp_or_with_one_process_the_model_is_moved_whole(monkeypatch):
    from promptlab.sharding import place, sharded_blocks

    model = torch.nn.Linear(2, 2)
    assert place(model, torch.device("cpu")) is model and not sharded_blocks(model)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing to shard over
    assert place(model, torch.device("cpu")) is model and not sharded_blocks(model)
