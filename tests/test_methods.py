"""Methods on tiny models: the frozen invariant, learning, save/load, and every backbone kind."""

import json

import pytest
import torch

from promptlab.backbones import load_backbone
from promptlab.config import RunConfig
from promptlab.methods import FitContext, get_method
from promptlab.methods.readout import Readout
from promptlab.methods.soft import SoftMethod
from promptlab.pipeline import load_data, run_one
from promptlab.tasks import get_task


def _cfg(model, method, **train):
    cfg = RunConfig(task="sentiment", model=str(model), method=method, eval_size=24, batch_size=8)
    cfg.train.train_size = train.pop("train_size", 32)
    cfg.train.epochs = train.pop("epochs", 1)
    cfg.train.dev_size = 16
    cfg.train.virtual_tokens = 4
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning", "p-tuning"])
def test_soft_prompt_leaves_backbone_bit_identical(tiny_models, kind, method):
    bb = load_backbone(str(tiny_models[kind]))
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    cfg = _cfg(tiny_models[kind], method)
    task = get_task("sentiment")
    res = run_one(cfg, bb, task, load_data(task, cfg), out=None)
    assert res.metrics["history"][0]["step"] > 0
    after = bb.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
def test_only_prompt_parameters_receive_gradients(tiny_models, kind):
    from peft import get_peft_model

    bb = load_backbone(str(tiny_models[kind]))
    task = get_task("sentiment")
    method = get_method("prompt-tuning")
    model = get_peft_model(bb.model, method.peft_config(bb, 4))
    ex = task.splits()["train"][:4]
    loss = Readout(bb, task).loss(model, [e.fields["text"] for e in ex], ex)
    loss.backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded and all("prompt_encoder" in n for n in graded), graded
    assert all(p.grad is None for p in bb.model.parameters())


def test_seq2seq_prompt_counts_only_the_rows_it_uses(tiny_models):
    cfg = _cfg(tiny_models["seq2seq"], "prompt-tuning", max_steps=1)
    bb = load_backbone(str(tiny_models["seq2seq"]))
    task = get_task("sentiment")
    res = run_one(cfg, bb, task, load_data(task, cfg), out=None)
    assert res.metrics["trainable_params"] == 4 * 32  # virtual tokens x d_model, not 2x


def test_soft_prompt_learns_a_toy_task():
    """Training loss of a soft prompt on a tiny T5 falls well below where it started.

    The T5 is built with a large init scale and no dropout: a default-initialised random tiny model
    barely reacts to its input, so no prompt could move its loss.
    """
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    from promptlab.backbones import from_pretrained_objects

    torch.manual_seed(1)
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=384, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2, initializer_factor=2.0,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    bb = from_pretrained_objects("tiny-t5", t5, ByT5Tokenizer())
    cfg = _cfg("tiny-t5", "prompt-tuning", train_size=64, epochs=30, patience=100, virtual_tokens=8, batch_size=8)
    task = get_task("sentiment")
    hist = run_one(cfg, bb, task, load_data(task, cfg), out=None).metrics["history"]
    assert len(hist) == 30
    last = sum(h["train_loss"] for h in hist[-3:]) / 3
    assert last < 0.8 * hist[0]["train_loss"], [round(h["train_loss"], 2) for h in hist]


@pytest.mark.parametrize(
    "kind,method",
    [
        ("encoder", "prompt-tuning"),
        ("encoder", "prefix-tuning"),
        ("encoder", "linear-probe"),
        ("encoder", "lora"),
        ("encoder", "full-finetune"),
        ("encoder", "few-shot"),
        ("seq2seq", "prompt-tuning"),
        ("seq2seq", "hybrid"),
        ("seq2seq", "lora"),
        ("causal", "prompt-tuning"),
        ("causal", "p-tuning"),
        ("causal", "prefix-tuning"),
        ("causal", "few-shot"),
    ],
)
def test_save_load_reproduces_predictions(tiny_models, tmp_path, run_cli, kind, method):
    model = tiny_models[kind]
    verb = "eval" if method == "few-shot" else "train"
    common = ["--task", "sentiment", "--model", model, "--limit", "16", "--seed", "1"]
    extra = ["--method", method]
    if verb == "train":
        extra += ["--train-size", "24", "--epochs", "1"]
    if isinstance(get_method(method), SoftMethod):
        extra += ["--virtual-tokens", "4"]
    code, _, err = run_cli(verb, *common, *extra, "--out", tmp_path / "run")
    assert code == 0, err
    code, _, err = run_cli("eval", *common, "--prompt", tmp_path / "run", "--out", tmp_path / "again")
    assert code == 0, err
    first = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    second = [
        json.loads(line) for line in (tmp_path / "again" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["prediction"] for r in first] == [r["prediction"] for r in second]
    assert [r["score"] for r in first] == pytest.approx([r["score"] for r in second], abs=1e-5)
    m1 = json.loads((tmp_path / "run" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert m1["metrics"] == pytest.approx(m2["metrics"])
    if method in ("prompt-tuning", "prefix-tuning", "p-tuning", "hybrid", "lora"):
        art = tmp_path / "run" / "artifact"
        assert (art / "adapter_config.json").is_file() and (art / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
def test_hard_methods_answer_with_task_labels(tiny_models, kind):
    bb = load_backbone(str(tiny_models[kind]))
    task = get_task("sentiment")
    cfg = _cfg(tiny_models[kind], "zero-shot")
    data = load_data(task, cfg)
    for name in ("zero-shot", "few-shot"):
        cfg.method = name
        pred = get_method(name).fit(FitContext(bb, task, data.train, data.dev, cfg, task.template()))
        out = pred.predict(data.eval[:6])
        assert {p.prediction for p in out} <= set(task.labels)
        assert all(0 < p.score <= 1 for p in out)
        if name == "few-shot" and kind != "encoder":
            assert out[0].input.count("\n\n") >= len(task.labels)  # demonstrations are in the context


def test_few_shot_nearest_picks_similar_demonstrations(tiny_models):
    bb = load_backbone(str(tiny_models["causal"]))
    task = get_task("sentiment")
    cfg = _cfg(tiny_models["causal"], "few-shot")
    cfg.hard.selection, cfg.hard.shots = "nearest", 1
    data = load_data(task, cfg)
    pred = get_method("few-shot").fit(FitContext(bb, task, data.train, data.dev, cfg, task.template()))
    target = pred.demos[5]
    inp = pred.inputs([target])[0]
    assert target.fields["text"] in inp.split("\n\n")[-2]  # the nearest demo sits right before the question


def test_cot_generates_reasoning_then_reads_the_answer(tiny_models):
    bb = load_backbone(str(tiny_models["seq2seq"]))
    task = get_task("sentiment")
    cfg = _cfg(tiny_models["seq2seq"], "cot")
    pred = get_method("cot").fit(FitContext(bb, task, [], [], cfg, task.template()))
    out = pred.predict(task.splits()["test"][:2])
    assert all("step by step" in p.input and p.input.rstrip().endswith("the answer is") for p in out)
    assert {p.prediction for p in out} <= set(task.labels)


@pytest.mark.parametrize("classes", [2, 3])
def test_shared_head_reproduces_sklearn_probabilities(classes):
    """linear-probe and setfit keep sklearn's classifier as logits: softmax(x W^T + b) is its predict_proba,
    and a label absent from training (index 3) is never predicted."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from promptlab.methods.linear_head import head_as_logits

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, classes, size=60)
    clf = LogisticRegression().fit(x, y)
    w, b, n = head_as_logits(clf, 4)
    probs = torch.softmax(torch.from_numpy(x).float() @ w.T + b, dim=-1)
    assert torch.allclose(probs[:, :classes], torch.from_numpy(clf.predict_proba(x)).float(), atol=1e-5)
    assert float(probs[:, 3].max()) < 1e-30 and n == clf.coef_.size + clf.intercept_.size
