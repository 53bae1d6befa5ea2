"""--dtype bfloat16: the frozen weights in bf16, trainable parameters in fp32, answers within a stated tolerance.

Tolerance: on the tiny models, every per-label probability within 0.05 of the float32 run's (bf16 keeps 8 bits of
mantissa; the softmax and log-likelihood sums are taken in float32). The labels themselves may flip only where
float32's top two are that close, so the test compares probabilities, not labels.
"""

from __future__ import annotations

import json

import pytest
import torch

from promptlab.backbones import load_backbone

FAST_ANY = ["--train-size", "16", "--epochs", "1", "--limit", "12"]  # for any trained method
FAST = [*FAST_ANY, "--virtual-tokens", "4"]  # for soft prompts


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
def test_bf16_weights_load_and_trainable_prompt_stays_fp32(tiny_models, kind):
    bb = load_backbone(str(tiny_models[kind]), dtype="bfloat16")
    assert bb.model.get_input_embeddings().weight.dtype == torch.bfloat16
    from peft import PromptTuningConfig, get_peft_model

    from promptlab.methods.soft import TASK_TYPES

    model = get_peft_model(bb.model, PromptTuningConfig(task_type=TASK_TYPES[kind], num_virtual_tokens=3,
                                                         num_transformer_submodules=1))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    model.unload() if hasattr(model, "unload") else None


@pytest.mark.parametrize("kind,method", [("encoder", "prompt-tuning"), ("seq2seq", "prompt-tuning"),
                                         ("causal", "prefix-tuning"), ("encoder", "zero-shot")])
def test_bf16_scores_are_within_tolerance_of_fp32(tiny_models, run_cli, tmp_path, kind, method):
    verb = "eval" if method == "zero-shot" else "train"
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        code, _, err = run_cli(verb, "--task", "sentiment", "--model", str(tiny_models[kind]), "--method", method,
                               "--dtype", dtype, "--out", str(out), *(FAST if verb == "train" else ["--limit", "12"]))
        assert code == 0, err
        runs[dtype] = out
    r32, r16 = records(runs["float32"]), records(runs["bfloat16"])
    assert len(r32) == len(r16) == 12
    same = [(a, b) for a, b in zip(r32, r16) if a["prediction"] == b["prediction"]]
    assert len(same) >= 10, [(a["prediction"], b["prediction"]) for a, b in zip(r32, r16)]
    worst = max(abs(a["score"] - b["score"]) for a, b in same)  # the predicted label's probability
    assert worst < 0.05, worst
    cfg = (runs["bfloat16"] / "config.yaml").read_text()
    assert "dtype: bfloat16" in cfg


def test_full_finetune_in_bf16_is_refused(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", str(tiny_models["encoder"]), "--method",
                           "full-finetune", "--dtype", "bfloat16", "--out", str(tmp_path / "ft"), *FAST_ANY)
    assert code == 2 and "float32" in err and "Traceback" not in err
    assert not (tmp_path / "ft").exists()


def test_unknown_dtype_is_one_line(run_cli, tmp_path):
    code, _, err = run_cli("eval", "--task", "sentiment", "--method", "zero-shot", "--dtype", "float8", "--out",
                           str(tmp_path / "x"))
    assert code == 2 and "bfloat16" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["encoder", "causal"])  # pooled anchors; the decoder's cached prompt keys/values
def test_predict_through_the_serving_engine_in_bf16(tiny_models, run_cli, tmp_path, kind):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", str(tiny_models[kind]), "--method",
                           "prompt-tuning", "--out", str(tmp_path / "run"), *FAST)
    assert code == 0, err
    texts = ["a gorgeous, witty film", "dull and overlong", "it was fine", "not for me"]
    answers = {}
    for dtype in ("float32", "bfloat16"):
        code, out, err = run_cli("predict", "--model", str(tiny_models[kind]), "--prompt", str(tmp_path / "run"),
                                 "--dtype", dtype, *texts)
        assert code == 0, err
        answers[dtype] = [json.loads(line) for line in out.strip().splitlines()[-len(texts):]]
    for a, b in zip(answers["float32"], answers["bfloat16"]):
        if a["prediction"] == b["prediction"]:
            assert abs(a["score"] - b["score"]) < 0.05
    assert sum(a["prediction"] == b["prediction"] for a, b in zip(answers["float32"], answers["bfloat16"])) >= 3
