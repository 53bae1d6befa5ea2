"""--prefix-projection: the prefix trains through an MLP (Li & Liang); the artifact is the computed prefix alone."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

FAST = ["--task", "sentiment", "--method", "prefix-tuning", "--train-size", "24", "--epochs", "2",
        "--virtual-tokens", "4", "--limit", "12", "--lr", "0.01"]


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
def test_projection_trains_the_mlp_and_saves_a_plain_prefix(tiny_models, run_cli, tmp_path, kind):
    model = str(tiny_models[kind])
    code, _, err = run_cli("train", "--model", model, "--out", str(tmp_path / "plain"), *FAST)
    assert code == 0, err
    code, _, err = run_cli("train", "--model", model, "--out", str(tmp_path / "mlp"), "--prefix-projection", "8", *FAST)
    assert code == 0, err
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    mlp = json.loads((tmp_path / "mlp" / "metrics.json").read_text())
    cfg = json.loads((tmp_path / "mlp" / "artifact" / "adapter_config.json").read_text())
    n, width = 4, cfg["num_layers"] * 2 * cfg["token_dim"]
    assert plain["trainable_params"] == n * width
    # embedding n x d, Linear(d, 8), Linear(8, layers*2*d): counted while training, gone from the artifact
    assert mlp["trainable_params"] == n * cfg["token_dim"] + (cfg["token_dim"] + 1) * 8 + (8 + 1) * width
    saved = load_file(str(tmp_path / "mlp" / "artifact" / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"] and tuple(saved["prompt_embeddings"].shape) == (n, width)
    assert cfg["prefix_projection"] is True
    # the artifact alone reproduces the run's predictions
    code, _, err = run_cli("eval", "--prompt", str(tmp_path / "mlp"), "--model", model, "--limit", "12",
                           "--out", str(tmp_path / "again"))
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"] == mlp["metrics"]


def test_negative_projection_is_a_one_line_error(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--model", str(tiny_models["encoder"]), "--out", str(tmp_path / "x"),
                           "--prefix-projection", "-1", *FAST)
    assert code == 2 and "--prefix-projection" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
