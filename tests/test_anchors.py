"""--train-anchors: the encoder's label anchors become a trained head (classes x hidden), saved where frozen ones are."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from promptlab.backbones import load_backbone
from promptlab.methods.readout import label_anchors
from promptlab.tasks import get_task

FAST = ["--train-size", "24", "--epochs", "2", "--virtual-tokens", "4", "--limit", "12", "--lr", "0.05"]


def train(run_cli, model, out, *extra):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", str(model), "--method", "prefix-tuning",
                           "--out", str(out), *FAST, *extra)
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())


def test_trained_anchors_move_are_counted_saved_and_reloaded(tiny_models, run_cli, tmp_path):
    frozen = train(run_cli, tiny_models["encoder"], tmp_path / "frozen")
    trained = train(run_cli, tiny_models["encoder"], tmp_path / "trained", "--train-anchors")
    bb = load_backbone(str(tiny_models["encoder"]))
    start = label_anchors(bb, get_task("sentiment"))
    a_frozen = load_file(str(tmp_path / "frozen" / "artifact" / "anchors.safetensors"))["anchors"]
    a_trained = load_file(str(tmp_path / "trained" / "artifact" / "anchors.safetensors"))["anchors"]
    assert torch.allclose(a_frozen, start, atol=1e-6)
    assert not torch.allclose(a_trained, start, atol=1e-3)
    assert torch.allclose(a_trained.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert trained["trainable_params"] == frozen["trainable_params"] + start.numel()
    # the artifact alone reproduces the run: the trained anchors are read back, not recomputed
    code, _, err = run_cli("eval", "--prompt", str(tmp_path / "trained"), "--model", str(tiny_models["encoder"]),
                           "--limit", "12", "--out", str(tmp_path / "again"))
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"] == trained["metrics"]
    # the model itself carries no extra weight
    cfg = json.loads((tmp_path / "trained" / "artifact" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PREFIX_TUNING"


def test_train_anchors_on_a_generative_model_is_a_one_line_error(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", str(tiny_models["seq2seq"]), "--method",
                           "prefix-tuning", "--train-anchors", "--out", str(tmp_path / "x"), *FAST)
    assert code == 2 and "--train-anchors" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
