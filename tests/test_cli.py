"""The `promptlab` command line: bad input ends in one clear line and exit status 2 with nothing written;
good input writes complete run directories.

Every failing case is run twice: with a fresh `--out` (which must not exist afterwards) and with `--out`
pointing at an earlier run (which must be left byte for byte as it was).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny

from promptlab.cli import main
from promptlab.methods import method_names
from promptlab.tasks import get_task, task_names
from promptlab.tasks.spec import BUNDLED

FAST_TRAIN = ["--train-size", "16", "--epochs", "1", "--virtual-tokens", "4", "--limit", "8"]
RUN_KEYS = {"task", "model", "method", "split", "n_examples", "metrics", "trainable_params", "total_params",
            "artifact_bytes", "train_seconds", "eval_seconds", "eval_examples_per_second"}
RECORD_KEYS = {"id", "input", "prediction", "gold", "score"}

LOCAL_SPEC = """\
name: {name}
description: "a local {fmt} task written by the tests"
kind: choices
format: {fmt}
fields: [text]
labels: [neg, pos]
verbalizers: [bad, good]
descriptions: ["a bad review", "a good review"]
metrics: [accuracy]
eval_split: test
templates:
  - {{name: verdict, text: "Review: {{text}} Verdict:"}}
  - {{name: was, text: "{{text}} It was"}}
"""


def assert_clean_error(code: int, err: str, *needles: str) -> str:
    """Exit status 2 and exactly one `promptlab: error:` line holding every needle; no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("promptlab: error: "), line
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under `path` (relative name -> bytes), or None when `path` does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def hidden_leftovers(parent: Path) -> list[str]:
    """Staging directories a run builds beside --out; a failed run must remove them."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]


# -- shared runs (built once per module) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def zs_run(tiny_models, tmp_path_factory) -> Path:
    """A finished zero-shot run: the positive case, and the 'earlier run' that failures must leave alone."""
    out = tmp_path_factory.mktemp("zs") / "run"
    code = main(["eval", "--task", "sentiment", "--model", str(tiny_models["encoder"]), "--method", "zero-shot",
                 "--template", "review", "--limit", "8", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def s2s_run(tiny_models, tmp_path_factory) -> Path:
    """A prompt-tuning run on the tiny seq2seq model (dev held small so it trains in a few seconds)."""
    root = tmp_path_factory.mktemp("s2s")
    (root / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    out = root / "run"
    code = main(["train", "--task", "sentiment", "--model", str(tiny_models["seq2seq"]), "--method",
                 "prompt-tuning", *FAST_TRAIN, "--config", str(root / "fast.yaml"), "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("other")
    wide = build_tiny("seq2seq", root / "seq2seq-48", hidden=48)
    bare = root / "no-weights"
    bare.mkdir()
    (bare / "config.json").write_text((wide / "config.json").read_text())
    return {"seq2seq-48": wide, "no-weights": bare}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Local task specs and data files with one defect each."""
    d = tmp_path_factory.mktemp("data")
    (d / "jsonl.yaml").write_text(LOCAL_SPEC.format(name="local-jsonl", fmt="jsonl"))
    (d / "csv.yaml").write_text(LOCAL_SPEC.format(name="local-csv", fmt="csv"))
    good = ['{"text": "great food", "label": "pos"}', '{"text": "awful food", "label": "neg"}']
    (d / "malformed.jsonl").write_text("\n".join([*good, '{"text": "cut off", "label": ', good[0]]) + "\n")
    (d / "missing_field.jsonl").write_text(good[0] + '\n{"txt": "typo in the key", "label": "neg"}\n')
    (d / "bad_label.jsonl").write_text(good[0] + '\n{"text": "fine", "label": "meh"}\n')
    (d / "malformed.csv").write_text('text,label\ngreat food,pos\n"awful, food",neg\none,pos,extra\n')
    (d / "header_only.csv").write_text("text,label\n")
    split = d / "empty_split"
    split.mkdir()
    (split / "train.jsonl").write_text("\n".join(good * 4) + "\n")
    (split / "test.jsonl").write_text("\n\n")
    (d / "no_files").mkdir()
    (d / "predict_bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    return d


@dataclass
class Ctx:
    models: dict[str, Path]
    files: Path
    s2s_run: Path | None = None


def _enc_eval(c: Ctx, *extra: str) -> list[str]:
    return ["eval", "--task", "sentiment", "--model", str(c.models["encoder"]), "--method", "zero-shot", *extra]


def _enc_train(c: Ctx, *extra: str) -> list[str]:
    return ["train", "--task", "sentiment", "--model", str(c.models["encoder"]), "--method", "prompt-tuning", *extra]


def _local(c: Ctx, fmt: str, data: str) -> list[str]:
    return ["eval", "--task", str(c.files / f"{fmt}.yaml"), "--data", str(c.files / data), "--model",
            str(c.models["encoder"]), "--method", "zero-shot"]


def _corrupt(c: Ctx, tmp: Path) -> Path:
    bad = tmp / "corrupt-run"
    shutil.copytree(c.s2s_run, bad)
    weights = bad / "artifact" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])  # truncated mid-header
    return bad


# (id, argv builder (ctx, tmp) -> argv without --out, needles the one line must contain)
Case = tuple[str, Callable[[Ctx, Path], list[str]], tuple[str, ...]]
CASES: list[Case] = [
    ("missing-data", lambda c, t: _enc_eval(c, "--data", "/nonexistent"),
     ("/nonexistent", "no such file or folder", "expected")),
    ("data-folder-without-files", lambda c, t: _enc_eval(c, "--data", str(c.files / "no_files")),
     ("no_files", "missing train.jsonl", "expects")),
    ("malformed-jsonl", lambda c, t: _local(c, "jsonl", "malformed.jsonl"),
     ("malformed.jsonl:3:", "malformed JSON", "fix or remove the line")),
    ("malformed-csv", lambda c, t: _local(c, "csv", "malformed.csv"),
     ("malformed.csv:4:", "3 columns, expected 2", "fix the row")),
    ("missing-field", lambda c, t: _local(c, "jsonl", "missing_field.jsonl"),
     ("missing_field.jsonl:2:", "no 'text' field", "add it")),
    ("label-outside-set", lambda c, t: _local(c, "jsonl", "bad_label.jsonl"),
     ("bad_label.jsonl:2:", "'meh'", "['neg', 'pos']", "fix the row")),
    ("empty-split", lambda c, t: _local(c, "jsonl", "empty_split"),
     ("test.jsonl", "empty", "should hold the rows of a split")),
    ("csv-with-no-rows", lambda c, t: _local(c, "csv", "header_only.csv"),
     ("header_only.csv", "no rows", "empty")),
    ("unknown-task", lambda c, t: ["eval", "--task", "sentimnet", "--model", str(c.models["encoder"]),
                                   "--method", "zero-shot"],
     ("unknown task 'sentimnet'", "did you mean 'sentiment'?")),
    ("unknown-method", lambda c, t: ["train", "--task", "sentiment", "--model", str(c.models["encoder"]),
                                     "--method", "promt-tuning"],
     ("unknown method 'promt-tuning'", "did you mean 'prompt-tuning'?")),
    ("unknown-init", lambda c, t: _enc_train(c, "--init", "labes"),
     ("--init", "'labes'", "did you mean 'labels'?")),
    ("train-size-too-large", lambda c, t: _enc_train(c, "--train-size", "100000"),
     ("--train-size 100000", "larger than", "use at most")),
    ("train-size-zero", lambda c, t: _enc_train(c, "--train-size", "0"),
     ("--train-size", "positive", "got 0", "1 or more")),
    ("epochs-negative", lambda c, t: _enc_train(c, "--epochs", "-1"),
     ("--epochs", "positive", "got -1", "1 or more")),
    ("limit-zero", lambda c, t: _enc_eval(c, "--limit", "0"), ("--limit", "positive", "got 0", "1 or more")),
    ("model-without-weights", lambda c, t: ["eval", "--task", "sentiment", "--model",
                                            str(c.models["no-weights"]), "--method", "zero-shot"],
     ("no-weights", "no weights", "save_pretrained")),
    ("model-path-missing", lambda c, t: ["eval", "--task", "sentiment", "--model", "/nonexistent/model",
                                         "--method", "zero-shot"],
     ("/nonexistent/model", "save_pretrained")),
    ("artifact-on-causal", lambda c, t: ["eval", "--prompt", str(c.s2s_run), "--model", str(c.models["causal"])],
     ("kind=seq2seq", "kind=causal", "load it with the model it was trained on")),
    ("artifact-on-wider-seq2seq", lambda c, t: ["eval", "--prompt", str(c.s2s_run), "--model",
                                                str(c.models["seq2seq-48"])],
     ("hidden_size=32", "hidden_size=48", "load it with the model it was trained on")),
    ("artifact-truncated-weights", lambda c, t: ["eval", "--prompt", str(_corrupt(c, t)), "--model",
                                                 str(c.models["seq2seq"])],
     ("corrupt-run", "cannot load the soft prompt", "retrain or restore")),
    ("hard-method-asked-to-train", lambda c, t: ["train", "--task", "sentiment", "--model",
                                                 str(c.models["encoder"]), "--method", "zero-shot"],
     ("'zero-shot'", "trains nothing", "promptlab eval --method zero-shot")),
    ("soft-method-in-eval", lambda c, t: ["eval", "--task", "sentiment", "--model", str(c.models["encoder"]),
                                          "--method", "prompt-tuning"],
     ("'prompt-tuning' must be trained first", "--prompt DIR")),
    ("cot-on-encoder", lambda c, t: ["eval", "--task", "sentiment", "--model", str(c.models["encoder"]),
                                     "--method", "cot"],
     ("'cot'", "encoder", "seq2seq or causal")),
    ("eval-method-and-prompt", lambda c, t: _enc_eval(c, "--prompt", str(c.s2s_run)),
     ("exactly one of --method", "--prompt")),
    ("eval-neither", lambda c, t: ["eval", "--task", "sentiment", "--model", str(c.models["encoder"])],
     ("exactly one of --method", "--prompt")),
    ("flag-not-a-number", lambda c, t: _enc_train(c, "--epochs", "x"),
     ("--epochs", "invalid int value: 'x'", "see 'promptlab train --help'")),
    ("patience-zero", lambda c, t: _enc_train(c, "--patience", "0"),
     ("--patience", "positive", "got 0")),
    ("seed-beyond-64-bits", lambda c, t: [*_enc_eval(c), "--seed", str(2**64)], ("--seed", "2**63 - 1")),
    ("prefix-projection-without-prefix", lambda c, t: _enc_train(c, "--prefix-projection", "16"),
     ("--prefix-projection", "prompt-tuning has none", "drop the flag")),
    ("compare-method-twice", lambda c, t: ["compare", "--task", "sentiment", "--model", str(c.models["encoder"]),
                                           "--methods", "zero-shot,few-shot,zero-shot"],
     ("--methods", "'zero-shot' twice")),
    ("compare-seeds-without-sizes", lambda c, t: ["compare", "--task", "sentiment", "--model",
                                                  str(c.models["encoder"]), "--methods", "zero-shot", "--seeds", "2"],
     ("--seeds", "--train-sizes")),
    ("compare-fails-part-way", lambda c, t: ["compare", "--task", "sentiment", "--model", str(c.models["encoder"]),
                                             "--methods", "zero-shot,prompt-tuning", "--init-text", "   ",
                                             "--train-size", "8", "--epochs", "1", "--eval-size", "4"],
     ("--init-text", "no tokens", "non-empty text")),
]


@pytest.fixture
def ctx(tiny_models, other_models, files, s2s_run) -> Ctx:
    return Ctx({**tiny_models, **other_models}, files, s2s_run)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, ctx, zs_run, run_cli, tmp_path):
    _, build, needles = case
    argv = build(ctx, tmp_path)
    fresh = tmp_path / "fresh" / "out"
    code, _, err = run_cli(*argv, "--out", fresh)
    assert_clean_error(code, err, *needles)
    assert not fresh.exists() and not fresh.parent.exists()

    earlier = tmp_path / "earlier"
    shutil.copytree(zs_run, earlier / "zero-shot" if argv[0] == "compare" else earlier)  # the --out it would reuse
    before = snapshot(earlier)
    # --overwrite: even allowed to replace the earlier run (another method or task), a failing one leaves it be
    overwrite = ["--overwrite"] if argv[0] in ("eval", "train", "compare") else []
    code, _, err = run_cli(*argv, *overwrite, "--out", earlier)
    assert_clean_error(code, err, *needles)
    assert snapshot(earlier) == before
    assert hidden_leftovers(tmp_path) == []


def test_unreadable_data_file(ctx, run_cli, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "great food", "label": "pos"}\n' * 10)
    data.chmod(0)
    try:
        if os.access(data, os.R_OK):
            pytest.skip("running as root: a chmod 000 file is still readable")
        out = tmp_path / "out"
        code, _, err = run_cli("eval", "--task", ctx.files / "jsonl.yaml", "--data", data, "--model",
                               ctx.models["encoder"], "--method", "zero-shot", "--out", out)
        assert_clean_error(code, err, "data.jsonl", "cannot read", "permissions")
        assert not out.exists()
    finally:
        data.chmod(0o644)


# -- --out itself -----------------------------------------------------------------------------------------
def test_out_that_is_a_regular_file_is_refused(ctx, run_cli, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    code, _, err = run_cli(*_enc_eval(ctx, "--limit", "4"), "--out", target)
    assert_clean_error(code, err, "--out", "notes.txt", "is a file", "choose a directory path")
    assert target.read_text() == "keep me\n"


def test_out_that_is_a_foreign_directory_is_refused(ctx, run_cli, tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    before = snapshot(target)
    code, _, err = run_cli(*_enc_eval(ctx, "--limit", "4"), "--out", target)
    assert_clean_error(code, err, "--out", "photos", "not a promptlab run", "choose another path")
    assert snapshot(target) == before


def test_rerun_into_a_run_directory_holding_user_files_is_refused(ctx, zs_run, run_cli, tmp_path):
    """A rerun replaces the run directory whole: a file promptlab did not write there would be deleted."""
    target = tmp_path / "run"
    shutil.copytree(zs_run, target)
    (target / "notes.md").write_text("my notes\n")
    before = snapshot(target)
    code, _, err = run_cli(*_enc_eval(ctx, "--limit", "4"), "--out", target)
    assert_clean_error(code, err, "--out", "notes.md", "would delete", "choose another path")
    assert snapshot(target) == before


def test_project_folder_with_a_config_yaml_is_not_taken_for_a_run(ctx, run_cli, tmp_path):
    target = tmp_path / "project"
    (target / "src").mkdir(parents=True)
    (target / "config.yaml").write_text("lr: 0.1\n")
    (target / "src" / "main.py").write_text("print('mine')\n")
    before = snapshot(target)
    code, _, err = run_cli(*_enc_eval(ctx, "--limit", "4"), "--out", target)
    assert_clean_error(code, err, "--out", "src", "would delete")
    assert snapshot(target) == before


def test_single_run_into_a_comparison_is_refused_and_compare_into_a_run(ctx, zs_run, run_cli, tmp_path):
    comparison = tmp_path / "cmp"
    shutil.copytree(zs_run, comparison / "zero-shot")
    (comparison / "report.md").write_text("# report\n")
    before = snapshot(comparison)
    code, _, err = run_cli(*_enc_eval(ctx, "--limit", "4"), "--out", comparison)
    assert_clean_error(code, err, "--out", "holds a comparison", "choose another path")
    assert snapshot(comparison) == before
    run = tmp_path / "run"
    shutil.copytree(zs_run, run)
    before = snapshot(run)
    code, _, err = run_cli("compare", "--task", "sentiment", "--model", ctx.models["encoder"], "--methods",
                           "zero-shot", "--eval-size", "4", "--out", run)
    assert_clean_error(code, err, "--out", "is a single run, not a comparison")
    assert snapshot(run) == before


def test_out_that_is_the_current_directory_is_refused(ctx, zs_run, run_cli, tmp_path, monkeypatch):
    """`--out .` (or a parent of the working directory) would replace the directory the user is in."""
    work = tmp_path / "work"
    shutil.copytree(zs_run, work)  # even a run directory: writing it would delete the process's own cwd
    monkeypatch.chdir(work)
    before = snapshot(work)
    for out in (".", "artifact/..", ".."):
        code, _, err = run_cli(*_enc_eval(ctx, "--limit", "4"), "--out", out)
        assert_clean_error(code, err, "--out", "current directory", "runs/NAME")
    assert snapshot(work) == before


def test_out_under_a_read_only_directory_is_refused(ctx, run_cli, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        code, _, err = run_cli(*_enc_eval(ctx, "--limit", "4"), "--out", ro / "run")
        assert_clean_error(code, err, "--out", "not writable", "choose another path")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_out_where_nothing_can_be_made_is_refused_before_any_work(ctx, run_cli):
    """Permission bits do not tell (root ignores them; /proc refuses everyone): the check makes a directory."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    code, _, err = run_cli(*_enc_eval(ctx, "--limit", "4"), "--out", "/proc/promptlab-run")
    assert_clean_error(code, err, "--out", "not writable", "choose another path")


def test_a_mistyped_model_alias_is_named(run_cli, tmp_path):
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", "minlm", "--method", "zero-shot", "--out",
                           tmp_path / "run")
    line = assert_clean_error(code, err, "cannot load model 'minlm'", "did you mean 'minilm'?", "hub id")
    assert ".;" not in line


def test_out_of_memory_is_one_line_with_what_to_lower(ctx, run_cli, tmp_path):
    """A prefix MLP of 10**12 hidden units asks torch for petabytes: its allocator's RuntimeError becomes one line."""
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--task", "sentiment", "--model", ctx.models["encoder"], "--method",
                           "prefix-tuning", "--prefix-projection", str(10**12), *FAST_TRAIN, "--out", out)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("promptlab: error: out of memory (") and "--batch-size" in err
    assert list(tmp_path.iterdir()) == []  # no run directory, no staging or checkpoint directory beside it


def test_hub_retry_notices_do_not_bury_the_one_line_error(run_cli):
    """A failed download logs a warning per retry from huggingface_hub (ten lines before promptlab's own)."""
    import logging

    run_cli("tasks")
    assert logging.getLogger("huggingface_hub.utils._http").getEffectiveLevel() >= logging.ERROR


def test_serve_port_out_of_range_is_one_line(run_cli):
    for port in ("99999", "-1", "http"):
        code, _, err = run_cli("serve", "--model", "minilm", "--port", port)
        assert_clean_error(code, err, "--port", "0 to 65535")


# -- config files -------------------------------------------------------------------------------------------
def test_config_with_unknown_key_names_it(ctx, run_cli, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: sentiment\nmodle: minilm\n")
    code, _, err = run_cli(*_enc_eval(ctx), "--config", cfg, "--out", tmp_path / "out")
    assert_clean_error(code, err, "run.yaml", "'modle'", "did you mean 'model'?")
    assert not (tmp_path / "out").exists()


def test_config_that_is_not_yaml_gives_its_line(ctx, run_cli, tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("task: sentiment\nmodel: [unclosed\nmethod: zero-shot\n")
    code, _, err = run_cli(*_enc_eval(ctx), "--config", cfg, "--out", tmp_path / "out")
    assert_clean_error(code, err, "broken.yaml", "line 3", "not valid YAML", "fix the syntax")
    assert not (tmp_path / "out").exists()


# -- predict ----------------------------------------------------------------------------------------------
def test_predict_without_input_says_what_to_pass(ctx, run_cli):
    code, out, err = run_cli("predict", "--task", "sentiment", "--model", ctx.models["encoder"],
                             "--method", "zero-shot")
    assert_clean_error(code, err, "predict needs input", "TEXT", "--input FILE.jsonl")
    assert out == ""


def test_predict_malformed_input_line(ctx, run_cli):
    code, out, err = run_cli("predict", "--task", "sentiment", "--model", ctx.models["encoder"],
                             "--method", "zero-shot", "--input", ctx.files / "predict_bad.jsonl")
    assert_clean_error(code, err, "predict_bad.jsonl:2:", "malformed JSON", "fix the line")
    assert out == ""


def test_predict_with_texts_prints_one_json_line_each(ctx, run_cli):
    texts = ["The food was great.", "Service was slow but the food was great.", "Terrible, never again."]
    code, out, err = run_cli("predict", "--task", "sentiment", "--model", ctx.models["encoder"],
                             "--method", "zero-shot", *texts)
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    labels = get_task("sentiment").labels
    assert [r["input"] for r in rows] == texts  # encoders see the bare input unless --template says otherwise
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    assert all(r["prediction"] in labels and 0.0 <= r["score"] <= 1.0 for r in rows)


def test_predict_with_input_file_keeps_ids_and_uses_the_template(ctx, run_cli, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a1", "text": "Lovely staff."}\n\n{"id": "b2", "text": "Cold soup."}\n')
    code, out, err = run_cli("predict", "--task", "sentiment", "--model", ctx.models["encoder"],
                             "--method", "zero-shot", "--template", "review", "--input", src)
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["id"] for r in rows] == ["a1", "b2"]
    assert [r["input"] for r in rows] == ["Review: Lovely staff.\nSentiment:", "Review: Cold soup.\nSentiment:"]
    assert all(r["prediction"] in get_task("sentiment").labels for r in rows)


def test_predict_with_a_trained_prompt(ctx, run_cli):
    code, out, err = run_cli("predict", "--prompt", ctx.s2s_run, "--model", ctx.models["seq2seq"], "Great film.")
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.strip().splitlines()]
    assert row["input"] == "Great film." and row["prediction"] in get_task("sentiment").labels


# -- listings ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("command", "names"), [("tasks", task_names), ("methods", method_names)])
def test_listing_has_one_line_per_registered_name(run_cli, command, names):
    code, out, err = run_cli(command)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    expected = names()
    assert [line.split()[0] for line in lines] == list(expected)
    assert all(len(line.split()) > 1 for line in lines)  # every name comes with a description


# -- run directories --------------------------------------------------------------------------------------
def _bundled_test_rows() -> dict[str, dict]:
    rows = [json.loads(x) for x in (BUNDLED / "sentiment" / "test.jsonl").read_text().splitlines() if x.strip()]
    return {r["id"]: r for r in rows}


def test_eval_writes_a_complete_run_directory(zs_run, tiny_models):
    assert sorted(p.name for p in zs_run.iterdir()) == ["artifact", "config.yaml", "metrics.json",
                                                        "predictions.jsonl"]
    config = yaml.safe_load((zs_run / "config.yaml").read_text())
    assert config["method"] == "zero-shot" and config["hard"]["template"] == "review" and config["eval_size"] == 8

    metrics = json.loads((zs_run / "metrics.json").read_text())
    assert RUN_KEYS <= set(metrics)
    assert (metrics["task"], metrics["method"], metrics["split"]) == ("sentiment", "zero-shot", "test")
    assert metrics["model"] == str(tiny_models["encoder"])
    assert metrics["n_examples"] == 8 and metrics["trainable_params"] == 0
    assert 0 <= metrics["train_seconds"] < 5  # zero-shot's fit only embeds the label descriptions
    assert metrics["total_params"] > 0 and metrics["artifact_bytes"] > 0

    records = [json.loads(x) for x in (zs_run / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 8 and len({r["id"] for r in records}) == 8
    source = _bundled_test_rows()
    labels = get_task("sentiment").labels
    for r in records:
        assert RECORD_KEYS <= set(r)
        row = source[r["id"]]
        assert r["input"] == f"Review: {row['text'].strip()}\nSentiment:"  # exactly what the model saw
        assert r["gold"] == row["label"] and r["prediction"] in labels
    accuracy = sum(r["prediction"] == r["gold"] for r in records) / len(records)
    assert metrics["metrics"]["accuracy"] == pytest.approx(accuracy)


@pytest.fixture(scope="module")
def compare_run(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "cmp"
    code = main(["compare", "--task", "sentiment", "--model", str(tiny_models["encoder"]), "--methods",
                 "zero-shot,prompt-tuning,linear-probe", "--train-size", "24", "--epochs", "1", "--eval-size", "12",
                 "--virtual-tokens", "4", "--out", str(out)])
    assert code == 0
    return out


def test_compare_writes_one_run_per_method_and_a_report(compare_run):
    methods = ["zero-shot", "prompt-tuning", "linear-probe"]
    names = {p.name for p in compare_run.iterdir()}
    assert set(methods) | {"report.md"} <= names and names - set(methods) <= {"report.md", "report.html", "plots"}
    runs = {m: json.loads((compare_run / m / "metrics.json").read_text()) for m in methods}
    for m, r in runs.items():
        assert r["method"] == m and r["n_examples"] == 12 and RUN_KEYS <= set(r)
        assert len((compare_run / m / "predictions.jsonl").read_text().splitlines()) == 12
    assert runs["zero-shot"]["trainable_params"] == 0
    assert runs["prompt-tuning"]["trainable_params"] == 4 * 32  # 4 virtual tokens x hidden 32
    assert runs["linear-probe"]["trainable_params"] == 3 * 32 + 3  # weight + bias for 3 labels
    assert runs["prompt-tuning"]["train_examples"] == 24
    report = (compare_run / "report.md").read_text().splitlines()
    for m in methods:
        assert sum(line.startswith(f"| {m} |") for line in report) == 1, report
    assert hidden_leftovers(compare_run.parent) == []


def test_failed_compare_leaves_an_earlier_comparison_untouched(compare_run, ctx, run_cli, tmp_path):
    earlier = tmp_path / "cmp"
    shutil.copytree(compare_run, earlier)
    before = snapshot(earlier)
    code, _, err = run_cli("compare", "--task", "sentiment", "--model", ctx.models["encoder"], "--methods",
                           "zero-shot,prompt-tuning", "--init-text", " ", "--train-size", "8", "--epochs", "1",
                           "--eval-size", "4", "--out", earlier)
    assert_clean_error(code, err, "--init-text", "no tokens")
    assert snapshot(earlier) == before
    assert hidden_leftovers(tmp_path) == []


# -- the real console script ------------------------------------------------------------------------------
def test_console_script_exits_2_without_traceback(tiny_models, tmp_path):
    exe = Path(sys.executable).with_name("promptlab")
    if not exe.exists():
        pytest.skip("console script not installed next to the interpreter")
    out = tmp_path / "out"
    proc = subprocess.run([str(exe), "train", "--task", "sentiment", "--model", str(tiny_models["encoder"]),
                           "--method", "zero-shot", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert_clean_error(proc.returncode, proc.stderr, "'zero-shot'", "trains nothing", "promptlab eval")
    assert proc.stdout == "" and not out.exists()
