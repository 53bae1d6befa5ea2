"""README's "Your own data" section runs as written: its files are written byte for byte from the README (between
its `<!-- custom-data ... -->` markers) and each of its commands runs on a tiny model, so the README cannot drift
from what promptlab accepts."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = r"<!-- custom-data {what} -->\n```[a-z]*\n(.*?)```"


def files() -> dict[str, str]:
    text = README.read_text()
    return dict(re.findall(BLOCK.format(what=r"file: (\S+)"), text, flags=re.DOTALL))


def commands() -> list[list[str]]:
    found = re.findall(BLOCK.format(what="commands"), README.read_text(), flags=re.DOTALL)
    assert len(found) == 1, "README: one <!-- custom-data commands --> block"
    joined = found[0].replace("\\\n", " ")  # shell line continuations
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


def test_the_section_has_its_files_and_commands():
    assert set(files()) == {"tickets.csv", "tickets.yaml", "tickets-soft.yaml", "tickets.jsonl"}
    names = {(c[0], c[1], c[c.index("--task") + 1] if "--task" in c else None) for c in commands()}
    assert ("promptlab", "eval", "tickets.yaml") in names and ("promptlab", "train", "tickets-soft.yaml") in names


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    for name, body in files().items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_custom_data_commands_run(tiny_models, run_cli, workdir):
    """Every command as the README writes it, `minilm` swapped for the tiny encoder (offline)."""
    ran = []
    for argv in commands():
        assert argv[0] == "promptlab", argv
        args = [str(tiny_models["encoder"]) if a == "minilm" else a for a in argv[1:]]
        code, out, err = run_cli(*args)
        assert code == 0, f"{shlex.join(argv)}\n{err}"
        ran.append((args, out))
    for args, out in ran:
        if "--out" not in args:
            continue
        run = workdir / args[args.index("--out") + 1]
        if args[0] == "compare":
            dirs = [run / m for m in args[args.index("--methods") + 1].split(",")]
            assert (run / "report.md").is_file()
        else:
            dirs = [run]
        for d in dirs:
            metrics = json.loads((d / "metrics.json").read_text())
            assert metrics["task"] in ("tickets", "tickets-soft")
            # a single file is carved: 40% evaluation (6 of the 15 CSV rows, 4 of the 10 JSONL rows)
            assert metrics["n_examples"] == (6 if metrics["task"] == "tickets" else 4)
            records = [json.loads(line) for line in (d / "predictions.jsonl").open()]
            assert {r["gold"] for r in records} <= {"billing", "technical", "account"}
            assert all(re.fullmatch(r"t\d\d", r["id"]) for r in records)  # ids from the id column
    predict = next(out for args, out in ran if args[0] == "predict")
    assert any(label in predict for label in ("billing", "technical", "account"))


def test_the_csv_spec_reads_the_mapped_columns(workdir):
    from promptlab.tasks import get_task

    task = get_task(str(workdir / "tickets.yaml"))
    splits = task.splits(str(workdir / "tickets.csv"))
    (rows,) = splits.values()
    first = next(r for r in rows if r.id == "t01")
    assert first.fields == {"text": "I was charged twice for my subscription this month"}
    assert task.labels[first.label] == "billing" and len(rows) == 15
    template = task.template("ticket")
    assert template.render(first) == "Ticket: I was charged twice for my subscription this month\nQueue:"


def test_a_prompt_finds_its_own_spec_file_and_says_when_it_moved(tiny_models, run_cli, workdir):
    """eval/predict --prompt of a prompt trained on a user's spec need no --task again (they did); a spec moved
    away is one line that says to pass --task."""
    code, _, err = run_cli("train", "--task", "tickets.yaml", "--data", "tickets.csv", "--model",
                           tiny_models["encoder"], "--method", "prompt-tuning", "--epochs", "1", "--out", "pt")
    assert code == 0, err
    meta = json.loads((workdir / "pt" / "artifact" / "promptlab.json").read_text())
    assert meta["task_spec"] == str(workdir / "tickets.yaml")
    code, out, err = run_cli("predict", "--prompt", "pt", "I was billed for a plan I never ordered")
    assert code == 0 and out.strip(), err
    code, _, err = run_cli("eval", "--prompt", "pt", "--out", "again")
    assert code == 0, err
    (workdir / "tickets.yaml").rename(workdir / "moved.yaml")
    code, _, err = run_cli("eval", "--prompt", "pt", "--out", "gone")
    assert code != 0 and "no longer there" in err and "--task" in err and len(err.strip().splitlines()) == 1, err
    assert not (workdir / "gone").exists()
    code, _, err = run_cli("eval", "--prompt", "pt", "--task", "moved.yaml", "--out", "moved")
    assert code == 0, err
