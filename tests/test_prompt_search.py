"""prompt-search on tiny models: it keeps the best-scoring candidate, records every one, honours its budgets,
never scores demos on themselves, and its artifact reproduces without searching again."""

import json

import pytest

from promptlab.backbones import load_backbone
from promptlab.config import RunConfig
from promptlab.methods import prompt_search
from promptlab.pipeline import load_data, run_one
from promptlab.tasks import get_task


def _cfg(model, **hard):
    cfg = RunConfig(task="sentiment", model=str(model), method="prompt-search", eval_size=12, batch_size=8)
    cfg.train.train_size, cfg.train.dev_size = 16, 16
    for k, v in hard.items():
        setattr(cfg.hard, k, v)
    return cfg


def _run(bb, cfg, out=None):
    task = get_task("sentiment")
    return run_one(cfg, bb, task, load_data(task, cfg), out=out)


@pytest.fixture(scope="module")
def encoder(tiny_models):
    return load_backbone(str(tiny_models["encoder"]))


def test_candidates_put_the_bare_input_and_task_templates_first_then_a_seeded_sample():
    task = get_task("sentiment")
    first = task.plain_template()
    cands = prompt_search.candidates(task, first, n_demo_sets=3, limit=12, seed=0)
    heads = 1 + len(task.templates)
    assert len(cands) == 12
    assert [c.template.name for c in cands[:heads]] == ["plain"] + [t.name for t in task.templates]
    assert all(c.instruction is None and c.demo_set is None for c in cands[:heads])
    assert all(c.instruction is not None or c.demo_set is not None for c in cands[heads:])
    assert cands == prompt_search.candidates(task, first, 3, 12, seed=0)  # seeded: the same list again
    assert cands[heads:] != prompt_search.candidates(task, first, 3, 12, seed=1)[heads:]
    every = prompt_search.candidates(task, first, 3, 10_000, seed=0)
    n_instr = len(prompt_search.instructions_for(task))
    assert len(every) == heads * (1 + n_instr) * (1 + 3)  # templates x (none + instructions) x (none + demo sets)


def test_search_keeps_the_best_candidate_and_records_every_score(encoder, monkeypatch):
    """A scorer that loves one instruction: the search must choose it, and record every candidate's score."""
    def fake_score(pred, task, examples, batch_size):
        return 0.9 if pred.template.text.startswith("Answer with one word.") else 0.1 + 0.01 * len(pred.demos)

    monkeypatch.setattr(prompt_search, "score_candidate", fake_score)
    res = _run(encoder, _cfg(encoder.name, candidates=200))
    info = res.metrics["method_info"]
    rec = info["candidates"]
    assert len(rec) == info["evaluated"] > 20
    best = max(rec, key=lambda r: (r["selection_key"], -r["index"]))
    assert info["chosen"] == best["index"] and best["instruction"] == "Answer with one word."
    assert best["score"] == max(r["score"] for r in rec)
    assert res.predictor.template.text == best["text"] == res.metrics["template"]
    assert [d.id for d in res.predictor.demos] == best["demo_ids"]


def test_selection_prefers_the_score_backed_by_more_examples():
    """7/8 against 13/16: the raw score favours the smaller sample, the lower bound the larger; at equal n the
    bound keeps the score's order."""
    task = get_task("sentiment")
    key = prompt_search.selection_key
    assert key(task, 7 / 8, 8) < key(task, 13 / 16, 16)
    assert key(task, 0.5, 16) < key(task, 0.75, 16) < key(task, 0.8125, 16)
    assert key(task, 1.0, 16) < 1.0 and key(task, 0.0, 16) == pytest.approx(0.0, abs=1e-12)


def test_candidates_flag_caps_the_search_and_dev_size_caps_the_scoring(encoder, monkeypatch):
    seen = []

    def spy(pred, task, examples, batch_size):
        seen.append(({d.id for d in pred.demos}, [ex.id for ex in examples]))
        return 0.5

    monkeypatch.setattr(prompt_search, "score_candidate", spy)
    res = _run(encoder, _cfg(encoder.name, candidates=7, search_size=5))
    assert len(seen) == len(res.metrics["method_info"]["candidates"]) == 7
    assert all(len(ids) <= 5 for _, ids in seen)
    assert res.metrics["method_info"]["chosen"] == 0  # all tied: the first (the bare input) stays


def test_demos_are_never_scored_on_themselves(encoder, monkeypatch):
    """--search-on train (the default): candidates with demos drawn from train are scored on the rest."""
    seen = []

    def spy(pred, task, examples, batch_size):
        seen.append(({d.id for d in pred.demos}, {ex.id for ex in examples}))
        return 0.5

    monkeypatch.setattr(prompt_search, "score_candidate", spy)
    cfg = _cfg(encoder.name, candidates=500, shots=2)
    task = get_task("sentiment")
    train_ids = {ex.id for ex in load_data(task, cfg).train}
    _run(encoder, cfg)
    with_demos = [(d, s) for d, s in seen if d]
    assert with_demos and all(not (d & s) for d, s in with_demos)
    assert all(d <= train_ids and s <= train_ids for d, s in seen)
    assert any(len(s) == len(train_ids) for d, s in seen if not d)  # zero-shot candidates see all of train


def test_search_on_dev_scores_on_the_dev_slice(encoder, monkeypatch):
    seen = []
    monkeypatch.setattr(prompt_search, "score_candidate",
                        lambda pred, task, examples, bs: seen.append({ex.id for ex in examples}) or 0.5)
    cfg = _cfg(encoder.name, candidates=4, search_on="dev")
    dev_ids = {ex.id for ex in load_data(get_task("sentiment"), cfg).dev}
    res = _run(encoder, cfg)
    assert seen and all(s == dev_ids for s in seen)
    assert res.metrics["method_info"]["search_on"] == "dev"


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_eval_prompt_reproduces_the_chosen_prompt_without_searching(tiny_models, run_cli, tmp_path, monkeypatch,
                                                                    kind):
    model = str(tiny_models[kind])
    common = ["--task", "sentiment", "--model", model, "--limit", "12"]
    code, _, err = run_cli("eval", *common, "--method", "prompt-search", "--candidates", "6", "--search-size", "8",
                           "--out", tmp_path / "search")
    assert code == 0, err
    metrics = json.loads((tmp_path / "search" / "metrics.json").read_text())
    assert len(metrics["method_info"]["candidates"]) == 6
    prompt = json.loads((tmp_path / "search" / "artifact" / "prompt.json").read_text())
    chosen = metrics["method_info"]["candidates"][metrics["method_info"]["chosen"]]
    assert prompt["text"] == chosen["text"] and [d["id"] for d in prompt["demos"]] == chosen["demo_ids"]

    def no_search(*a, **k):
        raise AssertionError("eval --prompt must not search again")

    monkeypatch.setattr(prompt_search, "score_candidate", no_search)
    code, _, err = run_cli("eval", *common, "--prompt", tmp_path / "search", "--out", tmp_path / "again")
    assert code == 0, err
    first = (tmp_path / "search" / "predictions.jsonl").read_text()
    assert (tmp_path / "again" / "predictions.jsonl").read_text() == first
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["metrics"] == metrics["metrics"] and again["template"] == chosen["text"]
    if kind == "encoder":
        code, _, err = run_cli("report", tmp_path / "search", "--out", tmp_path / "report")
        assert code == 0, err
        md = (tmp_path / "report" / "report.md").read_text()
        assert f"prompt-search chose `{chosen['name']}`" in md and f"best of 6 candidates): {json.dumps(chosen['text'])}" in md


def test_embedding_cache_embeds_each_text_once_and_changes_no_score(encoder, monkeypatch):
    calls: list[int] = []
    real = type(encoder).encode

    def counting(self, texts, model=None):
        calls.append(len(texts))
        return real(self, texts, model)

    plain = encoder.embed(["a b", "c d e", "a b"])
    monkeypatch.setattr(type(encoder), "encode", counting)
    with encoder.embedding_cache():
        first = encoder.embed(["a b", "c d e", "a b"])
        again = encoder.embed(["c d e", "f"])
    assert sum(calls) == 3  # "a b", "c d e", then only "f"
    assert (first - plain).abs().max() < 1e-6 and (again[0] - plain[1]).abs().max() < 1e-6
    assert encoder._memo is None  # the scope ends with the cache
    monkeypatch.setattr(type(encoder), "encode", real)
    # the search with the cache chooses and records exactly what it does without one
    cached = _run(encoder, _cfg(encoder.name, candidates=12)).metrics["method_info"]["candidates"]
    from contextlib import nullcontext
    monkeypatch.setattr(type(encoder), "embedding_cache", lambda self: nullcontext())
    uncached = _run(encoder, _cfg(encoder.name, candidates=12)).metrics["method_info"]["candidates"]
    assert [r["score"] for r in cached] == [r["score"] for r in uncached]
