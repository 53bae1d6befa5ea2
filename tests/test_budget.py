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


# -- a run's record: what eval --prompt (and predict) repeat ------------------------------------------------------
@pytest.fixture(scope="module")
def hotpot_pt(tiny_models, hotpot_file, tmp_path_factory) -> Path:
    """A prompt trained on HotpotQA at a 256-token budget, its model and data given by path."""
    from promptlab.cli import main

    run = tmp_path_factory.mktemp("pt") / "run"
    code = main(["train", "--task", "hotpotqa", "--data", str(hotpot_file), "--model", str(tiny_models["seq2seq"]),
                 "--method", "prompt-tuning", "--virtual-tokens", "2", "--epochs", "1", "--max-input-tokens", "256",
                 "--max-new-tokens", "2", "--out", str(run)])
    assert code == 0
    return run


def test_eval_prompt_repeats_the_runs_model_data_and_budget(hotpot_pt, run_cli, tmp_path):
    """The budget once went unrecorded (a prompt trained at 256 was evaluated at 512: no input the same), and
    --model and --data defaulted to minilm and the hub (offline: an error)."""
    run = json.loads((hotpot_pt / "artifact" / "promptlab.json").read_text())["extras"]["run"]
    assert run["max_input_tokens"] == 256 and run["model"] and run["data"]
    code, _, err = run_cli("eval", "--prompt", hotpot_pt, "--out", tmp_path / "again")
    assert code == 0, err
    assert [r["input"] for r in _records(tmp_path / "again")] == [r["input"] for r in _records(hotpot_pt)]
    import yaml

    again = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert {k: again[k] for k in run} == run and set(run) >= {"model", "data", "max_input_tokens", "scoring"}

    code, _, err = run_cli("eval", "--prompt", hotpot_pt, "--max-input-tokens", "300", "--out", tmp_path / "wider")
    assert code == 0, err  # a flag given still wins
    assert yaml.safe_load((tmp_path / "wider" / "config.yaml").read_text())["max_input_tokens"] == 300
    assert max(json.loads((tmp_path / "wider" / "metrics.json").read_text())["input_stats"]["input_tokens"].values()) > 256


def test_eval_prompt_repeats_the_runs_evaluation_sample(tiny_models, run_cli, tmp_path):
    """The same examples as the run that made the prompt: its --eval-size, --split and --seed are recorded and
    repeated (they were not: eval --prompt fell back to the defaults and scored another sample)."""
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["causal"], "--method",
                           "prompt-tuning", "--virtual-tokens", "2", "--train-size", "8", "--epochs", "1",
                           "--eval-size", "6", "--seed", "3", "--out", run)
    assert code == 0, err
    code, _, err = run_cli("eval", "--prompt", run, "--out", tmp_path / "again")
    assert code == 0, err
    ids = [r["id"] for r in _records(run)]
    assert len(ids) == 6 and [r["id"] for r in _records(tmp_path / "again")] == ids
    code, _, err = run_cli("eval", "--prompt", run, "--eval-size", "4", "--out", tmp_path / "fewer")
    assert code == 0, err  # a flag given still wins
    assert len(_records(tmp_path / "fewer")) == 4


def test_artifacts_made_before_the_record_fall_back_to_the_runs_config(hotpot_pt, run_cli, tmp_path):
    old = tmp_path / "old"
    import shutil

    shutil.copytree(hotpot_pt, old)
    meta_file = old / "artifact" / "promptlab.json"
    meta = json.loads(meta_file.read_text())
    del meta["extras"]["run"]
    meta_file.write_text(json.dumps(meta))
    code, _, err = run_cli("eval", "--prompt", old, "--out", tmp_path / "again")
    assert code == 0, err
    assert [r["input"] for r in _records(tmp_path / "again")] == [r["input"] for r in _records(hotpot_pt)]


def test_a_served_prompt_selects_contexts_to_its_runs_budget(hotpot_pt, tiny_models):
    from promptlab.backbones import load_backbone
    from promptlab.serving.registry import load_servable

    served = load_servable("pt", str(hotpot_pt), load_backbone(str(tiny_models["seq2seq"])))
    assert served.config.max_input_tokens == 256


def test_predict_prompt_uses_the_runs_model(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "prompt-tuning", "--virtual-tokens", "2", "--epochs", "1", "--train-size", "8", "--limit",
                           "4", "--out", tmp_path / "pt")
    assert code == 0, err
    code, out, err = run_cli("predict", "--prompt", tmp_path / "pt", "a fine film")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["prediction"] in ("negative", "neutral", "positive")


def test_hotpotqa_predictions_carry_each_examples_f1(tiny_models, hotpot_file, run_cli, tmp_path):
    out = tmp_path / "zs"
    code, _, err = run_cli("eval", "--task", "hotpotqa", "--data", hotpot_file, "--model", tiny_models["seq2seq"],
                           "--method", "zero-shot", "--max-input-tokens", "300", "--max-new-tokens", "2", "--out", out)
    assert code == 0, err
    from promptlab.metrics import f1

    records = _records(out)
    assert all(r["f1"] == pytest.approx(f1(r["prediction"], r["gold"]), abs=1e-6) for r in records)
    f1_metric = json.loads((out / "metrics.json").read_text())["metrics"]["f1"]
    assert sum(r["f1"] for r in records) / len(records) == pytest.approx(f1_metric, abs=1e-5)


def test_single_run_table_shows_the_confidence_interval(tiny_models, run_cli, tmp_path):
    code, out, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                             "zero-shot", "--limit", "12")
    assert code == 0, err
    import re

    assert re.search(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", out), out


# -- settings a run would not read -------------------------------------------------------------------------------
def test_compare_keeps_a_flag_one_of_its_methods_reads():
    from promptlab.config import RunConfig
    from promptlab.errors import ConfigError
    from promptlab.sweep import check_flags

    check_flags(["zero-shot", "few-shot"], RunConfig(), {"shots"})
    check_flags(["zero-shot", "prompt-tuning"], RunConfig(), {"virtual_tokens", "init"})
    check_flags(["prompt-tuning", "p-tuning"], RunConfig(), {"init"})  # p-tuning runs from its encoder's start
    with pytest.raises(ConfigError, match="--virtual-tokens is read by none of the compared methods"):
        check_flags(["zero-shot", "few-shot"], RunConfig(), {"virtual_tokens"})
    with pytest.raises(ConfigError, match="--candidates is read by none"):
        check_flags(["few-shot", "lora"], RunConfig(), {"candidates"})
    cfg = RunConfig()
    cfg.train.init, cfg.train.init_text = "random", "great"
    with pytest.raises(ConfigError, match="drop one of the two"):  # a conflict, whatever else is compared
        check_flags(["zero-shot", "prompt-tuning"], cfg, {"init", "init_text"})
    with pytest.raises(ConfigError, match="--warmup is the warm-up of --schedule linear"):
        check_flags(["prompt-tuning"], RunConfig(), {"warmup"})


LABEL_SPEC = """\
name: bare-first
description: "a choice task whose first template is the bare input"
kind: choices
format: jsonl
fields: [text]
labels: [neg, pos]
verbalizers: [bad, good]
descriptions: ["a bad review", "a good review"]
metrics: [accuracy]
eval_split: test
templates:
  - {name: bare, text: "{text}"}
  - {name: was, text: "{text} It was"}
"""


@pytest.mark.parametrize("method", ["prompt-tuning", "hybrid"])
def test_a_bare_first_template_starts_the_prompt_from_the_label_words(tiny_models, run_cli, tmp_path, method):
    """It once failed with "--init-text '' has no tokens" though no --init-text was given."""
    spec = tmp_path / "bare.yaml"
    spec.write_text(LABEL_SPEC)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"{w} food {i}", "label": lab}) + "\n"
                            for i in range(12) for w, lab in (("great", "pos"), ("awful", "neg"))))
    out = tmp_path / method
    code, _, err = run_cli("train", "--task", spec, "--data", data, "--model", tiny_models["seq2seq"], "--method",
                           method, "--virtual-tokens", "3", "--epochs", "1", "--out", out)
    assert code == 0, err
    info = json.loads((out / "metrics.json").read_text())["method_info"]["init"]
    assert info["init"] == "labels" and "template 'bare' has no words" in info["why"]
    assert json.loads((out / "artifact" / "promptlab.json").read_text())["extras"]["init"] == "labels"


# -- LoRA's settings and gradient accumulation -------------------------------------------------------------------
def test_lora_rank_alpha_and_targets_are_settings(tiny_models, run_cli, tmp_path):
    out = tmp_path / "lora"
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method", "lora",
                           "--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "query,key", "--epochs", "1",
                           "--train-size", "8", "--limit", "4", "--out", out)
    assert code == 0, err
    adapter = json.loads((out / "artifact" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and set(adapter["target_modules"]) == {"query", "key"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == 2 * 2 * 4 * (32 + 32)  # layers x modules x r x (in + out)


@pytest.fixture(scope="module")
def encoder_without_dropout(tiny_models, tmp_path_factory) -> Path:
    """Dropout draws other masks for one batch than for its halves; without it the two must agree."""
    import shutil

    path = tmp_path_factory.mktemp("nodrop") / "encoder"
    shutil.copytree(tiny_models["encoder"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_gradient_accumulation_takes_the_steps_of_one_big_batch(encoder_without_dropout, run_cli, tmp_path):
    from safetensors.torch import load_file

    def train(name: str, *flags: str) -> dict:
        code, _, err = run_cli("train", "--task", "sentiment", "--model", encoder_without_dropout, "--method",
                               "prompt-tuning", "--virtual-tokens", "3", "--epochs", "2", "--train-size", "24",
                               "--limit", "4", *flags, "--out", tmp_path / name)
        assert code == 0, err
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        return {"steps": metrics["history"][-1]["step"],
                "prompt": load_file(str(tmp_path / name / "artifact" / "adapter_model.safetensors"))}

    big = train("big", "--train-batch-size", "8")
    accumulated = train("acc", "--train-batch-size", "4", "--grad-accum", "2")
    small = train("small", "--train-batch-size", "4")
    assert big["steps"] == accumulated["steps"] == 6 and small["steps"] == 12
    import torch

    (key,) = big["prompt"]
    assert torch.allclose(big["prompt"][key], accumulated["prompt"][key], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(big["prompt"][key], small["prompt"][key], atol=1e-5, rtol=1e-4)
