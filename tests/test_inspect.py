"""`promptlab inspect` and the init saved at train time, on the three tiny backbones."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from promptlab.backbones import load_backbone
from promptlab.config import RunConfig
from promptlab.inspect_prompt import NO_INIT, analyse, analyse_dir
from promptlab.methods.soft import init_token_ids
from promptlab.pipeline import load_data, run_one
from promptlab.tasks import get_task

TRAIN = ["--task", "sentiment", "--train-size", "16", "--epochs", "1", "--virtual-tokens", "4", "--limit", "8",
         "--seed", "3"]


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """One prompt-tuning run per backbone kind (init from vocabulary tokens), plus prefix and P-tuning on GPT-2."""
    from promptlab.cli import main

    root = tmp_path_factory.mktemp("inspect")
    runs = {}
    for kind in ("encoder", "seq2seq", "causal"):
        runs[kind] = root / f"{kind}-pt"
        assert main(["train", *TRAIN, "--model", str(tiny_models[kind]), "--method", "prompt-tuning",
                     "--init", "vocab", "--out", str(runs[kind])]) == 0
    for method in ("prefix-tuning", "p-tuning"):
        runs[method] = root / method
        assert main(["train", *TRAIN, "--model", str(tiny_models["causal"]), "--method", method,
                     "--out", str(runs[method])]) == 0
    return runs


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
def test_token_init_is_its_own_nearest_word_and_has_not_moved(tiny_models, trained, kind):
    """Before training a vocab-initialised prompt *is* those words: cosine 1.0, zero movement."""
    bb = load_backbone(str(tiny_models[kind]))
    art = trained[kind] / "artifact"
    init = load_file(str(art / "prompt_init.safetensors"))["prompt_embeddings"]
    cfg = RunConfig(task="sentiment", seed=3)
    cfg.train.init = "vocab"
    ids = init_token_ids(bb, get_task("sentiment"), cfg, 4)
    adapter = json.loads((art / "adapter_config.json").read_text())
    before = analyse(init, init, adapter, bb, top=3)
    assert [t["nearest"][0]["id"] for t in before["tokens"]] == ids
    assert all(t["nearest"][0]["cosine"] == pytest.approx(1.0, abs=1e-5) for t in before["tokens"])
    assert all(t["init_distance"] == 0.0 and t["init_cosine"] == pytest.approx(1.0, abs=1e-5)
               for t in before["tokens"])
    assert all(len(t["nearest"]) == 3 for t in before["tokens"])
    after = analyse_dir(str(trained[kind]), bb, top=5)  # a run dir; the artifact's own prompt_embeddings
    assert after["init_recorded"] and after["kind"] == "input"
    assert all(t["init_distance"] > 0 for t in after["tokens"])
    assert all(0 <= t["norm_percentile"] <= 100 for t in after["tokens"])


def test_run_writes_inspect_json_matching_the_command(tiny_models, trained, run_cli):
    written = json.loads((trained["causal"] / "inspect.json").read_text())
    code, out, err = run_cli("inspect", trained["causal"], "--json")  # model taken from the run's metrics.json
    assert code == 0, err
    printed = json.loads(out)
    assert [t["nearest"] for t in printed["tokens"]] == [t["nearest"] for t in written["tokens"]]
    assert [t["init_distance"] for t in printed["tokens"]] == pytest.approx(
        [t["init_distance"] for t in written["tokens"]], abs=1e-5)


def test_prefix_tuning_reports_layers_not_words(tiny_models, trained, run_cli):
    code, out, err = run_cli("inspect", trained["prefix-tuning"])
    assert code == 0, err
    assert "not defined" in out and "key norm" in out
    result = json.loads((trained["prefix-tuning"] / "inspect.json").read_text())
    assert result["kind"] == "prefix" and "tokens" not in result
    assert len(result["layers"]) == 2  # the tiny GPT-2's layers
    assert any(layer["init_relative_distance"] > 0 for layer in result["layers"])


def test_p_tuning_init_is_the_encoders_output(trained):
    """PEFT saves P-tuning's output embeddings; the init recorded is the same quantity at step 0."""
    art = trained["p-tuning"] / "artifact"
    init = load_file(str(art / "prompt_init.safetensors"))["prompt_embeddings"]
    now = load_file(str(art / "adapter_model.safetensors"))["prompt_embeddings"]
    assert init.shape == now.shape and not torch.equal(init, now)


def test_old_artifact_without_init_and_artifact_dir_with_model(tiny_models, trained, run_cli, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained["encoder"] / "artifact", old)  # an artifact dir: no metrics.json beside it
    (old / "prompt_init.safetensors").unlink()
    code, out, err = run_cli("inspect", old, "--model", tiny_models["encoder"], "--top", "2")
    assert code == 0, err
    assert NO_INIT in out


def test_inspect_errors_are_one_line(tiny_models, trained, run_cli, tmp_path):
    art = tmp_path / "anon"
    shutil.copytree(trained["encoder"] / "artifact", art)
    meta = json.loads((art / "promptlab.json").read_text())
    meta["backbone"].pop("name")
    (art / "promptlab.json").write_text(json.dumps(meta))
    code, _, err = run_cli("inspect", art)
    assert code == 2 and "pass --model" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("inspect", trained["encoder"], "--model", tiny_models["causal"])
    assert code == 2 and "load it with the model it was trained on" in err
    code, _, err = run_cli("inspect", tmp_path / "missing")
    assert code == 2 and "does not exist" in err


def test_hard_artifact_is_not_inspected(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["encoder"], "--method", "zero-shot",
                           "--limit", "4", "--out", tmp_path / "zs")
    assert code == 0, err
    assert not (tmp_path / "zs" / "inspect.json").exists()
    code, _, err = run_cli("inspect", tmp_path / "zs")
    assert code == 2 and "not a soft prompt" in err


def test_report_shows_what_soft_prompts_learned(trained, tmp_path):
    from promptlab.report import build

    # one report per model: a report does not mix the encoder's run with the causal model's
    res = build([trained["encoder"]], tmp_path / "rep")
    md = res["md"].read_text()
    assert "## What the trained prompts learned" in md
    first = json.loads((trained["encoder"] / "inspect.json").read_text())["tokens"][0]["nearest"][0]["token"]
    assert first in md
    assert "What the trained prompts learned" in res["html"].read_text()
    assert "key norm" in build([trained["prefix-tuning"]], tmp_path / "rep-prefix")["md"].read_text()


def test_init_file_does_not_count_as_artifact_bytes(trained):
    metrics = json.loads((trained["encoder"] / "metrics.json").read_text())
    art = trained["encoder"] / "artifact"
    total = sum(f.stat().st_size for f in art.iterdir())
    assert metrics["artifact_bytes"] == total - (art / "prompt_init.safetensors").stat().st_size


def test_in_memory_init_equals_the_saved_one(tiny_models):
    """What fit records is what PEFT would have saved at step 0 (no training: max_steps=1 moves it once)."""
    bb = load_backbone(str(tiny_models["encoder"]))
    cfg = RunConfig(task="sentiment", model=str(tiny_models["encoder"]), method="prompt-tuning", eval_size=4)
    cfg.train.train_size, cfg.train.epochs, cfg.train.virtual_tokens, cfg.train.dev_size = 8, 1, 4, 4
    cfg.train.init = "labels"
    task = get_task("sentiment")
    pred = run_one(cfg, bb, task, load_data(task, cfg), out=None).predictor
    words = bb.model.get_input_embeddings().weight
    ids = init_token_ids(bb, task, cfg, 4)
    assert torch.equal(pred.prompt_init, words[torch.tensor(ids)])
