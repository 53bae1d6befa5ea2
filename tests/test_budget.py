"""Input budgets that hold for what the model reads (demonstrations included), and runs that record what they used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import assert_clean_error

HOTPOT_TOPICS = ["harbor", "glacier", "quartet", "orchard", "canal", "lantern", "meadow", "citadel", "ferry", "quarry"]


def _hotpot_items() -> list[dict]:
    """Ten HotpotQA-shaped items, each with six paragraphs of several sentences: far over a 600-byte budget."""
    items = []
    for i, topic in enumerate(HOTPOT_TOPICS):
        paras = [[f"{topic.title()} {j}", [f"The {topic} number {j} was described in volume {k} of the survey."
                                          for k in range(5)]] for j in range(6)]
        paras[3][1][1] = f"The {topic} was founded by Mira Holt{i} in 1900."
        items.append({"_id": f"h{i}", "question": f"Who founded the {topic}?", "answer": f"Mira Holt{i}",
                      "supporting_facts": [[paras[3][0], 1]], "context": paras, "type": "bridge", "level": "easy"})
    return items


@pytest.fixture(scope="module")
def hotpot_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hotpot") / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(_hotpot_items()))
    return path


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def _byte_tokens(text: str) -> int:
    return len(text.encode()) + 1  # the tiny models read ByT5 bytes, and an EOS


def test_few_shot_hotpotqa_demonstrations_fit_the_budget_and_stats_describe_the_input(
        tiny_models, hotpot_file, run_cli, tmp_path):
    """Each demonstration's context is selected to its share, so the whole prompt fits and the example's question
    is read; input_stats measure that whole prompt (it once measured the example alone: 'at most 504 tokens,
    answer survival 1.0' for inputs of ~4,170 the model cut from the right)."""
    out = tmp_path / "fs"
    code, _, err = run_cli("eval", "--task", "hotpotqa", "--data", hotpot_file, "--model", tiny_models["seq2seq"],
                           "--method", "few-shot", "--shots", "2", "--max-input-tokens", "600",
                           "--max-new-tokens", "4", "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    records = _records(out)
    lengths = [_byte_tokens(r["input"]) for r in records]
    assert max(lengths) <= 600
    questions = {item["_id"]: item["question"] for item in _hotpot_items()}
    assert all(questions[r["id"]] in r["input"]
               for r in records)
    assert all(r["input"].count("question: ") == 3 for r in records)  # two demonstrations and the example
    stats = metrics["input_stats"]
    assert stats["input_tokens"]["max"] == max(lengths) and stats["input_tokens"]["min"] == min(lengths)
    assert stats["truncated"] == 0 and stats["model_keeps"] == 600 and stats["question_survival"] == 1.0
    assert metrics["method_info"]["demonstrations"]["tokens_at_most"] == 300


def test_few_shot_refused_when_no_demonstration_fits(tiny_models, hotpot_file, run_cli, tmp_path):
    code, _, err = run_cli("eval", "--task", "hotpotqa", "--data", hotpot_file, "--model", tiny_models["seq2seq"],
                           "--method", "few-shot", "--shots", "2", "--max-input-tokens", "80",
                           "--out", tmp_path / "no")
    assert_clean_error(code, err, "not even one demonstration", "80-token input budget", "--max-input-tokens")
    assert not (tmp_path / "no").exists()


def test_few_shot_uses_fewer_demonstrations_when_they_do_not_fit(tiny_models, run_cli, tmp_path):
    """A choice task's demonstrations cannot be shortened: fewer per class, said in method_info."""
    out = tmp_path / "few"
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["seq2seq"], "--method", "few-shot",
                           "--shots", "4", "--max-input-tokens", "1000", "--limit", "6", "--out", out)
    assert code == 0, err
    info = json.loads((out / "metrics.json").read_text())["method_info"]["demonstrations"]
    assert info["asked"] == 4 and 1 <= info["shots"] < 4 and info["tokens_at_most"] == 500
    for r in _records(out):
        demos = r["input"].split("\n\n")[:-1]
        assert len(demos) == 3 * info["shots"] and sum(len(d.encode()) + 2 for d in demos) <= 500


@pytest.mark.parametrize("method", ["zero-shot", "few-shot"])
def test_input_stats_measure_what_the_model_reads_for_any_task(tiny_models, run_cli, tmp_path, method):
    out = tmp_path / method
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["causal"], "--method", method,
                           "--shots", "1", "--limit", "6", "--out", out) if method == "few-shot" else run_cli(
        "eval", "--task", "sentiment", "--model", tiny_models["causal"], "--method", method, "--limit", "6",
        "--out", out)
    assert code == 0, err
    stats = json.loads((out / "metrics.json").read_text())["input_stats"]
    lengths = [_byte_tokens(r["input"]) for r in _records(out)]
    assert stats["input_tokens"]["max"] == max(lengths) and stats["n"] == 6 and stats["truncated"] == 0
    assert stats["model_keeps"] == 1024  # a choice task reserves no answer tokens
