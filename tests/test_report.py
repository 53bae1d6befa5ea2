"""The report: report.md and a self-contained report.html from finished runs, and the data-efficiency sweep.

Model-free checks build run directories by hand (metrics.json + predictions.jsonl), so the numbers the report
must show are known exactly; the end-to-end checks run `compare` on the tiny encoder.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from promptlab.cli import main
from promptlab.metrics import bootstrap_ci
from promptlab.report import (
    build,
    crossing,
    curve,
    findings,
    headline,
    score_cell,
)
from promptlab.runs import load_run, load_runs
from promptlab.sweep import parse_sizes, plan

CI_CELL = re.compile(r"(\d+\.\d) \[(\d+\.\d), (\d+\.\d)\]")
METHODS = ["zero-shot", "prompt-tuning", "linear-probe"]
FAST = ["--epochs", "1", "--virtual-tokens", "4", "--eval-size", "24"]


def table_rows(md: str, header_start: str = "| method | family | score") -> dict[str, list[str]]:
    """The first Markdown table after `header_start`: method -> cells."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells
    return out


def img_sources(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', page)


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "fast.yaml"
    path.write_text("train:\n  dev_size: 8\n")
    return path


@pytest.fixture(scope="module")
def compare_dir(tiny_models, fast_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    code = main(["compare", "--task", "sentiment", "--model", str(tiny_models["encoder"]), "--methods",
                 ",".join(METHODS), "--train-size", "24", *FAST, "--config", str(fast_config), "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def sweep_dir(tiny_models, fast_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "curve"
    code = main(["compare", "--task", "sentiment", "--model", str(tiny_models["encoder"]), "--methods",
                 "zero-shot,prompt-tuning", "--train-sizes", "8,16", "--seeds", "2", *FAST,
                 "--config", str(fast_config), "--out", str(out)])
    assert code == 0
    return out


def fake_run(root: Path, name: str, family: str, correct: list[int], *, params: int = 0, size: int = 16,
             seed: int = 0, labels: tuple[str, ...] = ("neg", "pos"), seconds: float = 0.0) -> Path:
    """A finished choice-task run written by hand: gold alternates over `labels`, prediction right or wrong."""
    d = root / f"n{size}-s{seed}" / name
    (d / "artifact").mkdir(parents=True)
    recs = []
    for i, c in enumerate(correct):
        gold = labels[i % len(labels)]
        pred = gold if c else labels[(i + 1) % len(labels)]
        recs.append({"id": str(i), "input": f"x{i}", "prediction": pred, "gold": gold, "score": 0.9, "correct": c})
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "config.yaml").write_text(f"seed: {seed}\nmethod: {name}\n")
    (d / "artifact" / "promptlab.json").write_text(json.dumps({"labels": list(labels)}))
    metrics = {"task": "toy", "model": "tiny", "method": name, "family": family, "split": "test",
               "n_examples": len(correct), "metrics": {"accuracy": sum(correct) / len(correct)},
               "trainable_params": params, "total_params": 1000, "trainable_percent": params / 10,
               "artifact_bytes": 100 + params, "train_seconds": seconds, "eval_seconds": 1.0,
               "eval_examples_per_second": 50.0, "train_examples": size, "dev_examples": 4,
               "history": [{"epoch": 1, "train_loss": 1.0, "dev_score": 0.5},
                           {"epoch": 2, "train_loss": 0.5, "dev_score": 0.7}] if params else []}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


# -- the compare report ---------------------------------------------------------------------------------------
def test_compare_report_has_one_row_per_method_with_a_bootstrap_ci(compare_dir):
    md = (compare_dir / "report.md").read_text()
    rows = table_rows(md)
    assert sorted(rows) == sorted(METHODS)
    for method in METHODS:
        run = json.loads((compare_dir / method / "metrics.json").read_text())
        records = [json.loads(x) for x in (compare_dir / method / "predictions.jsonl").read_text().splitlines()]
        lo, hi = bootstrap_ci([r["correct"] for r in records], n=1000, seed=0)
        point, cell_lo, cell_hi = map(float, CI_CELL.fullmatch(rows[method][2]).groups())
        assert point == round(100 * run["metrics"]["accuracy"], 1)
        assert (cell_lo, cell_hi) == (round(100 * lo, 1), round(100 * hi, 1))  # from the per-example records
        assert cell_lo <= point <= cell_hi
        assert rows[method][1] == run["family"]
        assert rows[method][4] == f"{run['trainable_params']:,}"
        assert rows[method][6] == f"{run['artifact_bytes']:,}"
    assert rows["zero-shot"][4] == "0" and rows["prompt-tuning"][4] == str(4 * 32)


def test_compare_writes_self_contained_html_with_every_plot(compare_dir):
    page = (compare_dir / "report.html").read_text()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "report.html must not fetch anything"
    sources = img_sources(page)
    ids = re.findall(r'<figure id="([a-z_]+)">', page)
    assert ids == ["accuracy_vs_params", "accuracy_vs_time", "training_curves", "confusion"]
    assert len(sources) == len(ids)
    for src, name in zip(sources, ids):
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert png == (compare_dir / "plots" / f"{name}.png").read_bytes()  # the same figure as report.md's
        width = int.from_bytes(png[16:20], "big")
        assert width > 300
    for method in METHODS:
        assert f'<td class="l">{method}</td>' in page
    assert len(re.findall(r"\[\d+\.\d, \d+\.\d\]", page)) >= len(METHODS)
    md = (compare_dir / "report.md").read_text()
    for name in ids:
        assert f"(plots/{name}.png)" in md


def test_report_command_rebuilds_the_same_table_from_disk(compare_dir, run_cli, tmp_path):
    code, out, err = run_cli("report", compare_dir, "--out", tmp_path / "again", "--title", "again")
    assert code == 0, err
    again = (tmp_path / "again" / "report.md").read_text()
    assert again.startswith("# again\n")
    assert table_rows(again) == table_rows((compare_dir / "report.md").read_text())
    assert (tmp_path / "again" / "report.html").is_file()
    assert "report.html" in out
    # one run directory alone is a report too
    code, _, err = run_cli("report", compare_dir / "linear-probe", "--out", tmp_path / "one")
    assert code == 0, err
    assert sorted(table_rows((tmp_path / "one" / "report.md").read_text())) == ["linear-probe"]


def test_report_on_a_directory_without_runs_is_one_clean_error(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("report", tmp_path / "empty")
    assert code == 2 and err.startswith("promptlab: error: ") and "no finished runs" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("foreign", ['{"accuracy": 0.9}', '[1, 2]'])
def test_report_names_a_metrics_json_that_promptlab_did_not_write(run_cli, tmp_path, foreign):
    fake_run(tmp_path / "mixed", "zero-shot", "hard", [1, 0, 1, 1])
    (tmp_path / "mixed" / "other").mkdir()
    (tmp_path / "mixed" / "other" / "metrics.json").write_text(foreign)
    code, _, err = run_cli("report", tmp_path / "mixed")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "other/metrics.json" in err and "not a promptlab run's metrics" in err
    assert not (tmp_path / "mixed" / "report.md").exists()


def test_report_out_that_is_a_file_is_one_clean_error(run_cli, tmp_path):
    run = fake_run(tmp_path, "zero-shot", "hard", [1, 0])
    (tmp_path / "notes.txt").write_text("keep\n")
    code, _, err = run_cli("report", run, "--out", tmp_path / "notes.txt")
    assert code == 2 and "Traceback" not in err and "is a file" in err, err
    assert (tmp_path / "notes.txt").read_text() == "keep\n"


# -- model-free: the numbers a report derives ----------------------------------------------------------------
def test_confusion_matrix_and_ci_come_from_the_records(tmp_path):
    d = fake_run(tmp_path, "zero-shot", "hard", [1, 1, 0, 1, 0, 1, 1, 1], labels=("a", "b"))
    run = load_run(d)
    # gold alternates a, b; a wrong answer predicts the other label: both misses (i = 2, 4) are gold a
    assert run["confusion"] == [[2, 2], [0, 4]] and run["labels"] == ["a", "b"]
    lo, hi = bootstrap_ci([1, 1, 0, 1, 0, 1, 1, 1], n=1000, seed=0)
    assert run["ci"]["accuracy"] == [lo, hi]
    assert score_cell(run) == f"75.0 [{100 * lo:.1f}, {100 * hi:.1f}]"


def test_text_task_shows_em_and_f1_each_with_a_ci(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    recs = [{"id": str(i), "prediction": "x", "gold": ["x"], "em": float(i % 2), "score": 0.5 + 0.1 * (i % 3)}
            for i in range(10)]
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "metrics.json").write_text(json.dumps({
        "task": "qa", "model": "t", "method": "zero-shot", "family": "hard", "metrics": {"em": 0.5, "f1": 0.59},
        "trainable_params": 0, "train_seconds": 0.0, "eval_examples_per_second": 1.0, "train_examples": 0}))
    run = load_run(d)
    assert run["kind"] == "text" and set(run["ci"]) == {"em", "f1"}
    assert score_cell(run).startswith("EM 50.0 [")
    res = build([d], tmp_path / "rep")
    md = res["md"].read_text()
    assert "F1 59.0 [" in md and "confusion" not in md  # no confusion matrix for free-text answers


def test_sweep_headline_is_the_largest_size_and_the_curve_averages_seeds(tmp_path):
    for seed, hits in ((0, [1, 1, 0, 0]), (1, [1, 1, 1, 0]), (2, [1, 0, 0, 0])):
        fake_run(tmp_path, "prompt-tuning", "soft", hits, params=10, size=8, seed=seed)
        fake_run(tmp_path, "zero-shot", "hard", [1, 1, 1, 0], size=8, seed=seed)
    fake_run(tmp_path, "prompt-tuning", "soft", [1, 1, 1, 1], params=10, size=64)
    fake_run(tmp_path, "zero-shot", "hard", [1, 1, 1, 0], size=64)
    res = build([tmp_path], tmp_path / "report")
    head = headline(res["runs"])
    assert {(r["method"], r["train_examples"]) for r in head} == {("prompt-tuning", 64), ("zero-shot", 64)}
    pt = next(s for s in curve(res["runs"]) if s["method"] == "prompt-tuning")
    assert pt["points"][0] == pytest.approx({"n": 8, "mean": 0.5, "min": 0.25, "max": 0.75, "seeds": 3, "sd": 0.25})
    assert pt["points"][1]["seeds"] == 1
    md = res["md"].read_text()
    assert "50.0 ± 25.0 (3 seeds)" in md and "labelled training examples (total over all classes)" in md
    assert (tmp_path / "report" / "plots" / "data_efficiency.png").is_file()
    # soft (50%) trails hard (75%) at 8 and leads (100% vs 75%) at 64: the crossing is between, log-interpolated
    cross = crossing(curve(res["runs"]))
    assert 8 < cross["n"] < 64
    assert cross["n"] == pytest.approx(8 * (64 / 8) ** (0.25 / 0.5))


def test_crossing_when_one_family_always_leads():
    def series(fam, means):
        return {"method": fam, "family": fam, "points": [{"n": n, "mean": m} for n, m in zip((8, 32), means)]}

    assert crossing([series("hard", [0.7, 0.7]), series("soft", [0.5, 0.6])])["n"] is None
    assert "hard prompt leads at every size" in crossing([series("hard", [0.7, 0.7]), series("soft", [0.5, 0.6])])["text"]
    assert "soft prompt leads" in crossing([series("hard", [0.4, 0.4]), series("soft", [0.5, 0.6])])["text"]


def test_sizes_and_seed_plan():
    assert parse_sizes("2000, 8,32,8") == [8, 32, 2000]
    assert plan([8, 128, 512], 3, 0) == [(8, 0), (8, 1), (8, 2), (128, 0), (128, 1), (128, 2), (512, 0)]


# -- the sweep end to end ---------------------------------------------------------------------------------------
def test_train_sizes_runs_every_method_at_every_size_and_seed(sweep_dir):
    points = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name != "plots")
    assert points == ["n16-s0", "n16-s1", "n8-s0", "n8-s1"]
    for point in points:
        size, seed = int(point[1:].split("-s")[0]), int(point.split("-s")[1])
        for method in ("zero-shot", "prompt-tuning"):
            m = json.loads((sweep_dir / point / method / "metrics.json").read_text())
            assert m["train_examples"] == size and m["data"]["train"] == size
            assert f"seed: {seed}\n" in (sweep_dir / point / method / "config.yaml").read_text()
    md = (sweep_dir / "report.md").read_text()
    rows = table_rows(md, "| method | family | n=8")
    assert sorted(rows) == ["prompt-tuning", "zero-shot"]
    assert all("(2 seeds)" in cell for r in rows.values() for cell in r[2:])
    page = (sweep_dir / "report.html").read_text()
    assert '<figure id="data_efficiency">' in page and len(img_sources(page)) == 5


def test_rerunning_a_sweep_keeps_finished_points(sweep_dir, tiny_models, fast_config, run_cli):
    before = (sweep_dir / "n8-s1" / "prompt-tuning" / "metrics.json").read_bytes()
    code, out, err = run_cli("compare", "--task", "sentiment", "--model", tiny_models["encoder"], "--methods",
                             "zero-shot,prompt-tuning", "--train-sizes", "8,16", "--seeds", "2", *FAST,
                             "--config", fast_config, "--out", sweep_dir)
    assert code == 0, err
    assert out.count("done earlier, kept") == 8
    assert (sweep_dir / "n8-s1" / "prompt-tuning" / "metrics.json").read_bytes() == before


def test_train_sizes_beyond_the_pool_fails_before_training(tiny_models, run_cli, tmp_path):
    code, _out, err = run_cli("compare", "--task", "sentiment", "--model", tiny_models["encoder"], "--methods",
                             "zero-shot", "--train-sizes", "8,100000", "--out", tmp_path / "c")
    assert code == 2 and "--train-size 100000" in err
    assert not any((tmp_path / "c").rglob("metrics.json"))


def test_two_runs_of_one_method_are_told_apart_by_their_directories(tmp_path):
    dirs = []
    for name, correct in (("sst2-pt", [1, 1, 0, 1]), ("tweet-pt", [1, 0, 0, 1])):
        d = fake_run(tmp_path / "made" / name, "prefix-tuning", "soft", correct, params=10)  # same size and seed
        (tmp_path / "runs").mkdir(exist_ok=True)
        dirs.append(d.rename(tmp_path / "runs" / name))  # two `train --out runs/NAME` directories
    names = sorted(r["display"] for r in headline(load_runs(dirs)))
    assert names == ["prefix-tuning (sst2-pt)", "prefix-tuning (tweet-pt)"]


# -- what one report may hold -----------------------------------------------------------------------------------
def test_a_run_given_twice_is_counted_once(run_cli, tmp_path):
    run = fake_run(tmp_path / "r", "zero-shot", "hard", [1, 0, 1, 1])
    assert len(load_runs([run, run, tmp_path / "r" / ".." / "r"])) == 1  # the compare dir holding it, too
    code, _, err = run_cli("report", run, run, "--out", tmp_path / "rep")
    assert code == 0, err
    assert list(table_rows((tmp_path / "rep" / "report.md").read_text())) == ["zero-shot"]


def _edit(run: Path, **changes) -> None:
    m = json.loads((run / "metrics.json").read_text())
    m.update(changes)
    (run / "metrics.json").write_text(json.dumps(m))


@pytest.mark.parametrize(("what", "needles"), [
    ("model", ["differ in model", "'tiny' vs 'other'"]),
    ("task", ["differ in task", "'toy' vs 'sst2'"]),
    ("count", ["differ in evaluation set", "4 examples", "6 examples"]),
    ("ids", ["differ in evaluation set", "ids "]),
])
def test_runs_of_another_model_task_or_evaluation_set_are_not_mixed(what, needles, run_cli, tmp_path):
    a = fake_run(tmp_path / "a", "zero-shot", "hard", [1, 0, 1, 1])
    b = fake_run(tmp_path / "b", "prompt-tuning", "soft", [1, 1, 1, 1, 0, 0] if what == "count" else [1, 1, 1, 1],
                 params=10)
    if what == "model":
        _edit(b, model="other")
    elif what == "task":
        _edit(b, task="sst2")
    elif what == "ids":  # as many examples, other ones: e.g. --eval-size over another --data
        f = b / "predictions.jsonl"
        f.write_text(f.read_text().replace('"id": "', '"id": "other-'))
    code, _, err = run_cli("report", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "rep")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("promptlab: error: ") and "report them separately" in err
    for needle in needles:
        assert needle in err
    assert str(a) in err and str(b) in err and not (tmp_path / "rep").exists()


def test_tied_scores_are_called_a_tie_not_a_lead(tmp_path):
    runs = [load_run(fake_run(tmp_path, m, "hard", [1, 0, 1, 0])) for m in ("zero-shot", "few-shot")]
    assert findings(runs) == ["Best hard: zero-shot and few-shot tie — accuracy 50.0."]

    def series(fam, means):
        return {"method": fam, "family": fam, "points": [{"n": n, "mean": m} for n, m in zip((8, 32), means)]}

    tie = crossing([series("hard", [0.5, 0.5]), series("soft", [0.5, 0.5])])["text"]
    assert "tie at every size" in tie and "lead" not in tie
    assert "leads or ties" in crossing([series("hard", [0.5, 0.5]), series("soft", [0.5, 0.6])])["text"]
    assert "they tie" in crossing([series("hard", [0.5, 0.5]), series("soft", [0.4, 0.5])])["text"]
