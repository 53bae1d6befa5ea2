"""The bad-input corpus (tests/bad_inputs/manifest.yaml) and property-based tests of the loaders and templates.

Every corpus case is data: a command line over stored files and the message it must produce. A failing case
must end in one `promptlab: error:` line with exit status 2, no traceback, nothing written, and an earlier run
in the same --out left byte for byte as it was; a tolerated case must write a complete run.
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptlab.errors import PromptlabError
from promptlab.tasks import get_task
from promptlab.tasks.base import Example, Template
from promptlab.tasks.spec import _render_problem, load_spec

HERE = Path(__file__).resolve().parent / "bad_inputs"
MANIFEST = yaml.safe_load((HERE / "manifest.yaml").read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = MANIFEST["cases"]


def _param(case: dict[str, Any]) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case["xfail"])] if case.get("xfail") else []
    return pytest.param(case, id=case["id"], marks=marks)


def test_manifest_is_well_formed():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30
    for c in CASES:
        assert set(c) <= {"id", "about", "argv", "expect", "artifact", "out", "xfail"}, c["id"]
        expect = c["expect"]
        assert expect.get("exit", 2) in (0, 2) and (expect.get("exit", 2) == 0 or expect["message"]), c["id"]
        for arg in c["argv"]:
            for ref in (a.split("}")[0] for a in arg.split("{")[1:]):
                if ref.startswith('"'):  # a literal JSON object (--chat-template-kwargs), not a placeholder
                    continue
                assert ref in ("files", "artifact", "out") or ref.startswith("model."), (c["id"], ref)


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they cost 10-50x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "files"
    shutil.copytree(HERE / "files", root)
    for g in MANIFEST["generate"]:
        target = root / g["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if "text" in g:
            target.write_text(g["text"])
        else:
            line = g["line"].replace("{x}", g["x"] * g["times"])
            target.write_text((root / g["from"]).read_text() + line + "\n")
    return root


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, Path]:
    import torch
    from transformers import BertModel

    root = tmp_path_factory.mktemp("broken-models")
    nan = root / "encoder-nan-weights"
    shutil.copytree(tiny_models["encoder"], nan)
    model = BertModel.from_pretrained(nan)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.fill_(float("nan"))
    model.save_pretrained(nan)
    corrupt = root / "encoder-corrupt-weights"
    shutil.copytree(tiny_models["encoder"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    no_tok = root / "encoder-no-tokenizer"
    shutil.copytree(tiny_models["encoder"], no_tok)
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tok / f).unlink(missing_ok=True)
    return {**tiny_models, "encoder-nan-weights": nan, "encoder-corrupt-weights": corrupt,
            "encoder-no-tokenizer": no_tok}


@pytest.fixture(scope="module")
def base_run(models, tmp_path_factory) -> Path:
    """A trained encoder prompt-tuning run: what artifact cases corrupt, and the 'earlier result' to protect."""
    from promptlab.cli import main

    root = tmp_path_factory.mktemp("base")
    (root / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    out = root / "run"
    code = main(["train", "--task", "sentiment", "--model", str(models["encoder"]), "--method", "prompt-tuning",
                 "--train-size", "8", "--epochs", "1", "--virtual-tokens", "4", "--limit", "4",
                 "--config", str(root / "fast.yaml"), "--out", str(out)])
    assert code == 0
    return out


# -- the corpus --------------------------------------------------------------------------------------------
def _edit_artifact(run: Path, edits: dict[str, dict[str, Any]]) -> None:
    for name, op in edits.items():
        f = run / "artifact" / name
        if op.get("delete"):
            f.unlink()
        elif "truncate" in op:
            f.write_bytes(f.read_bytes()[: op["truncate"]])
        elif "text" in op:
            f.write_text(op["text"])
        elif "hex" in op:
            f.write_bytes(bytes.fromhex(op["hex"]))
        else:
            doc = json.loads(f.read_text())
            doc.update(op.get("json_set", {}))
            for key in op.get("json_del", []):
                doc.pop(key)
            f.write_text(json.dumps(doc))


def _argv(case: dict[str, Any], corpus: Path, models: dict[str, Path], artifact: Path | None) -> list[str]:
    subs = {"{files}": str(corpus), "{artifact}": str(artifact)}
    subs.update({f"{{model.{k}}}": str(v) for k, v in models.items()})
    out = []
    for arg in case["argv"]:
        for key, value in subs.items():
            arg = arg.replace(key, value)
        out.append(arg)
    return out


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def one_error_line(code: int, err: str, needles: list[str]) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("promptlab: error: "), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"


def _check_nothing_written(where: Path, keep: Path | None) -> None:
    """Only the hidden work dir of a diverged run may remain, holding its config and last good checkpoint."""
    hidden = sorted(p.name for p in where.iterdir() if p.name.startswith("."))
    if keep is None:
        assert hidden == []
        return
    assert hidden == [keep.name]
    assert (keep / "config.yaml").is_file() and [p.name for p in keep.glob("step-*")]


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case, corpus, models, base_run, run_cli, tmp_path):
    artifact = None
    if "artifact" in case:
        artifact = tmp_path / "artifact-run"
        shutil.copytree(base_run, artifact)
        _edit_artifact(artifact, case["artifact"])
    argv = _argv(case, corpus, models, artifact)
    expect = case["expect"]
    own_out = "--out" in argv
    fresh = tmp_path / "runs" / "out"
    if case.get("out") != "none" and not own_out:
        argv += ["--out", str(fresh)]

    code, out, err = run_cli(*argv)
    if expect.get("exit", 2) == 0:
        assert code == 0, err
        assert "Traceback" not in err
        metrics = json.loads((fresh / "metrics.json").read_text())
        assert metrics["n_examples"] > 0 and (fresh / "predictions.jsonl").stat().st_size > 0
        _check_nothing_written(fresh.parent, None)
        return
    one_error_line(code, err, expect["message"])
    keep = expect.get("keeps_checkpoint", False)
    if case.get("out") == "none":
        assert out == ""
        return
    if own_out:
        return
    assert not fresh.exists()
    if keep:
        _check_nothing_written(fresh.parent, fresh.parent / ".out.work")
    else:
        assert not fresh.parent.exists()

    earlier = tmp_path / "earlier"  # --out on an earlier run: it must survive the failure untouched
    shutil.copytree(base_run, earlier)
    before = snapshot(earlier)
    # --overwrite: even allowed to replace the earlier run (another task or method), a failing one leaves it be
    overwrite = ["--overwrite"] if argv[0] in ("eval", "train", "compare") else []
    code, _, err = run_cli(*argv[:-2], *overwrite, "--out", str(earlier))
    one_error_line(code, err, expect["message"])
    assert snapshot(earlier) == before
    _check_nothing_written(tmp_path, tmp_path / ".earlier.work" if keep else None)


# -- property-based: loaders turn any bytes or rows into Examples or a PromptlabError ------------------------
# (format, task, file name): the official formats read from the file name they expect.
FORMATS = [
    ("jsonl", None, "data.jsonl"), ("csv", None, "data.csv"), ("glue-tsv", "sst2", "dev.tsv"),
    ("sst5", "sst5", "stsa.fine.dev"), ("superglue", "boolq", "val.jsonl"), ("ag-news", "ag-news", "test.csv"),
    ("hotpotqa", "hotpotqa", "hotpot_dev_distractor_v1.json"),
]
# database=None: no .hypothesis/ directory in the checkout; failures print their reproducing example anyway.
PROPERTY = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _task(fmt: str, task_name: str | None = None) -> Any:
    """A registered task, or for the generic formats the corpus's local task spec."""
    return get_task(task_name) if task_name else load_spec(HERE / "files" / f"local-{fmt}.yaml")


def _load_or_data_error(task: Any, path: Path) -> None:
    try:
        splits = task.splits(str(path))
    except PromptlabError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert splits and all(isinstance(ex, Example) for rows in splits.values() for ex in rows)
    for rows in splits.values():
        for ex in rows:
            assert all(isinstance(v, str) for v in ex.fields.values())
            if task.kind == "choices":
                assert isinstance(ex.label, int) and 0 <= ex.label < len(task.labels)


@pytest.mark.parametrize(("fmt", "task_name", "file_name"), FORMATS, ids=[f[0] for f in FORMATS])
@PROPERTY
@given(data=st.binary(max_size=400))
def test_loader_on_random_bytes_gives_examples_or_a_data_error(fmt, task_name, file_name, data):
    task = _task(fmt, task_name)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / file_name
        path.write_bytes(data)
        _load_or_data_error(task, path)


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 9), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["pos", "neg", "POS", " good ", "1", "²", "-0"]))
_value = st.one_of(_scalar, st.lists(_scalar, max_size=2), st.dictionaries(st.text(max_size=3), _scalar, max_size=2))
_rows = st.lists(st.dictionaries(st.sampled_from(["text", "label", "id", "idx", "extra", ""]), _value, max_size=4),
                 max_size=6)


@PROPERTY
@given(rows=_rows)
def test_jsonl_loader_on_random_rows_gives_examples_or_a_data_error(rows):
    task = _task("jsonl")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        _load_or_data_error(task, path)


_cell = st.lists(st.sampled_from([*'ab ,"\n\r\t\x00é²', "pos", "neg"]), max_size=6).map("".join)


@PROPERTY
@given(header=st.lists(st.sampled_from(["text", "label", "id", "x"]), min_size=1, max_size=3),
       rows=st.lists(st.lists(_cell, min_size=0, max_size=4), max_size=6))
def test_csv_loader_on_random_cells_gives_examples_or_a_data_error(header, rows):
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    task = _task("csv")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.csv"
        path.write_text(buf.getvalue())
        _load_or_data_error(task, path)


# -- property-based: templates that pass the spec check always render ----------------------------------------
_template_text = st.lists(st.sampled_from([*"{}:!<>^.0123dsrxa ", "text", "choices", "{text}"]),
                          max_size=12).map("".join)
_field_value = st.text(max_size=20)


def _accepted(text: str) -> bool:
    """The spec loader's checks on one template of a task with the single input field 'text'."""
    try:
        names = Template("t", text).fields()
    except ValueError:
        return False
    return names <= {"text", "choices"} and _render_problem(text, ["text"]) is None


@settings(max_examples=300, deadline=None, database=None)
@given(text=_template_text, value=_field_value, choices=st.lists(st.text(max_size=5), min_size=1, max_size=3))
def test_an_accepted_template_renders_any_example(text, value, choices):
    if not _accepted(text):
        return
    rendered = Template("t", text).render(Example("e", {"text": value}), choices)
    assert isinstance(rendered, str)


@settings(max_examples=150, deadline=None, database=None)
@given(value=_field_value, prefix=st.text(alphabet=string.ascii_letters + " :\n", max_size=10))
def test_a_plain_field_template_renders_the_value_verbatim(value, prefix):
    assert Template("t", prefix + "{text}").render(Example("e", {"text": value})) == prefix + value


@settings(max_examples=150, deadline=None, database=None)
@given(text=_template_text)
def test_the_spec_loader_accepts_or_rejects_a_template_in_one_line(text, tmp_path_factory):
    """Whatever a template says, loading its spec gives a Task or a one-line PromptlabError."""
    spec = (HERE / "files" / "local-jsonl.yaml").read_text().replace('"{text} It was"', json.dumps(text))
    d = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    (d / "t.yaml").write_text(spec)
    try:
        task = load_spec(d / "t.yaml")
    except PromptlabError as e:
        assert "\n" not in str(e)
        return
    finally:
        shutil.rmtree(d)
    rendered = task.template("was").render(Example("e", {"text": "a review"}), task.verbalizers)
    assert isinstance(rendered, str)
