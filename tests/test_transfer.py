"""`promptlab transfer`, the sst5-binary task and `--init prompt:DIR` (SPoT), on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from safetensors.torch import load_file

from promptlab.tasks import get_task

TRAIN = ["--train-size", "16", "--epochs", "1", "--virtual-tokens", "4", "--limit", "12", "--seed", "1"]


def _sst2_folder(root: Path) -> Path:
    """A GLUE-format SST-2 folder made of the bundled set's negative and positive reviews."""
    task = get_task("sentiment")
    splits = task.splits()
    root.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train.tsv"), ("dev", "dev.tsv")):
        rows = [f"{ex.fields['text']}\t{0 if task.labels[ex.label] == 'negative' else 1}"
                for ex in splits[split] if task.labels[ex.label] != "neutral"]
        (root / name).write_text("sentence\tlabel\n" + "\n".join(r.replace('"', "") for r in rows) + "\n")
    return root


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    from promptlab.cli import main

    root = tmp_path_factory.mktemp("transfer")
    sst2 = _sst2_folder(root / "sst2")
    enc, t5 = str(tiny_models["encoder"]), str(tiny_models["seq2seq"])
    plan = {
        "pt-sentiment": ["--task", "sentiment", "--model", enc, "--method", "prompt-tuning"],
        "prefix-sst2": ["--task", "sst2", "--data", str(sst2), "--model", enc, "--method", "prefix-tuning"],
        "t5-sentiment": ["--task", "sentiment", "--model", t5, "--method", "prompt-tuning"],
        "t5-sst2": ["--task", "sst2", "--data", str(sst2), "--model", t5, "--method", "prompt-tuning"],
    }
    out = {"root": root, "sst2": sst2}
    for name, argv in plan.items():
        out[name] = root / name
        assert main(["train", *argv, *TRAIN, "--out", str(out[name])]) == 0
    return out


def _eval_score(run_cli, model, prompt, task, data, out):
    extra = ["--data", data] if data else []
    code, _, err = run_cli("eval", "--model", model, "--prompt", prompt, "--task", task, *extra, "--limit", "12",
                           "--out", out)
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())["metrics"]["accuracy"]


def test_matrix_diagonal_equals_eval_and_other_backbone_is_na(tiny_models, runs, run_cli, tmp_path):
    enc = tiny_models["encoder"]
    code, _, err = run_cli("transfer", "--model", enc, "--prompt", f"a={runs['pt-sentiment']}",
                             "--prompt", f"b={runs['prefix-sst2']}", "--prompt", f"t5={runs['t5-sentiment']}",
                             "--task", "sentiment", "--task", "sst2", "--limit", "12", "--out", tmp_path / "m")
    assert code == 0, err
    result = json.loads((tmp_path / "m" / "transfer.json").read_text())
    cells = {(c["prompt"], c["task"]): c for c in result["cells"]}
    assert len(cells) == 3 * 2
    assert cells[("a", "sentiment")]["own"] and cells[("b", "sst2")]["own"] and not cells[("a", "sst2")]["own"]
    assert cells[("a", "sentiment")]["score"] == _eval_score(run_cli, enc, runs["pt-sentiment"], "sentiment", None,
                                                             tmp_path / "ea")
    # sst2's data comes from what the prompt's run recorded: the same examples as eval --data
    assert cells[("b", "sst2")]["score"] == _eval_score(run_cli, enc, runs["prefix-sst2"], "sst2", str(runs["sst2"]),
                                                        tmp_path / "eb")
    assert all(cells[("t5", t)]["score"] is None and "seq2seq" in cells[("t5", t)]["reason"]
               for t in ("sentiment", "sst2"))
    # labels mapped by name: the 3-class prompt keeps its anchors for both sst2 labels; the 2-class one has no neutral
    assert cells[("a", "sst2")]["labels_from_prompt"] == ["negative", "positive"]
    assert cells[("b", "sentiment")]["labels_from_prompt"] == ["negative", "positive"]
    assert 0.0 <= cells[("b", "sentiment")]["score"] <= 1.0
    for f in ("transfer.md", "transfer.png", "transfer.html"):
        assert (tmp_path / "m" / f).stat().st_size > 0
    assert (tmp_path / "m" / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "m" / "transfer.md").read_text()
    assert "| a (prompt-tuning, sentiment) |" in md and "n/a" in md


def test_generative_transfer_uses_the_prompts_verbalizers(tiny_models, runs, run_cli, tmp_path):
    """T5 prompts: the diagonal equals eval; off it, the same-named labels score the prompt's own words."""
    t5 = tiny_models["seq2seq"]
    code, _, err = run_cli("transfer", "--model", t5, "--prompt", f"s={runs['t5-sst2']}",
                           "--prompt", f"m={runs['t5-sentiment']}", "--data", f"sst2={runs['sst2']}",
                           "--limit", "12", "--out", tmp_path / "g")  # tasks default to the prompts' own
    assert code == 0, err
    result = json.loads((tmp_path / "g" / "transfer.json").read_text())
    assert [t["name"] for t in result["tasks"]] == ["sst2", "sentiment"]
    cells = {(c["prompt"], c["task"]): c for c in result["cells"]}
    assert cells[("s", "sst2")]["score"] == _eval_score(run_cli, t5, runs["t5-sst2"], "sst2", str(runs["sst2"]),
                                                        tmp_path / "e")
    assert cells[("s", "sentiment")]["labels_from_prompt"] == ["negative", "positive"]


def test_answer_kind_mismatch_is_na(tiny_models, runs, run_cli, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"text": f"question {i}", "answer": "yes"}) + "\n" for i in range(6)))
    spec = tmp_path / "qa.yaml"
    spec.write_text("name: qa\ndescription: a text task\nkind: text\nformat: jsonl\nfields: [text]\n"
                    "metrics: [em, f1]\neval_split: qa\ntemplates:\n  - {name: a, text: '{text}'}\n"
                    "  - {name: b, text: 'Q: {text}'}\n")
    code, _, err = run_cli("transfer", "--model", tiny_models["encoder"], "--prompt", f"a={runs['pt-sentiment']}",
                           "--task", "sentiment", "--task", str(spec), "--data", f"{spec}={data}", "--out", tmp_path / "o")
    assert code == 0, err
    cells = json.loads((tmp_path / "o" / "transfer.json").read_text())["cells"]
    na = next(c for c in cells if c["task"] == "qa")
    assert na["score"] is None and "needs text" in na["reason"]


@pytest.mark.parametrize("argv, message", [
    (["--task", "sentiment", "--data", "sst2=x"], "not a --task"),
    (["--task", "sentiment", "--prompt", "a"], "needs NAME=VALUE"),
    (["--task", "sentiment", "--limit", "0"], "--limit must be a positive number"),
])
def test_transfer_errors_are_one_line(tiny_models, runs, run_cli, tmp_path, argv, message):
    code, _, err = run_cli("transfer", "--model", tiny_models["encoder"], "--prompt", f"a={runs['pt-sentiment']}",
                           *argv, "--out", tmp_path / "o")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_duplicate_prompt_names_and_hard_methods_are_refused(tiny_models, runs, run_cli, tmp_path):
    p = f"a={runs['pt-sentiment']}"
    code, _, err = run_cli("transfer", "--model", tiny_models["encoder"], "--prompt", p, "--prompt", p,
                           "--out", tmp_path / "o")
    assert code == 2 and "given twice" in err
    code, _, err = run_cli("eval", "--task", "sentiment", "--model", tiny_models["encoder"], "--method", "zero-shot",
                           "--limit", "4", "--out", tmp_path / "zs")
    assert code == 0, err
    code, _, err = run_cli("transfer", "--model", tiny_models["encoder"], "--prompt", f"z={tmp_path / 'zs'}",
                           "--task", "sentiment", "--out", tmp_path / "o")
    assert code == 2 and "hard method" in err


# -- SPoT: --init prompt:DIR ------------------------------------------------------------------------------------
def _prompt(run: Path, name: str = "adapter_model.safetensors") -> torch.Tensor:
    return load_file(str(run / "artifact" / name))["prompt_embeddings"]


def test_pez_starts_from_a_prompt_and_records_it(tiny_models, runs, run_cli, tmp_path):
    out = tmp_path / "pez-spot"
    code, _, err = run_cli("train", "--task", "sst2", "--data", runs["sst2"], "--model", tiny_models["encoder"],
                           "--method", "pez", "--init", f"prompt:{runs['pt-sentiment']}", *TRAIN, "--out", out)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["training"]["init_from"]["note"] == "copied"


@pytest.mark.parametrize("source, method", [("pt-sentiment", "prompt-tuning"), ("prefix-sst2", "prefix-tuning")])
def test_init_from_prompt_starts_exactly_from_the_source(tiny_models, runs, run_cli, tmp_path, source, method):
    out = tmp_path / "spot"
    code, _, err = run_cli("train", "--task", "sst2", "--data", runs["sst2"], "--model", tiny_models["encoder"],
                           "--method", method, "--init", f"prompt:{runs[source]}", *TRAIN, "--out", out)
    assert code == 0, err
    assert torch.equal(_prompt(out, "prompt_init.safetensors"), _prompt(runs[source]))
    meta = json.loads((out / "artifact" / "promptlab.json").read_text())
    assert meta["extras"]["init_from"]["note"] == "copied"
    assert json.loads((out / "metrics.json").read_text())["training"]["init_from"]["source_tokens"] == 4


def test_init_from_prompt_repeats_tokens_when_counts_differ(tiny_models, runs, run_cli, tmp_path):
    out = tmp_path / "spot6"
    argv = [a if a != "4" else "6" for a in TRAIN]  # --virtual-tokens 6 from a 4-token source
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["encoder"], "--method", "hybrid",
                           "--init", f"prompt:{runs['pt-sentiment']}", *argv, "--out", out)
    assert code == 0, err
    src = _prompt(runs["pt-sentiment"])
    assert torch.equal(_prompt(out, "prompt_init.safetensors"), torch.cat([src, src[:2]]))
    meta = json.loads((out / "artifact" / "promptlab.json").read_text())
    assert meta["extras"]["init_from"]["note"] == "source has 4 tokens, repeated to 6"


@pytest.mark.parametrize("method, source, model, message", [
    ("prompt-tuning", "missing", "encoder", "no such directory"),
    ("prefix-tuning", "pt-sentiment", "encoder", "needs a PREFIX_TUNING one"),
    ("prompt-tuning", "t5-sentiment", "encoder", "load it with the model it was trained on"),
    ("p-tuning", "pt-sentiment", "encoder", "cannot start p-tuning"),
])
def test_init_from_prompt_errors(tiny_models, runs, run_cli, tmp_path, method, source, model, message):
    src = runs.get(source, tmp_path / "nowhere")
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models[model], "--method", method,
                           "--init", f"prompt:{src}", *TRAIN, "--out", tmp_path / "o")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_init_prompt_needs_a_directory(run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--method", "prompt-tuning", "--init", "prompt:",
                           "--out", tmp_path / "o")
    assert code == 2 and "needs a directory" in err


# -- sst5-binary ---------------------------------------------------------------------------------------------------
def test_sst5_binary_maps_and_drops(tmp_path):
    (tmp_path / "stsa.fine.dev").write_text("0 awful .\n1 weak .\n2 fine i guess .\n3 good .\n4 superb .\n")
    task = get_task("sst5-binary")
    dev = task.splits(str(tmp_path))["dev"]
    assert [(ex.fields["text"], task.labels[ex.label]) for ex in dev] == [
        ("awful .", "negative"), ("weak .", "negative"), ("good .", "positive"), ("superb .", "positive")]


def test_sst5_binary_unknown_raw_label_fails(tmp_path):
    from promptlab.errors import DataError

    (tmp_path / "stsa.fine.dev").write_text("0 awful .\n7 what .\n")
    with pytest.raises(DataError, match=r"stsa\.fine\.dev:2: label '7' is not in the label_map"):
        get_task("sst5-binary").splits(str(tmp_path))


def test_label_map_must_name_task_labels(tmp_path):
    from promptlab.errors import ConfigError
    from promptlab.tasks.spec import load_spec

    spec = (Path(__file__).resolve().parents[1] / "src/promptlab/tasks/specs/sst5-binary.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.replace('"4": positive', '"4": great').replace("name: sst5-binary", "name: bad"))
    with pytest.raises(ConfigError, match="'label_map' must map raw labels to the task's labels"):
        load_spec(bad)


def test_real_sst5_binary():
    if not (SHARED_DATA / "sst5").is_dir():
        pytest.skip("../shared/data/sst5 is not present")
    task = get_task("sst5-binary")
    splits = task.splits(str(SHARED_DATA / "sst5"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 6920, "dev": 872}
    assert sum(ex.label for ex in splits["dev"]) == 444  # positives; 139+289 negatives, neutral 229 dropped
