"""Run configuration: a run's own config.yaml repeats it, flags override YAML, every field is documented,
and mistakes in a config file name the key."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from promptlab import config
from promptlab.cli import parser
from promptlab.config import RunConfig, TrainConfig, build_config, config_flags, from_dict
from promptlab.errors import ConfigError


def _one_error_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("promptlab: error: ")
    return line


def _history(run: Path) -> list[dict]:
    """Training history without wall-clock fields, which differ between identical runs."""
    hist = json.loads((run / "metrics.json").read_text())["history"]
    return [{k: v for k, v in h.items() if "second" not in k} for h in hist]


def test_a_runs_config_yaml_repeats_the_run(tiny_models, run_cli, tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  dev_size: 8\n  lr: 0.2\n")
    first, second = tmp_path / "first", tmp_path / "second"
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "prompt-tuning", "--config", tmp_path / "base.yaml", "--train-size", "16", "--epochs",
                           "1", "--virtual-tokens", "4", "--limit", "8", "--seed", "7", "--out", first)
    assert code == 0, err
    # No flags but --config and --out: the method, data sizes, seed and lr all come from the record.
    code, _, err = run_cli("train", "--config", first / "config.yaml", "--out", second)
    assert code == 0, err

    assert (second / "config.yaml").read_bytes() == (first / "config.yaml").read_bytes()
    resolved = yaml.safe_load((first / "config.yaml").read_text())
    assert resolved["method"] == "prompt-tuning" and resolved["seed"] == 7
    train = resolved["train"]
    assert (train["lr"], train["dev_size"], train["train_size"], train["virtual_tokens"]) == (0.2, 8, 16, 4)
    assert from_dict(RunConfig, resolved, "config.yaml") == from_dict(
        RunConfig, yaml.safe_load((second / "config.yaml").read_text()), "config.yaml")

    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (first, second))
    assert m1["metrics"] == m2["metrics"] and m1["n_examples"] == m2["n_examples"] == 8
    assert m1["trainable_params"] == m2["trainable_params"] == 4 * 32
    assert _history(first) == _history(second) and _history(first)[0]["step"] > 0
    assert (second / "predictions.jsonl").read_bytes() == (first / "predictions.jsonl").read_bytes()
    weights = "artifact/adapter_model.safetensors"
    assert (second / weights).read_bytes() == (first / weights).read_bytes()


def test_an_eval_runs_config_yaml_repeats_it_and_flags_override(tiny_models, run_cli, tmp_path):
    first, again, fewer = tmp_path / "first", tmp_path / "again", tmp_path / "fewer"
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["encoder"], "--method",
                           "zero-shot", "--template", "review", "--limit", "8", "--out", first)
    assert code == 0, err
    code, _, err = run_cli("eval", "--config", first / "config.yaml", "--out", again)
    assert code == 0, err
    assert (again / "predictions.jsonl").read_bytes() == (first / "predictions.jsonl").read_bytes()

    code, _, err = run_cli("eval", "--config", first / "config.yaml", "--limit", "4", "--out", fewer)
    assert code == 0, err
    resolved = yaml.safe_load((fewer / "config.yaml").read_text())
    assert resolved["eval_size"] == 4 and resolved["hard"]["template"] == "review"
    assert json.loads((fewer / "metrics.json").read_text())["n_examples"] == 4


def test_flags_override_yaml_values_and_keep_the_rest(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: some/model\nseed: 3\ntrain:\n  epochs: 5\n  lr: 0.1\n  init: vocab\n"
                        "hard:\n  shots: 2\n")
    args = parser().parse_args(["train", "--config", str(cfg_file), "--method", "prompt-tuning", "--epochs", "2",
                                "--init", "labels", "--train-batch-size", "4", "--out", "x"])
    cfg = build_config(args)
    assert (cfg.train.epochs, cfg.train.init, cfg.train.batch_size) == (2, "labels", 4)  # flags win
    assert (cfg.model, cfg.seed, cfg.train.lr, cfg.hard.shots) == ("some/model", 3, 0.1, 2)  # YAML kept
    assert cfg.method == "prompt-tuning" and cfg.task == RunConfig().task  # neither: the default


def test_every_config_field_has_help_text():
    for cls in config.SECTIONS.values():
        for f in dataclasses.fields(cls):
            text = f.metadata.get("help")
            assert isinstance(text, str) and len(text.split()) >= 2, f"{cls.__name__}.{f.name} has no help"


CONFIG_COMMANDS = ("eval", "train", "predict", "compare")
# The flags of those commands that are not settings of a run (hand-written in cli.py), by dest.
NOT_SETTINGS = {"help", "config", "out", "resume", "overwrite", "methods", "train_sizes", "seeds", "input", "texts"}
REQUIRED = {"eval": [], "predict": [], "train": ["--out", "x"], "compare": ["--out", "x", "--methods", "zero-shot"]}


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _a_value(flag: config.Flag) -> str:
    """A valid value for the flag that differs from the field's default."""
    meta = flag.field.metadata
    if meta["choices"]:
        return next(c for c in reversed(meta["choices"]) if c != flag.field.default)
    if flag.kind is str and meta["range"]:  # a string with a form (--device cuda:N)
        return next(v for v in ("some-value", "cpu", "1,2", '{"some": "value"}') if meta["range"].ok(v)
                    and v != flag.field.default)
    return {int: "7", float: "0.5", str: "some-value"}[flag.kind]


def test_every_flag_sets_a_real_config_field():
    """Every flag of every command is a config field's (or one of the few hand-written ones), and giving it sets
    exactly that field."""
    by_dest = {f.dest: f for f in config_flags()}
    sections = config.SECTIONS
    for command, p in _commands().items():
        if command not in CONFIG_COMMANDS:
            continue
        for action in p._actions:
            if action.dest in NOT_SETTINGS:
                continue
            flag = by_dest[action.dest]  # a setting's flag that is not generated from its field fails here
            assert flag.field.name in {f.name for f in dataclasses.fields(sections[flag.section])}, action.dest
            assert command in flag.commands and set(action.option_strings) == set(flag.names), (command, action.dest)
            argv = [command, flag.names[0]] + ([] if flag.kind is bool else [_a_value(flag)])
            cfg = build_config(p.parse_args(argv[1:] + REQUIRED[command]))
            expected = True if flag.kind is bool else flag.kind(argv[-1])
            assert getattr(flag.part(cfg), flag.field.name) == expected, (command, flag.names[0])
            untouched = dataclasses.replace(flag.part(cfg), **{flag.field.name: flag.field.default})
            assert untouched == type(untouched)(), (command, flag.names[0])  # and nothing else


def test_the_parser_covers_every_field_marked_for_a_command():
    commands = _commands()
    for flag in config_flags():
        assert flag.commands, flag.names
        for command in CONFIG_COMMANDS:
            strings = {s for a in commands[command]._actions for s in a.option_strings}
            assert (flag.names[0] in strings) == (command in flag.commands), (command, flag.names[0])
    # weight_decay is a YAML-only setting (on=()): no flag at all
    assert "weight_decay" not in {f.field.name for f in config_flags()}


def test_a_new_field_gets_a_flag_with_its_help_and_range(monkeypatch):
    @dataclasses.dataclass
    class Extended(TrainConfig):
        new_knob: int = config._f(5, "a setting added later", range=config.AT_LEAST_1)

    monkeypatch.setitem(config.SECTIONS, "train", Extended)
    commands = _commands()
    for command in CONFIG_COMMANDS:
        knob = [a for a in commands[command]._actions if "--new-knob" in a.option_strings]
        assert bool(knob) == (command in ("train", "compare")), command
    (knob,) = [a for a in commands["train"]._actions if "--new-knob" in a.option_strings]
    assert knob.help.startswith("a setting added later") and knob.default is None
    assert commands["train"].parse_args(["--new-knob", "9", "--out", "x"]).new_knob == 9
    with pytest.raises(ConfigError, match=r"^--new-knob must be a positive number, got 0; use 1 or more$"):
        build_config(commands["train"].parse_args(["--new-knob", "0", "--out", "x"]))


def test_every_flag_of_every_command_has_help_text():
    for command, p in _commands().items():
        for action in p._actions:
            assert isinstance(action.help, str) and len(action.help.split()) >= 2, (command, action.option_strings)


def test_dev_size_sets_the_dev_slice_and_search_size_the_prompt_search_budget():
    cfg = build_config(parser().parse_args(["eval", "--dev-size", "12", "--method", "prompt-search"]))
    assert (cfg.train.dev_size, cfg.hard.search_size) == (12, RunConfig().hard.search_size)
    cfg = build_config(parser().parse_args(["train", "--search-size", "9", "--out", "x"]))
    assert (cfg.hard.search_size, cfg.train.dev_size) == (9, RunConfig().train.dev_size)
    for command in ("train", "compare"):
        extra = ["--methods", "zero-shot"] if command == "compare" else []
        cfg = build_config(parser().parse_args([command, "--dev-size", "16", "--out", "x", *extra]))
        assert cfg.train.dev_size == 16


@pytest.mark.parametrize("command", ["eval", "train", "compare"])
def test_limit_is_an_alias_of_eval_size_on_every_command_and_errors_name_the_one_typed(command):
    extra = ["--methods", "zero-shot", "--out", "x"] if command == "compare" else ["--out", "x"]
    for flag in ("--eval-size", "--limit"):
        assert build_config(parser().parse_args([command, flag, "5", *extra])).eval_size == 5
        with pytest.raises(ConfigError, match=f"^{flag} must be a positive number, got 0"):
            build_config(parser().parse_args([command, flag, "0", *extra]))


def test_flags_not_given_leave_config_values_alone(tmp_path):
    (tmp_path / "c.yaml").write_text("eval_size: 3\ntrain:\n  train_anchors: true\n  dev_size: 9\n"
                                     "hard:\n  search_size: 11\n")
    args = parser().parse_args(["compare", "--config", str(tmp_path / "c.yaml"), "--methods", "zero-shot",
                                "--out", "x"])
    cfg = build_config(args)
    assert (cfg.eval_size, cfg.train.train_anchors, cfg.train.dev_size, cfg.hard.search_size) == (3, True, 9, 11)
    args = parser().parse_args(["train", "--train-anchors", "--out", "x"])
    assert args.train_anchors is True and build_config(args).train.train_anchors is True
    assert parser().parse_args(["train", "--out", "x"]).train_anchors is None


def test_unknown_nested_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'lrr'.*did you mean 'lr'\?"):
        from_dict(RunConfig, {"train": {"lrr": 1}}, "run.yaml")
    with pytest.raises(ConfigError, match=r"'shot'.*did you mean 'shots'\?"):
        from_dict(RunConfig, {"hard": {"shot": 1}}, "run.yaml")


def test_unknown_nested_key_in_a_file_fails_the_cli(tiny_models, run_cli, tmp_path):
    (tmp_path / "run.yaml").write_text("task: sentiment\ntrain:\n  lrr: 1\n")
    code, _, err = run_cli("train", "--method", "prompt-tuning", "--model", tiny_models["encoder"],
                           "--config", tmp_path / "run.yaml", "--out", tmp_path / "out")
    line = _one_error_line(code, err)
    assert "run.yaml.train" in line and "'lrr'" in line and "did you mean 'lr'?" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "needles"), [
    ("seed: abc\n", ("seed", "'abc'", "int")),
    ("train:\n  epochs: null\n", ("train.epochs", "must be set", "remove the key")),
    ("train: 3\n", ("train", "expected a mapping")),
    ("train:\n  epochs: 0\n", ("train.epochs", "positive", "1 or more")),
    ("train:\n  init: labes\n", ("train.init", "'labes'", "did you mean 'labels'?")),
    ("- a list\n", ("expected a mapping",)),
])
def test_bad_values_in_a_file_name_the_key(text, needles, tmp_path):
    from promptlab.config import load_yaml

    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, load_yaml(str(tmp_path / "c.yaml")), "c.yaml")
    message = str(info.value)
    assert "\n" not in message and "c.yaml" in message
    for needle in needles:
        assert needle in message, message


def test_train_without_a_method_says_how_to_name_one(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"],
                           "--out", tmp_path / "out")
    line = _one_error_line(code, err)
    assert "--method" in line and "prompt-tuning" in line
    assert not (tmp_path / "out").exists()
