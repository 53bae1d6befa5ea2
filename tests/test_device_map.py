"""A model placed across devices (--device-map) predicts what the same model on one device predicts.

No GPU here: the split is between the CPU and disk (accelerate's offload), which runs the same hooks that move
activations between GPUs — a layer's weights arrive from elsewhere at its forward, and the batch must start where
the input embeddings execute (Backbone.device). Hard methods, a trained soft prompt (PEFT on the dispatched model),
generation, `predict` and the serving engine are checked against the unplaced model.
"""

from __future__ import annotations

import json

import pytest
import torch

from promptlab.backbones import load_backbone
from promptlab.errors import ConfigError
from promptlab.placement import describe, load_kwargs, parse_max_memory, read_device_map

# GPT-2 (tiny_models["causal"]): embeddings and the first block on the CPU, the second block and the final norm on
# disk; T5: its decoder's blocks on disk (not the decoder's embedding: it is tied to `shared`, and a tied weight
# offloaded apart from its twin is not in accelerate's offload index).
SPLITS = {
    "causal": {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu", "transformer.h.1": "disk",
               "transformer.ln_f": "disk", "lm_head": "cpu"},
    "seq2seq": {"shared": "cpu", "encoder": "cpu", "decoder.embed_tokens": "cpu", "decoder.block": "disk",
                "decoder.final_layer_norm": "disk", "lm_head": "cpu"},
}


def _map(tmp_path, kind):
    path = tmp_path / f"{kind}-map.json"
    path.write_text(json.dumps(SPLITS[kind]))
    return path


def _predictions(run_dir):
    return [json.loads(line)["prediction"] for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_flag_syntax_is_accelerates():
    assert parse_max_memory("0=20GiB, cuda:1=20GiB,cpu=60GiB") == {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}
    assert read_device_map("balanced") == "balanced"
    assert load_kwargs(None, None, None) == {}
    assert load_kwargs("auto", "cpu=1MiB", "/x") == {"device_map": "auto", "max_memory": {"cpu": "1MiB"},
                                                     "offload_folder": "/x"}


@pytest.mark.parametrize("args, match", [
    (("auto", "cpu:60GiB", "/x"), "is not DEVICE=SIZE"),
    (("auto", "disk=1GiB", "/x"), "is not DEVICE=SIZE"),
    (("auto", "cpu=lots", "/x"), "is not DEVICE=SIZE"),
    (("nope", None, None), "neither a strategy"),
    ((None, "cpu=1GiB", None), "add --device-map auto"),
    ((None, None, "/x"), "add --device-map auto"),
    (("auto", "cpu=1GiB", None), "add --offload-dir"),
])
def test_a_bad_placement_is_one_line(args, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_kwargs(*args)
    assert "\n" not in str(e.value)


def test_a_map_file_without_devices_is_one_line(tmp_path):
    (tmp_path / "m.json").write_text('{"transformer": "gpu"}')
    with pytest.raises(ConfigError, match="no device"):
        read_device_map(str(tmp_path / "m.json"))


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_hard_and_text_predictions_equal_the_unplaced_models(kind, tiny_models, tmp_path):
    whole = load_backbone(str(tiny_models[kind]))
    placed = load_backbone(str(tiny_models[kind]), placement=load_kwargs(str(_map(tmp_path, kind)), None,
                                                                         str(tmp_path / "off")))
    assert placed.device == torch.device("cpu")
    info = describe(placed.model)
    assert info["modules"] == {"cpu": 4, "disk": 2}
    assert info["params"]["disk"] > 0  # the disk really holds weights
    assert any(p.device.type == "meta" for p in placed.model.parameters())  # ...and they are not in memory
    prompts, choices = ["the food was great", "a terrible film, really"], ["positive", "negative", "neutral"]
    torch.testing.assert_close(placed.score_choices(prompts, choices), whole.score_choices(prompts, choices),
                               rtol=0, atol=1e-5)
    assert placed.generate(prompts, 6) == whole.generate(prompts, 6)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_everything_on_disk_still_takes_its_inputs_on_the_cpu(kind, tiny_models, tmp_path):
    """A memory cap smaller than any block: accelerate puts the whole model on disk; its embeddings are meta
    tensors, and the batches go to accelerate's main device, the CPU."""
    whole = load_backbone(str(tiny_models[kind]))
    placed = load_backbone(str(tiny_models[kind]), placement=load_kwargs("auto", "cpu=1KiB", str(tmp_path / "o")))
    assert placed.model.get_input_embeddings().weight.device.type == "meta"
    assert placed.device == torch.device("cpu")
    assert placed.generate(["the food was"], 5) == whole.generate(["the food was"], 5)


def _train(method, model, out):
    from promptlab.cli import main

    code = main(["train", "--task", "sentiment", "--method", method, "--model", str(model), "--train-size", "12",
                 "--epochs", "1", "--virtual-tokens", "3", "--limit", "8", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def soft_run(tiny_models, tmp_path_factory):
    """A prompt-tuning artifact trained on the unplaced causal model (one short epoch)."""
    return _train("prompt-tuning", tiny_models["causal"], tmp_path_factory.mktemp("soft") / "pt")


def test_a_prefix_on_a_cpu_and_disk_map_is_refused_in_one_line(tiny_models, run_cli, tmp_path):
    """PEFT 0.21 places a prefix's layers by the map's first GPU; with none it raises StopIteration."""
    run = _train("prefix-tuning", tiny_models["causal"], tmp_path / "prefix")
    code, _, err = run_cli("eval", "--prompt", run, "--limit", "4", "--device-map", _map(tmp_path, "causal"),
                           "--offload-dir", tmp_path / "off", "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "needs a GPU in the --device-map" in err, err
    assert not (tmp_path / "x").exists()


def test_eval_and_predict_of_a_soft_prompt_on_a_split_model(soft_run, tiny_models, run_cli, tmp_path):
    dm = _map(tmp_path, "causal")
    code, _, err = run_cli("eval", "--prompt", soft_run, "--limit", "8", "--out", tmp_path / "whole")
    assert code == 0, err
    code, _, err = run_cli("eval", "--prompt", soft_run, "--limit", "8", "--device-map", dm, "--offload-dir",
                           tmp_path / "off", "--out", tmp_path / "split")
    assert code == 0, err
    assert _predictions(tmp_path / "split") == _predictions(tmp_path / "whole")
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "split"))
    assert a["metrics"] == b["metrics"]
    assert "placement" not in a["device"]
    assert b["device"]["placement"]["device_map"] == SPLITS["causal"]
    assert b["device"]["placement"]["modules"] == {"cpu": 4, "disk": 2}
    assert b["config"]["device_map"] == str(dm)

    texts = ["the food was great", "terrible film"]
    outs = []
    for extra in ([], ["--device-map", dm, "--offload-dir", tmp_path / "off2"]):
        code, out, err = run_cli("predict", "--prompt", soft_run, *extra, *texts)
        assert code == 0, err
        outs.append([json.loads(line) for line in out.splitlines()])
    assert [o["prediction"] for o in outs[1]] == [o["prediction"] for o in outs[0]]
    for x, y in zip(outs[0], outs[1]):
        assert y["score"] == pytest.approx(x["score"], abs=1e-5)


def test_a_hard_method_on_a_split_model_via_the_cli(tiny_models, run_cli, tmp_path):
    argv = ["eval", "--task", "sentiment", "--method", "few-shot", "--model", tiny_models["causal"], "--limit", "6"]
    code, _, err = run_cli(*argv, "--out", tmp_path / "whole")
    assert code == 0, err
    code, _, err = run_cli(*argv, "--device-map", "auto", "--max-memory", "cpu=20KiB", "--offload-dir",
                           tmp_path / "off", "--out", tmp_path / "split")
    assert code == 0, err
    assert _predictions(tmp_path / "split") == _predictions(tmp_path / "whole")
    placement = json.loads((tmp_path / "split" / "metrics.json").read_text())["device"]["placement"]
    assert "disk" in placement["modules"]


def test_the_server_on_a_split_model_answers_as_on_the_whole_one(soft_run, tiny_models, tmp_path):
    """The HTTP app over a placed model: a soft prompt and a hard one in the same requests."""
    from fastapi.testclient import TestClient

    from promptlab.serving.app import create_app
    from promptlab.serving.server import build_state

    texts = [{"text": t} for t in ["great food", "awful", "fine i guess"]]
    answers = []
    for placement in ({}, load_kwargs(str(_map(tmp_path, "causal")), None, str(tmp_path / "off"))):
        bb = load_backbone(str(tiny_models["causal"]), placement=placement)
        with TestClient(create_app(build_state(bb, [f"pt={soft_run}", "zs=zero-shot:sentiment"]))) as c:
            for name in ("pt", "zs"):
                r = c.post("/v1/predict", json={"prompt": name, "inputs": texts})
                assert r.status_code == 200, r.text
                answers.append([(o["label"], o["score"]) for o in r.json()["predictions"]])
    whole, split = answers[:2], answers[2:]
    for w, s in zip(whole, split):
        assert [p for p, _ in s] == [p for p, _ in w]
        assert [x for _, x in s] == pytest.approx([x for _, x in w], abs=1e-5)


def test_training_a_placed_model_is_refused_in_one_line(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--method", "prompt-tuning", "--model",
                           tiny_models["causal"], "--device-map", "auto", "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "FSDP" in err and "accelerate_fsdp.yaml" in err, err
    assert not (tmp_path / "x").exists()


def test_device_and_device_map_together_are_refused(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("eval", "--task", "sentiment", "--method", "zero-shot", "--model", tiny_models["causal"],
                           "--device", "cpu", "--device-map", "auto", "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "keep one" in err, err


@pytest.mark.parametrize("extra, match", [(["--max-memory", "cpu=1GiB"], "add --device-map auto"),
                                          (["--device", "cpu", "--device-map", "auto"], "keep one")])
def test_serve_checks_its_placement_flags_in_one_line(extra, match, tiny_models, run_cli):
    code, _, err = run_cli("serve", "--model", tiny_models["causal"], "--prompt", "zs=zero-shot:sentiment", "--port",
                           "0", *extra)
    assert code == 2 and err.count("\n") == 1 and match in err, err
