"""--gradient-checkpointing: the same training, recomputed instead of kept; the shared backbone left as it was."""

from __future__ import annotations

import pytest
import torch

from promptlab.backbones import load_backbone
from promptlab.config import RunConfig
from promptlab.errors import ConfigError
from promptlab.pipeline import load_data, run_one
from promptlab.tasks import get_task


def _train(model_dir, method: str, checkpointing: bool):
    cfg = RunConfig(task="sentiment", model=str(model_dir), method=method, eval_size=8, batch_size=8)
    cfg.train.train_size, cfg.train.dev_size, cfg.train.epochs, cfg.train.max_steps = 16, 8, 1, 2
    cfg.train.virtual_tokens, cfg.train.batch_size = 4, 4
    cfg.train.gradient_checkpointing = checkpointing
    bb = load_backbone(str(model_dir))
    task = get_task("sentiment")
    res = run_one(cfg, bb, task, load_data(task, cfg), out=None)
    model = res.predictor.model
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n or "prompt_encoder" in n}
    return res.metrics, trained, bb


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning", "lora"])
def test_checkpointed_training_takes_the_same_steps(tiny_models, kind, method):
    plain, plain_params, _ = _train(tiny_models[kind], method, False)
    ckpt, ckpt_params, bb = _train(tiny_models[kind], method, True)
    assert plain_params.keys() == ckpt_params.keys() and plain_params
    for name, value in plain_params.items():
        torch.testing.assert_close(ckpt_params[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert ckpt["history"][0]["train_loss"] == pytest.approx(plain["history"][0]["train_loss"], rel=1e-5)
    assert ckpt["config"]["train"]["gradient_checkpointing"] is True
    assert not bb.model.is_gradient_checkpointing  # switched off after the fit: later methods share this model


def test_it_is_a_flag_of_train_and_compare(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "prompt-tuning", "--gradient-checkpointing", "--train-size", "16", "--epochs", "1",
                           "--virtual-tokens", "2", "--limit", "4", "--out", tmp_path / "run")
    assert code == 0, err
    assert "gradient_checkpointing: true" in (tmp_path / "run" / "config.yaml").read_text()


def test_prefix_tuning_refuses_it_in_one_line(tiny_models, run_cli, tmp_path):
    """transformers' checkpointed layers drop the cache, and prefix tuning's keys and values are that cache."""
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["causal"], "--method",
                           "prefix-tuning", "--gradient-checkpointing", "--train-size", "16", "--epochs", "1",
                           "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "prefix-tuning" in err and "drop the flag" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="cannot run prefix-tuning"):  # compare reaches the fit itself
        _train(tiny_models["causal"], "prefix-tuning", True)
