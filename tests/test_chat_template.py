"""Hard and soft prompts on instruct models: rendered through the tokenizer's real chat template, token for token.

Tiny Llama-3.1- and Qwen2.5-shaped models read bytes; their tokenizers carry the instruct models' own templates
(tests/chat_templates.py) and know the templates' special tokens, as the real ones do: Llama's adds a BOS of its
own, Qwen's none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import pytest
from chat_templates import build_chat_model

from promptlab.backbones import load_backbone
from promptlab.chat import render_chat, token_ids
from promptlab.config import RunConfig
from promptlab.errors import ConfigError
from promptlab.methods import FitContext, get_method
from promptlab.methods.hard import COT_TRIGGER
from promptlab.methods.readout import Readout
from promptlab.pipeline import load_data
from promptlab.serving.openai_api import render_chat as served_chat
from promptlab.tasks import get_task
from promptlab.tasks.base import Example, Template

SYSTEM = "You label reviews."
@pytest.fixture(scope="module")
def chat_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-models")
    return {f: build_chat_model(f, root / f) for f in ("llama", "qwen")}


def _cfg(model: Path, method: str, **hard: Any) -> RunConfig:
    cfg = RunConfig(task="sentiment", model=str(model), method=method, eval_size=8, batch_size=4)
    cfg.train.train_size, cfg.train.dev_size, cfg.train.epochs, cfg.train.virtual_tokens = 12, 4, 1, 3
    for k, v in hard.items():
        setattr(cfg.hard, k, v)
    return cfg


def _fit(model: Path, method: str, **hard: Any) -> tuple[Any, Any, Any]:
    bb = load_backbone(str(model))
    task = get_task("sentiment")
    cfg = _cfg(model, method, **hard)
    data = load_data(task, cfg)
    pred = get_method(method).fit(FitContext(bb, task, data.train, data.dev, cfg, task.template(cfg.hard.template)))
    return pred, data, bb


class Inputs:
    """The ids each forward of the model reads (padding dropped by its attention mask)."""

    def __init__(self, model: Any) -> None:
        self.rows: list[list[int]] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, _module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        for r in range(ids.shape[0]):
            row = ids[r][mask[r].bool()] if mask is not None and mask.shape == ids.shape else ids[r]
            self.rows.append(row.tolist())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.remove()


def _template_ids(tok: Any, messages: list[dict[str, str]], **kw: Any) -> list[int]:
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kw)["input_ids"])


def _messages(task: Any, template: Any, ex: Any, demos: list = (), system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    for d in demos:
        msgs += [{"role": "user", "content": template.render(d, task.verbalizers)},
                 {"role": "assistant", "content": task.verbalizers[d.label]}]
    return msgs + [{"role": "user", "content": template.render(ex, task.verbalizers)}]


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_zero_shot_scores_choices_after_the_chat_templates_generation_prompt(chat_models, family):
    pred, data, bb = _fit(chat_models[family], "zero-shot")
    tok, task, ex = bb.tokenizer, pred.task, data.eval[0]
    want = _template_ids(tok, _messages(task, pred.template, ex))
    with Inputs(bb.model) as seen:
        pred.predict([ex])
    assert len(seen.rows) == len(task.labels)  # one row per choice
    for row, choice in zip(seen.rows, task.verbalizers):
        assert row[: len(want)] == want  # the prompt, token for token
        assert tok.decode(row[len(want):], skip_special_tokens=True).strip() == choice  # then the assistant's reply
    if family == "llama":
        assert all(row.count(tok.bos_token_id) == 1 and row[0] == tok.bos_token_id for row in seen.rows)
    else:
        assert tok.bos_token_id is None and seen.rows[0][0] == tok.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_few_shot_demonstrations_are_turns_after_the_system_prompt(chat_models, family):
    pred, data, bb = _fit(chat_models[family], "few-shot", shots=1, system_prompt=SYSTEM)
    tok, task, ex = bb.tokenizer, pred.task, data.eval[0]
    assert len(pred.demos) == len(task.labels)
    want = _template_ids(tok, _messages(task, pred.template, ex, pred.demos, SYSTEM))
    with Inputs(bb.model) as seen:
        pred.predict([ex])
    assert all(row[: len(want)] == want for row in seen.rows)
    assert tok.decode(want).count(SYSTEM) == 1
    # the rendered text is what predictions.jsonl records: special tokens included
    assert pred.inputs([ex])[0] == render_chat(tok, _messages(task, pred.template, ex, pred.demos, SYSTEM))


def test_template_kwargs_pass_through(chat_models):
    pred, data, bb = _fit(chat_models["llama"], "zero-shot", chat_template_kwargs='{"date_string": "01 Jan 2025"}')
    text = pred.inputs(data.eval[:1])[0]
    assert "Today Date: 01 Jan 2025" in text and "26 Jul 2024" not in text
    want = _template_ids(bb.tokenizer, _messages(pred.task, pred.template, data.eval[0]), date_string="01 Jan 2025")
    assert token_ids(bb.tokenizer, [text])[0] == want


def test_cot_reasons_and_answers_inside_the_assistant_turn(chat_models):
    pred, data, bb = _fit(chat_models["llama"], "cot", system_prompt=SYSTEM)
    tok, ex = bb.tokenizer, data.eval[0]
    want = _template_ids(tok, _messages(pred.task, pred.template, ex, system=SYSTEM))
    trigger = tok(COT_TRIGGER, add_special_tokens=False)["input_ids"]
    with Inputs(bb.model) as seen:
        out = pred.predict([ex])
    assert seen.rows[0] == want + trigger  # the reasoning's prompt: the generation prompt, then the trigger
    assert out[0].input.startswith(tok.bos_token) and out[0].input.count(tok.bos_token) == 1
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert out[0].input.count(header) == 1 and out[0].input.split(header)[1].startswith(COT_TRIGGER)
    assert out[0].input.rstrip().endswith("the answer is") and out[0].prediction in pred.task.labels
    assert all(row[: len(want)] == want and row.count(tok.bos_token_id) == 1 for row in seen.rows[-3:])


def test_chat_template_off_renders_the_raw_text(chat_models):
    pred, data, _ = _fit(chat_models["llama"], "few-shot", shots=1, chat_template="off")
    ex = data.eval[0]
    demos = "".join(f"{pred.template.render(d)} {pred.task.verbalizers[d.label]}\n\n" for d in pred.demos)
    assert pred.inputs([ex]) == [demos + pred.template.render(ex)]


def test_on_without_a_template_and_a_refusing_template_are_one_line_errors(tiny_models, chat_models):
    with pytest.raises(ConfigError, match="has no chat template"):
        _fit(tiny_models["causal"], "zero-shot", chat_template="on")
    with pytest.raises(ConfigError, match="drop --system-prompt"):
        _fit(tiny_models["causal"], "zero-shot", system_prompt=SYSTEM)


def test_few_shot_budget_counts_the_templates_tokens(chat_models):
    """A tight budget: the demonstrations get what the template's own tokens leave, and every input fits whole."""
    bb = load_backbone(str(chat_models["llama"]))
    task = get_task("sentiment")
    cfg = _cfg(chat_models["llama"], "few-shot", shots=4, template="review")
    cfg.max_input_tokens = 900
    data = load_data(task, cfg)
    pred = get_method("few-shot").fit(FitContext(bb, task, data.train, data.dev, cfg, task.template("review")))
    assert 0 < len(pred.demos) < 4 * len(task.labels)  # fewer than asked: the budget held them back
    texts = pred.inputs(data.eval)
    assert max(len(ids) for ids in token_ids(bb.tokenizer, texts)) <= 900
    assert all(t.endswith(pred.template.render(ex) + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
               for t, ex in zip(texts, data.eval))


def test_soft_prompt_trains_on_the_text_it_is_evaluated_on(chat_models, monkeypatch):
    seen: list[str] = []
    loss = Readout.loss

    def recording(self, model, inputs, examples):
        seen.extend(inputs)
        return loss(self, model, inputs, examples)

    monkeypatch.setattr(Readout, "loss", recording)
    pred, data, bb = _fit(chat_models["llama"], "prompt-tuning", system_prompt=SYSTEM)
    train = {ex.id: ex for ex in data.train}
    assert seen and set(seen) <= set(pred.inputs(list(train.values())))
    assert all(s.startswith(bb.tokenizer.bos_token + "<|start_header_id|>system") and SYSTEM in s for s in seen)
    out = pred.predict(data.eval[:2])
    assert [p.input for p in out] == pred.inputs(data.eval[:2])


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("verb,method", [("eval", "few-shot"), ("train", "hybrid")])
def test_reload_renders_the_same(chat_models, tmp_path, run_cli, verb, method):
    common = ["--task", "sentiment", "--model", chat_models["qwen"], "--limit", "6"]
    extra = ["--shots", "1"] if method == "few-shot" else ["--train-size", "8", "--epochs", "1", "--virtual-tokens", "3"]
    code, _, err = run_cli(verb, *common, "--method", method, *extra, "--system-prompt", SYSTEM, "--out", tmp_path / "a")
    assert code == 0, err
    meta = json.loads((tmp_path / "a" / "artifact" / "promptlab.json").read_text())
    assert meta["extras"]["chat"] == {"template": True, "system_prompt": SYSTEM, "kwargs": {}}
    code, _, err = run_cli("eval", *common, "--prompt", tmp_path / "a", "--out", tmp_path / "b")
    assert code == 0, err
    first, again = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["input"] for r in first] == [r["input"] for r in again]
    assert all(r["input"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>") for r in first)
    assert all(r["input"].endswith("<|im_start|>assistant\n") for r in first)
    assert [r["prediction"] for r in first] == [r["prediction"] for r in again]
    # predict (the server's code path: a soft prompt's rows in the engine's mixed batch) renders the same way
    code, out, err = run_cli("predict", "--prompt", tmp_path / "a", "a fine film")
    assert code == 0, err
    served = json.loads(out.splitlines()[0])["input"]
    tok = load_backbone(str(chat_models["qwen"])).tokenizer
    template = Template(meta["template"]["name"], meta["template"]["text"])
    user = template.render(Example("x", {"text": "a fine film"}), ["negative", "neutral", "positive"])
    if method == "hybrid":
        assert served == render_chat(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])
    else:
        assert served.startswith(first[0]["input"].split("<|im_start|>user")[0]) and served.endswith(
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def test_served_chat_and_hard_prompts_share_the_rendering(chat_models):
    bb = load_backbone(str(chat_models["llama"]))
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    text = served_chat(bb.tokenizer, msgs)
    assert text == render_chat(bb.tokenizer, msgs)
    assert token_ids(bb.tokenizer, [text])[0] == _template_ids(bb.tokenizer, msgs)  # one BOS, the template's
    assert token_ids(bb.tokenizer, ["hello"])[0][0] == bb.tokenizer.bos_token_id  # raw text keeps the tokenizer's
