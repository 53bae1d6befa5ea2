"""The model-family matrix: every method on a tiny random model of every family (tests/families.py).

For each family x method, on the sentiment task, one run through `pipeline.run_one` with an out dir:
- one training step moves only the trainable parameters (the frozen backbone bit-identical, the trainable changed);
- the saved artifact loads back (`load_predictor`) to identical predictions;
- the serving engine (`load_servable` + `Engine`) answers as the offline predictor does;
- an input longer than the model takes is cut to fit offline, and served alike or refused (InputTooLong, 413).
For generative families, on a text task: generation after each soft prompt (and LoRA, and no prompt) equals greedy
decoding by full recomputation through the PEFT model's own forward, offline, reloaded and served. For every
family, pez's prompt reads exactly as its tokens prepended to the input.
A combination that cannot work is a one-line promptlab error naming the family and the method (NOT_FOR_KIND,
REFUSED); every other combination must work.

bench/family_table.py runs this file and writes the README's support table from its outcomes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from families import FAMILIES, build_family
from peft import LoraConfig, get_peft_model

from promptlab.backbones import load_backbone
from promptlab.config import RunConfig
from promptlab.errors import PromptlabError
from promptlab.methods import FitContext, Prediction, adapted, get_method, hard, load_predictor
from promptlab.methods.adapted import AdaptedPredictor
from promptlab.methods.baselines import _lora_targets
from promptlab.methods.pez import PezPredictor, prompt_model
from promptlab.methods.soft import TASK_TYPES
from promptlab.pipeline import load_data, run_one
from promptlab.serving import Engine, Job, load_servable
from promptlab.serving.engine import InputTooLong
from promptlab.tasks import get_task
from promptlab.tasks.base import Example

METHODS = ["zero-shot", "few-shot", "cot", "prompt-tuning", "prefix-tuning", "p-tuning", "hybrid", "pez", "lora",
           "full-finetune", "linear-probe"]
GENERATIVE = [f for f, fam in FAMILIES.items() if fam.kind != "encoder"]
GEN_METHODS = ["zero-shot", "prompt-tuning", "prefix-tuning", "p-tuning", "hybrid", "pez", "lora"]

# What cannot work, and why (the reason is what the error must say besides the family and the method).
NOT_FOR_KIND = {"cot": "encoder", "linear-probe": ("seq2seq", "causal")}
REFUSED = {
    ("distilbert", "prefix-tuning"): "takes no past keys and values",
    ("deberta-v2", "prefix-tuning"): "takes no past keys and values",
    ("modernbert", "prefix-tuning"): "takes no past keys and values",
}


def refusal(family: str, method: str) -> str | None:
    """The words the error of a combination that cannot work must hold; None where it must work."""
    kind = FAMILIES[family].kind
    if kind in NOT_FOR_KIND.get(method, ()):
        return "needs a model that generates text" if method == "cot" else "it needs an encoder model"
    return REFUSED.get((family, method))


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """family name -> its tiny model's directory, built once per session on first use."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family(name, root / name)
        return built[name]

    return get


def _config(model: Path, method: str, generative: bool = True) -> RunConfig:
    # 1024 positions: few-shot's demonstrations take at most half the budget, and one sentiment demonstration is
    # ~150 byte tokens; an encoder generates nothing, so it is given no answer length
    cfg = RunConfig(task="sentiment", model=str(model), method=method, eval_size=4, batch_size=4,
                    max_new_tokens=4 if generative else None)
    cfg.train.train_size, cfg.train.dev_size = 9, 3
    cfg.train.epochs, cfg.train.max_steps = 1, 1
    cfg.train.virtual_tokens = 4
    return cfg


def _watch_training(monkeypatch) -> list[dict]:
    """Wrap the shared training loop: what was trainable and frozen before the step, and what moved after."""
    seen: list[dict] = []
    real = adapted.train_loop

    def loop(model, *args, **kwargs):
        before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
        result = real(model, *args, **kwargs)
        after = dict(model.named_parameters())
        seen.append({"before": before, "after": after, "steps": result.steps})
        return result

    monkeypatch.setattr(adapted, "train_loop", loop)
    return seen


def _check_trained(method: str, bb, seen: list[dict]) -> None:
    if isinstance(get_method(method), adapted.AdaptedMethod):  # trained by the shared loop
        assert len(seen) == 1 and seen[0]["steps"] >= 1
        trainable = {n for n, (_, g) in seen[0]["before"].items() if g}
        moved = {n for n, (p, _) in seen[0]["before"].items() if not torch.equal(p, seen[0]["after"][n].detach())}
        assert trainable and moved, "one step changed nothing"
        assert moved <= trainable, f"frozen parameters moved: {sorted(moved - trainable)[:3]}"
        if method == "full-finetune":
            assert len(trainable) == len(list(bb.model.parameters()))
        else:  # an adapter on the frozen model: only its own parameters train
            tag = "lora_" if method == "lora" else "prompt_encoder"
            assert all(tag in n for n in trainable), sorted(trainable)[:3]
    else:  # hard prompts train nothing; linear-probe fits its head on frozen embeddings
        assert not seen


LONG = Example("long", {"text": " ".join(["the food was great and the staff were lovely"] * 40)}, label=2)


def _same(got, want) -> None:
    assert [p.prediction for p in got] == [p.prediction for p in want]
    assert [p.score for p in got] == pytest.approx([p.score for p in want], abs=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_method_on_family(family_model, tmp_path, monkeypatch, record_property, family, method):
    bb = load_backbone(str(family_model(family)))
    assert bb.kind == FAMILIES[family].kind
    frozen = {k: v.clone() for k, v in bb.model.state_dict().items()}
    cfg = _config(family_model(family), method, generative=bb.kind != "encoder")
    task = get_task("sentiment")
    data = load_data(task, cfg)
    seen = _watch_training(monkeypatch)
    monkeypatch.setattr(hard, "COT_TOKENS", 8)  # the reasoning's length changes nothing tested here
    why = refusal(family, method)
    if why is not None:
        with pytest.raises(PromptlabError) as err:
            run_one(cfg, bb, task, data, out=tmp_path / "run")
        msg = str(err.value)
        assert len(msg.splitlines()) == 1 and why in msg, msg
        assert f"'{method}'" in msg or msg.startswith(method), msg
        assert bb.family in msg, msg
        # for bench/family_table.py's notes: one per reason, whichever model gave it
        record_property("refused", msg.replace(str(family_model(family)), "<model>").replace(bb.family, "<family>"))
        return
    res = run_one(cfg, bb, task, data, out=tmp_path / "run")
    assert all(torch.equal(frozen[k], v) for k, v in bb.model.state_dict().items()), "the shared backbone changed"
    _check_trained(method, bb, seen)
    if method == "linear-probe":
        assert res.predictor.n_trainable() > 0
    exs = data.eval
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [ex.id for ex in exs]
    offline = load_predictor(str(tmp_path / "run"), bb, task).predict(exs)
    _same(offline, [Prediction(r["input"], r["prediction"], score=r["score"]) for r in rows])
    served = load_servable("p", str(tmp_path / "run"), bb)
    engine = Engine(bb)
    engine.attach(served)
    answers, long_answer = engine.run([Job(served, exs), Job(served, [LONG])])
    assert not isinstance(answers, Exception), answers
    _same(answers, offline)
    # an input past the model's length is cut to fit around the prompt offline, and refused (413) by the server
    # where a soft prompt's virtual tokens would push it past an absolute-position model's positions
    long_offline = load_predictor(str(tmp_path / "run"), bb, task).predict([LONG])
    if isinstance(long_answer, InputTooLong):
        assert served.virtual_tokens and bb.positions, long_answer
    else:
        assert not isinstance(long_answer, Exception), long_answer
        _same(long_answer, long_offline)


# -- generation ----------------------------------------------------------------------------------------------
QUESTIONS = [("who was born in the city?", "the hotel room was clean"), ("what", "a"),
             ("which country is the package from?", "the package arrived on tuesday from a city")]
NEW_TOKENS = 5


def _random_predictor(bb, method: str, task) -> AdaptedPredictor:
    """A predictor of `method` with random (untrained) prompt or adapter weights: for an equality test they serve
    as well as trained ones. Built by promptlab's own methods, saved by its own save path."""
    m = get_method(method)
    m.check(bb, task)
    template = m.template_for(task, RunConfig(), bb.kind)
    g = torch.Generator().manual_seed(len(method))
    if method == "pez":
        ids = torch.randint(3, 3 + 128, (4,), generator=g).tolist()
        return PezPredictor(method, bb, task, template, model=prompt_model(bb, m, ids), ids=ids,
                            max_new_tokens=NEW_TOKENS)
    if method == "lora":
        model = get_peft_model(adapted.unfrozen_copy(bb.model).requires_grad_(False),
                               LoraConfig(task_type=TASK_TYPES[bb.kind], r=4, target_modules=_lora_targets(bb.model)))
        params = [p for n, p in model.named_parameters() if "lora_B" in n]
    else:
        model = get_peft_model(bb.model, m.peft_config(bb, 4))
        params = list(model.prompt_encoder["default"].parameters())
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return AdaptedPredictor(method, bb, task, template, model=model.eval(), max_new_tokens=NEW_TOKENS)


@torch.inference_mode()
def greedy_by_recomputing(bb, model, text: str, k: int) -> str:
    """The definition of greedy decoding: one full forward of the adapted model per new token, through its own
    forward (PEFT's, which puts the prompt or prefix in front every time, as in training)."""
    ids = torch.tensor([bb.tokenizer(text)["input_ids"]])
    out: list[int] = []
    for _ in range(k):
        if bb.kind == "seq2seq":
            start = int(bb.model.config.decoder_start_token_id or 0)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           decoder_input_ids=torch.tensor([[start, *out]])).logits
        else:
            seq = torch.cat([ids, torch.tensor([out], dtype=torch.long)], dim=1)
            logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
        out.append(int(logits[0, -1].argmax()))
    return bb.tokenizer.decode(out, skip_special_tokens=True).strip()


@pytest.mark.parametrize("method", GEN_METHODS)
@pytest.mark.parametrize("family", GENERATIVE)
def test_generation_on_family(family_model, tmp_path, family, method):
    bb = load_backbone(str(family_model(family)))
    task = get_task("hotpotqa")
    exs = [Example(str(i), {"question": q, "context": c}) for i, (q, c) in enumerate(QUESTIONS)]
    if method == "zero-shot":
        cfg = RunConfig(max_new_tokens=NEW_TOKENS)
        pred = get_method(method).fit(FitContext(bb, task, [], [], cfg, task.template()))
    else:
        pred = _random_predictor(bb, method, task)
    model = pred.model if pred.model is not None else bb.model
    offline = [p.prediction for p in pred.predict(exs)]
    want = [greedy_by_recomputing(bb, model, x, NEW_TOKENS) for x in pred.inputs(exs)]
    assert offline == want
    assert all(len(t) >= NEW_TOKENS - 1 for t in offline), offline  # visible text, not an early stop
    pred.save(tmp_path / "art")
    assert [p.prediction for p in load_predictor(str(tmp_path / "art"), bb, task).predict(exs)] == want
    served = load_servable("p", str(tmp_path / "art"), bb)
    engine = Engine(bb)
    engine.attach(served)
    (answers,) = engine.run([Job(served, exs)])
    assert not isinstance(answers, Exception), answers
    assert [a.prediction for a in answers] == want


# -- pez ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
@torch.inference_mode()
def test_pez_prompt_is_its_tokens(family_model, family):
    """pez's artifact is token ids: its predictor must read exactly what those tokens put in front of the input,
    also where the family scales its embedding table inside the embedding module (Gemma)."""
    bb = load_backbone(str(family_model(family)))
    ids = [70, 80, 90]
    model = prompt_model(bb, get_method("pez"), ids)
    x = torch.tensor([bb.tokenizer("the food was great")["input_ids"]])
    both = torch.cat([torch.tensor([ids]), x], dim=1)
    kw = {}
    if bb.kind == "seq2seq":
        kw["decoder_input_ids"] = torch.tensor([[int(bb.model.config.decoder_start_token_id or 0)]])
    ours = model(input_ids=x, attention_mask=torch.ones_like(x), **kw)
    direct = bb.model(input_ids=both, attention_mask=torch.ones_like(both), **kw)
    field = "last_hidden_state" if bb.kind == "encoder" else "logits"
    assert torch.allclose(getattr(ours, field), getattr(direct, field), atol=1e-5)


def test_a_refusal_is_one_line_at_the_cli(family_model, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", family_model("deberta-v2"), "--method",
                           "prefix-tuning", "--train-size", "9", "--limit", "4", "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "prefix-tuning cannot run on deberta-v2 models" in err and not (tmp_path / "run").exists()
