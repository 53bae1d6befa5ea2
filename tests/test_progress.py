"""What a person at a terminal sees while a run works: progress bars for evaluation and generation (training has
its own), and the plan of a training run before it starts, also recorded in metrics.json."""

from __future__ import annotations

import json
import re

import pytest

from promptlab import console
from promptlab.pipeline import plan_line, say_plan


@pytest.fixture
def terminal(monkeypatch):
    """stderr taken for a terminal, with every update drawn (a bar otherwise redraws at most every 0.1 s)."""
    monkeypatch.setattr(console, "TERMINAL", True)
    monkeypatch.setattr(console, "REDRAW_SECONDS", 0)


def _counts(err: str, desc: str) -> list[str]:
    """The n/total of every redraw of the bar named `desc`."""
    return re.findall(rf"{re.escape(desc)}:\s+\d+%\|[^|]*\| (\d+/\d+)", err)


def test_evaluation_bar_counts_examples_batch_by_batch(tiny_models, run_cli, terminal, tmp_path):
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["encoder"], "--method", "zero-shot",
                           "--eval-size", "5", "--batch-size", "2", "--out", tmp_path / "zs")
    assert code == 0, err
    assert _counts(err, "zero-shot eval") == ["0/5", "2/5", "4/5", "5/5"]
    # the answers are those of one whole-list prediction: batching for the bar changes no prediction
    code, _, _ = run_cli("eval", "--task", "sentiment", "--model", tiny_models["encoder"], "--method", "zero-shot",
                         "--eval-size", "5", "--batch-size", "32", "--out", tmp_path / "zs32")
    assert code == 0
    read = lambda d: [(r["id"], r["prediction"]) for r in map(json.loads, (d / "predictions.jsonl").open())]
    assert read(tmp_path / "zs") == read(tmp_path / "zs32")


def test_generation_bar_follows_the_generated_answers(tiny_models, run_cli, terminal, tmp_path):
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["seq2seq"], "--method", "cot",
                           "--eval-size", "3", "--batch-size", "2", "--max-new-tokens", "2", "--out", tmp_path / "cot")
    assert code == 0, err
    assert _counts(err, "cot eval") == ["0/3", "2/3", "3/3"]


def test_no_bar_and_no_plan_when_stderr_is_not_a_terminal(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "prompt-tuning", "--train-size", "8", "--dev-size", "4", "--epochs", "1", "--eval-size", "4",
                           "--out", tmp_path / "pt")
    assert code == 0, err
    assert err.strip() == ""  # a short run in a log says nothing on stderr; its plan is in metrics.json
    assert json.loads((tmp_path / "pt" / "metrics.json").read_text())["plan"]["steps"] == 1


def test_compare_numbers_its_methods_and_shows_each_ones_bars(tiny_models, run_cli, terminal, tmp_path):
    code, out, err = run_cli("compare", "--task", "sentiment", "--model", tiny_models["encoder"], "--methods",
                             "zero-shot,prompt-tuning", "--train-size", "6", "--dev-size", "4", "--epochs", "1",
                             "--eval-size", "4", "--batch-size", "2", "--out", tmp_path / "cmp")
    assert code == 0, err
    assert "· [1/2] zero-shot …" in out and "· [2/2] prompt-tuning …" in out
    assert _counts(err, "zero-shot eval") == ["0/4", "2/4", "4/4"]
    assert _counts(err, "prompt-tuning eval") == ["0/4", "2/4", "4/4"]
    assert "plan (prompt-tuning): 6 training examples × 1 epochs = 1 optimizer steps" in err


def test_the_plan_is_said_before_training_and_recorded(tiny_models, run_cli, terminal, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "prompt-tuning", "--train-size", "20", "--dev-size", "4", "--epochs", "3",
                           "--train-batch-size", "4", "--grad-accum", "2", "--eval-size", "6", "--out", tmp_path / "pt")
    assert code == 0, err
    line = ("promptlab: plan (prompt-tuning): 20 training examples × 3 epochs = 9 optimizer steps "
            "(--train-batch-size 4, --grad-accum 2); 6 evaluation examples")
    assert line + "\n" in err  # ceil(20 / (4 x 2)) = 3 steps an epoch; short: no hint
    assert err.index(line) < err.index("prompt-tuning epoch 1/3")  # said before the first training step
    metrics = json.loads((tmp_path / "pt" / "metrics.json").read_text())
    assert metrics["plan"] == {"train_examples": 20, "epochs": 3, "steps": 9, "batch_size": 4, "grad_accum": 2,
                               "eval_examples": 6}
    assert len(metrics["history"]) == 3 and metrics["n_examples"] == 6


def test_max_steps_caps_the_plan(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "prompt-tuning", "--train-size", "20", "--dev-size", "4", "--epochs", "3",
                           "--train-batch-size", "4", "--max-steps", "2", "--eval-size", "4", "--out", tmp_path / "pt")
    assert code == 0, err
    assert json.loads((tmp_path / "pt" / "metrics.json").read_text())["plan"]["steps"] == 2


def test_a_long_plan_hints_at_a_quick_run():
    sst2 = {"train_examples": 67149, "epochs": 3, "steps": 6296, "batch_size": 32, "grad_accum": 1,
            "eval_examples": 872}
    line = plan_line("prompt-tuning", sst2)
    assert line.startswith("promptlab: plan (prompt-tuning): 67,149 training examples × 3 epochs = 6,296 optimizer "
                           "steps (--train-batch-size 32, --grad-accum 1); 872 evaluation examples")
    assert "--train-size" in line and "--max-steps" in line and "\n" not in line
    assert "--max-steps" not in plan_line("prompt-tuning", {**sst2, "steps": 2000})


def test_a_head_fitted_in_one_go_says_so(tiny_models, run_cli, terminal, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "linear-probe", "--train-size", "12", "--dev-size", "4", "--eval-size", "4",
                           "--out", tmp_path / "lp")
    assert code == 0, err
    assert "promptlab: plan (linear-probe): 12 training examples, fitted in one go; 4 evaluation examples\n" in err


def test_predict_bar_follows_its_batches(tiny_models, run_cli, terminal):
    code, out, err = run_cli("predict", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                             "zero-shot", "--batch-size", "2", "good", "bad", "fine", "awful", "great")
    assert code == 0, err
    assert len(out.splitlines()) == 5  # the JSON lines stay on stdout, the bar on stderr
    assert _counts(err, "predict") == ["0/5", "2/5", "4/5", "5/5"]


def test_a_long_plan_is_said_in_a_log_too(capsys):
    """Off a terminal (capsys) a short plan stays quiet, as the progress bars do; a long one is the run whose size
    surprises, so it reaches the log."""
    short = {"train_examples": 64, "epochs": 3, "steps": 12, "batch_size": 16, "grad_accum": 1, "eval_examples": 8}
    say_plan("prompt-tuning", short)
    assert capsys.readouterr().err == ""
    say_plan("prompt-tuning", {**short, "train_examples": 67149, "steps": 12591})
    err = capsys.readouterr().err
    assert err.startswith("promptlab: plan (prompt-tuning): 67,149 training examples") and "--max-steps" in err
    assert err.count("\n") == 1
