"""Task registry, YAML specs and every data format: good rows, bad rows, and the real datasets when present."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import yaml

from promptlab.errors import ConfigError, DataError
from promptlab.tasks import Example, describe, get_task, task_names
from promptlab.tasks.spec import BUNDLED

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEED_PROMPT = "Classify the sentiment of the following review as Positive, Negative, or Neutral: '{text}'"
BUILTINS = ["ag-news", "boolq", "cb", "rte", "sentiment", "sst2", "sst5", "tweeteval-sentiment"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def user_spec(tmp_path: Path, **overrides) -> Path:
    """A user spec over local files; overrides replace keys (None deletes one)."""
    spec = {
        "name": "reviews",
        "description": "my reviews",
        "kind": "choices",
        "format": "jsonl",
        "fields": ["text"],
        "columns": {"text": "body"},
        "label_column": "stars",
        "labels": ["bad", "good"],
        "verbalizers": ["bad", "good"],
        "descriptions": ["A bad review.", "A good review."],
        "metrics": ["accuracy"],
        "eval_split": "dev",
        "templates": [
            {"name": "a", "text": "Review: {text}"},
            {"name": "b", "text": "{text} It was {choices}?"},
        ],
    }
    spec.update(overrides)
    spec = {k: v for k, v in spec.items() if v is not None}
    return write(tmp_path / "reviews.yaml", yaml.safe_dump(spec, sort_keys=False))


def labels_of(task, examples) -> Counter:
    return Counter(task.labels[e.label] for e in examples)


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_every_builtin_with_one_line():
    names = task_names()
    assert set(BUILTINS) <= set(names)
    described = dict(describe())
    for name in BUILTINS:
        assert described[name] and "\n" not in described[name]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_specs_are_complete(name):
    task = get_task(name)
    if task.labels_from_data:  # the names come with the data; the spec only says how to describe one
        assert task.labels == [] and "{label}" in task.extras["label_description"]
        task.use_labels(["negative", "neutral", "positive"], "test")
    assert task.name == name and task.kind == "choices"
    assert len(task.templates) >= 3
    assert len(task.labels) == len(task.verbalizers) == len(task.descriptions) >= 2
    # Generative models answer with one word; encoders compare inputs with whole sentences.
    assert all(w.isalpha() and w == w.lower() for w in task.verbalizers)
    assert all(len(d.split()) >= 4 and d.endswith(".") for d in task.descriptions)
    example = Example("x", {f: f"<{f}>" for f in task.input_fields})
    for t in task.templates:
        text = t.render(example, task.verbalizers)
        assert all(f"<{f}>" in text for f in t.fields() - {"choices"})


def test_sentiment_task_carries_the_seed_prompt():
    task = get_task("sentiment")
    assert SEED_PROMPT in [t.text for t in task.templates]
    assert task.labels == ["negative", "neutral", "positive"] and task.eval_split == "test"


def test_import_is_cheap():
    code = "import sys, promptlab.tasks; print('torch' in sys.modules, 'datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_unknown_task_suggests_the_close_name():
    with pytest.raises(ConfigError, match=r"unknown task 'sst-2'; did you mean 'sst2'\?"):
        get_task("sst-2")


def test_names_are_case_insensitive():
    assert get_task("SST2").name == "sst2"


# --- formats: good rows -----------------------------------------------------------------------


def test_glue_tsv_folder_and_single_file(tmp_path):
    write(tmp_path / "train.tsv", 'sentence\tlabel\na fine film \t1\nawful "quoted\t0\n')
    write(tmp_path / "dev.tsv", "sentence\tlabel\ngreat\t1\n")
    write(tmp_path / "test.tsv", "index\tsentence\n0\tno label here\n")  # GLUE test: no labels, skipped
    task = get_task("sst2")
    splits = task.splits(str(tmp_path))
    assert sorted(splits) == ["dev", "train"]
    first, second = splits["train"]
    assert (first.id, first.fields, first.label) == ("train-0", {"text": "a fine film"}, 1)
    assert second.fields["text"] == 'awful "quoted' and second.label == 0  # GLUE TSV is unquoted
    single = task.splits(str(tmp_path / "dev.tsv"))
    assert list(single) == ["dev"] and single["dev"][0].label == 1


def test_sst5_folder(tmp_path):
    write(tmp_path / "stsa.fine.train", "4 a masterpiece .\n0 dreadful .\n")
    write(tmp_path / "stsa.fine.dev", "2 it exists .\n")
    task = get_task("sst5")
    splits = task.splits(str(tmp_path))
    assert sorted(splits) == ["dev", "train"]
    assert [task.labels[e.label] for e in splits["train"]] == ["very positive", "very negative"]
    assert splits["dev"][0].fields == {"text": "it exists ."}


def test_tweeteval_folder_uses_mapping(tmp_path):
    write(tmp_path / "val_text.txt", "love it \nmeh\u2028still one line\nhate it\n")
    write(tmp_path / "val_labels.txt", "2\n1\n0\n")
    write(tmp_path / "mapping.txt", "0\tnegative\n1\tneutral\n2\tpositive\n")
    task = get_task("tweeteval-sentiment")
    splits = task.splits(str(tmp_path))
    assert list(splits) == ["val"]
    assert [task.labels[e.label] for e in splits["val"]] == ["positive", "neutral", "negative"]
    assert splits["val"][1].fields["text"] == "meh\u2028still one line" and splits["val"][1].id == "val-1"


def test_tweeteval_follows_its_own_protocol_when_all_splits_are_there(tmp_path):
    """Report on test, select on val, train on train; a folder with only val is carved (as ../shared/data's)."""
    from promptlab.config import RunConfig
    from promptlab.splits import resolve

    write(tmp_path / "mapping.txt", "0\tnegative\n1\tneutral\n2\tpositive\n")
    for split, n in (("train", 30), ("val", 10), ("test", 12)):
        write(tmp_path / f"{split}_text.txt", "".join(f"{split} tweet {i}\n" for i in range(n)))
        write(tmp_path / f"{split}_labels.txt", "".join(f"{i % 3}\n" for i in range(n)))
    task = get_task("tweeteval-sentiment")
    data = resolve(task, task.splits(str(tmp_path)), RunConfig(task=task.name))
    assert data.info["eval_split"] == "test" and data.info["dev"]["from"] == "val" and "carve" not in data.info
    assert len(data.eval) == 12 and len(data.train) == 30
    for split in ("train", "test"):
        for suffix in ("text", "labels"):
            (tmp_path / f"{split}_{suffix}.txt").unlink()
    data = resolve(task, task.splits(str(tmp_path)), RunConfig(task=task.name))
    assert data.info["eval_split"] == "val" and data.info["carve"]["from"] == "val"


def test_tweeteval_label_names_and_order_come_from_the_datas_mapping(tmp_path):
    write(tmp_path / "val_text.txt", "a\nb\n")
    write(tmp_path / "val_labels.txt", "0\n2\n")
    write(tmp_path / "mapping.txt", "2\tnegative\n0\tpositive\n1\tneutral\n")  # another order than usual
    task = get_task("tweeteval-sentiment")
    splits = task.splits(str(tmp_path))
    assert task.labels == ["positive", "neutral", "negative"]  # id order, names as the data writes them
    assert task.descriptions[0].startswith("A positive tweet") and task.verbalizers == task.labels
    assert task.descriptions == [f"A {n} tweet: the feeling the writer expresses is {n}." for n in task.labels]
    assert [task.labels[e.label] for e in splits["val"]] == ["positive", "negative"]
    write(tmp_path / "mapping.txt", "0\tnegative\n1\tmixed\n2\tpositive\n")  # names are used as the data gives them
    task = get_task("tweeteval-sentiment")
    task.splits(str(tmp_path))
    assert task.labels == ["negative", "mixed", "positive"] and task.descriptions[1].startswith("A mixed tweet")
    write(tmp_path / "mapping.txt", "0\tnegative\n")
    with pytest.raises(DataError, match=r"mapping\.txt names 1 label\(s\) .* needs at least two"):
        get_task("tweeteval-sentiment").splits(str(tmp_path))
    (tmp_path / "mapping.txt").unlink()
    with pytest.raises(DataError, match=r"mapping\.txt is missing; task 'tweeteval-sentiment' reads its label names"):
        get_task("tweeteval-sentiment").splits(str(tmp_path))


def test_a_labels_from_task_without_data_says_to_pass_it():
    from promptlab.methods.readout import Readout
    from promptlab.tasks import artifact_task

    with pytest.raises(ConfigError, match=r"reads its label names from its data; pass --data"):
        Readout(backbone=None, task=get_task("tweeteval-sentiment"))
    # an artifact records its labels: that is enough to use it without the data
    task = artifact_task({"task": "tweeteval-sentiment", "labels": ["negative", "neutral", "positive"]})
    assert task.labels == ["negative", "neutral", "positive"] and len(task.descriptions) == 3


def test_superglue_folder_splits_and_boolean_labels(tmp_path):
    rows = [
        {"question": "is it", "passage": "P", "idx": 7, "label": True},
        {"question": "is not", "passage": "Q", "idx": 8, "label": False},
    ]
    jsonl(tmp_path / "val.jsonl", rows)
    jsonl(tmp_path / "fewglue" / "train.jsonl", rows[:1])
    jsonl(tmp_path / "fewglue" / "dev32.jsonl", rows[1:])
    jsonl(tmp_path / "test.jsonl", [{"question": "q", "passage": "p", "idx": 0}])  # unlabelled: dropped
    task = get_task("boolq")
    splits = task.splits(str(tmp_path))
    assert sorted(splits) == ["dev32", "train", "val"]
    assert [(e.id, task.labels[e.label]) for e in splits["val"]] == [("7", "true"), ("8", "false")]
    assert splits["val"][0].fields == {"question": "is it", "passage": "P"}
    # A full train.jsonl wins over the few-shot one.
    jsonl(tmp_path / "train.jsonl", rows)
    assert len(task.splits(str(tmp_path))["train"]) == 2


def test_superglue_string_labels(tmp_path):
    jsonl(tmp_path / "val.jsonl", [{"premise": "P", "hypothesis": "H", "label": "neutral", "idx": 0}])
    task = get_task("cb")
    assert task.labels[task.splits(str(tmp_path))["val"][0].label] == "neutral"


def test_ag_news_csv_joins_title_and_unescapes(tmp_path):
    write(
        tmp_path / "test.csv",
        '"3","Oil prices rise","Crude jumped\\again on Monday, traders said it #39;s  #36;50 a barrel."\n'
        '"2","Win!","The team won ""easily""."\n',
    )
    task = get_task("ag-news")
    [first, second] = task.splits(str(tmp_path))["test"]
    assert task.labels[first.label] == "Business" and task.labels[second.label] == "Sports"
    assert first.fields == {
        "text": "Oil prices rise. Crude jumped again on Monday, traders said it's $50 a barrel."
    }
    assert second.fields["text"] == 'Win! The team won "easily".'
    assert first.id == "test-0"


def test_user_jsonl_spec_end_to_end(tmp_path):
    spec = user_spec(tmp_path)
    data = tmp_path / "data"
    jsonl(
        data / "train.jsonl", [{"body": "meh", "stars": "bad", "source": "web"}, {"body": "yay", "stars": 1}]
    )
    jsonl(data / "dev.jsonl", [{"id": "r9", "body": "ok", "stars": "GOOD"}])
    task = get_task(str(spec))
    splits = task.splits(str(data))
    assert sorted(splits) == ["dev", "train"]
    assert [e.label for e in splits["train"]] == [0, 1]
    assert splits["train"][0].meta == {"source": "web"}
    assert splits["dev"][0].id == "r9"
    assert task.template("b").render(splits["dev"][0], task.verbalizers) == "ok It was bad or good?"


def test_user_csv_spec_single_file(tmp_path):
    spec = user_spec(tmp_path, format="csv")
    data = write(tmp_path / "dev.csv", 'body,stars\n"good, really",good\n"bad\nand long",bad\n')
    splits = get_task(str(spec)).splits(str(data))
    assert [(e.fields["text"], e.label) for e in splits["dev"]] == [("good, really", 1), ("bad\nand long", 0)]


def test_user_spec_default_data_is_relative_to_the_spec(tmp_path):
    jsonl(tmp_path / "mydata" / "dev.jsonl", [{"body": "fine", "stars": "good"}])
    task = get_task(str(user_spec(tmp_path, default_data="mydata")))
    assert len(task.splits()["dev"]) == 1


def test_text_task_answers_string_or_list(tmp_path):
    spec = user_spec(
        tmp_path,
        kind="text",
        labels=None,
        verbalizers=None,
        descriptions=None,
        label_column=None,
        columns=None,
        metrics=["em", "f1"],
        templates=[{"name": "a", "text": "Q: {text}"}, {"name": "b", "text": "{text}?"}],
    )
    jsonl(
        tmp_path / "dev.jsonl",
        [{"text": "capital of France", "answer": "Paris"}, {"text": "two primes", "answer": ["2", "3"]}],
    )
    splits = get_task(str(spec)).splits(str(tmp_path / "dev.jsonl"))
    assert [e.answers for e in splits["dev"]] == [("Paris",), ("2", "3")]


def test_bom_is_tolerated(tmp_path):
    spec = user_spec(tmp_path, format="csv")
    write(tmp_path / "dev.csv", "\ufeffbody,stars\nnice,good\n".encode())
    write(tmp_path / "j" / "dev.jsonl", '\ufeff{"body": "nice", "stars": "good"}\n'.encode())
    assert get_task(str(spec)).splits(str(tmp_path / "dev.csv"))["dev"][0].label == 1
    task = get_task(str(user_spec(tmp_path)))
    assert task.splits(str(tmp_path / "j"))["dev"][0].fields == {"text": "nice"}


def test_hub_rows_map_like_local_files(monkeypatch):
    """validation -> the task's eval split; unlabelled (-1) hub test rows are left out."""
    fake = types.ModuleType("datasets")
    calls = []

    def load_dataset(**kwargs):
        calls.append(kwargs)
        return {
            "train": [{"sentence": "good", "label": 1, "idx": 0}],
            "validation": [{"sentence": "bad", "label": 0, "idx": 0}],
            "test": [{"sentence": "?", "label": -1, "idx": 0}],
        }

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    splits = get_task("sst2").splits()
    assert calls == [{"path": "nyu-mll/glue", "name": "sst2"}]
    assert sorted(splits) == ["dev", "train"] and splits["dev"][0].label == 0


def test_hub_unreachable_says_pass_data(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "datasets" in sys.modules:  # already imported: its config read the environment at import time
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(
        DataError, match=r"task 'sst2' has no local data and the hub is unreachable .*pass --data PATH"
    ):
        get_task("sst2").splits()


# --- bad input: one line naming file, line and field ------------------------------------------


@pytest.fixture
def reviews(tmp_path):
    return get_task(str(user_spec(tmp_path)))


def fails(task, path: Path, pattern: str) -> str:
    with pytest.raises(DataError, match=pattern) as e:
        task.splits(str(path))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_malformed_json_line_names_the_line(reviews, tmp_path):
    f = write(tmp_path / "dev.jsonl", '{"body": "a", "stars": "good"}\n\n{"body": "b", "stars": \n')
    fails(reviews, f, r"dev\.jsonl:3: malformed JSON")


def test_json_line_that_is_not_an_object(reviews, tmp_path):
    fails(reviews, write(tmp_path / "dev.jsonl", '["body"]\n'), r"dev\.jsonl:1: expected a JSON object")


def test_csv_row_with_wrong_column_count(tmp_path):
    task = get_task(str(user_spec(tmp_path, format="csv")))
    f = write(tmp_path / "dev.csv", "body,stars\nfine,good\ntoo,many,cells\n")
    fails(task, f, r"dev\.csv:3: 3 columns, expected 2")


def test_tsv_row_with_wrong_column_count(tmp_path):
    f = write(tmp_path / "dev.tsv", "sentence\tlabel\nok\t1\nno label\n")
    fails(get_task("sst2"), f, r"dev\.tsv:3: 1 columns, expected 2")


def test_missing_field_names_file_line_and_field(reviews, tmp_path):
    f = jsonl(tmp_path / "dev.jsonl", [{"body": "a", "stars": "good"}, {"text": "b", "stars": "bad"}])
    fails(reviews, f, r"dev\.jsonl:2: row has no 'body' field")


def test_missing_label_names_the_label_column(reviews, tmp_path):
    f = jsonl(tmp_path / "dev.jsonl", [{"body": "a"}])
    fails(reviews, f, r"dev\.jsonl:1: row has no 'stars' field \(the label\)")


def test_unknown_label_names_file_and_line(reviews, tmp_path):
    f = jsonl(tmp_path / "dev.jsonl", [{"body": "a", "stars": "good"}, {"body": "b", "stars": "meh"}])
    fails(reviews, f, r"dev\.jsonl:2: label 'meh' is not one of task 'reviews' labels")


def test_unknown_label_in_sst5_line(tmp_path):
    f = write(tmp_path / "stsa.fine.dev", "1 fine .\n7 off the scale .\n")
    fails(get_task("sst5"), f, r"stsa\.fine\.dev:2: label '7'")


def test_empty_file_and_header_only_file(reviews, tmp_path):
    fails(reviews, write(tmp_path / "dev.jsonl", "\n  \n"), r"dev\.jsonl: file is empty")
    csv_task = get_task(str(user_spec(tmp_path, format="csv")))
    fails(
        csv_task,
        write(tmp_path / "dev.csv", "body,stars\n"),
        r"dev\.csv: no rows; split 'dev' would be empty",
    )


def test_missing_path_and_missing_expected_files(reviews, tmp_path):
    fails(reviews, tmp_path / "nope", r"nope: no such file or folder; expected a \.jsonl file")
    (tmp_path / "empty").mkdir()
    fails(get_task("boolq"), tmp_path / "empty", r"empty: no data files found; expected a SuperGLUE folder")
    spec = user_spec(tmp_path, files={"train": "train.jsonl", "dev": "dev.jsonl"})
    jsonl(tmp_path / "d" / "train.jsonl", [{"body": "a", "stars": "good"}])
    fails(
        get_task(str(spec)),
        tmp_path / "d",
        r"missing dev\.jsonl; task 'reviews' expects train\.jsonl, dev\.jsonl",
    )


def test_invalid_utf8_names_the_line(reviews, tmp_path):
    f = write(
        tmp_path / "dev.jsonl", b'{"body": "a", "stars": "good"}\n{"body": "caf\xe9", "stars": "good"}\n'
    )
    fails(reviews, f, r"dev\.jsonl:2: not valid UTF-8")


def test_tweeteval_line_count_mismatch_names_both_files(tmp_path):
    write(tmp_path / "val_text.txt", "a\nb\nc\n")
    write(tmp_path / "val_labels.txt", "0\n1\n")
    write(tmp_path / "mapping.txt", "0\tnegative\n1\tneutral\n")
    fails(get_task("tweeteval-sentiment"), tmp_path, r"val_text\.txt has 3 lines but .*val_labels\.txt has 2")


def test_unknown_yaml_key_is_rejected_naming_key_and_file(tmp_path):
    spec = user_spec(tmp_path, templtes=[])
    with pytest.raises(
        ConfigError, match=r"reviews\.yaml: unknown task spec key 'templtes'; did you mean 'templates'"
    ):
        get_task(str(spec))


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"kind": "choice"}, r"unknown kind 'choice'; did you mean 'choices'"),
        ({"format": "jsnol"}, r"unknown format 'jsnol'; did you mean 'jsonl'"),
        ({"verbalizers": [False, True]}, r"read by YAML as a boolean; quote it"),
        ({"descriptions": ["one"]}, r"'descriptions' has 1 entries but 'labels' has 2"),
        (
            {"templates": [{"name": "a", "text": "{txt}"}, {"name": "b", "text": "{text}"}]},
            r"unknown fields \['txt'\]",
        ),
        ({"columns": {"body": "text"}}, r"'columns' maps \['body'\], which are not in 'fields'"),
        ({"eval_split": None}, r"missing required key 'eval_split'"),
        ({"context": "no_such_hook"}, r"'context' names no module"),
        ({"max_new_tokens": 0}, r"'max_new_tokens' must be a positive integer"),
        ({"labels_from": "mapping.txt"}, r"'labels_from' takes 'data' \(the format's reader finds the names\)"),
        ({"labels_from": "data"}, r"'labels_from' replaces 'labels' in a choices task of format tweeteval"),
    ],
)
def test_invalid_specs_fail_at_load(tmp_path, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        get_task(str(user_spec(tmp_path, **overrides)))
    assert str(e.value).startswith(str(tmp_path / "reviews.yaml"))


def test_missing_spec_file(tmp_path):
    with pytest.raises(DataError, match="task spec file not found"):
        get_task(str(tmp_path / "nope.yaml"))


# --- bundled and real data ---------------------------------------------------------------------


def test_bundled_sentiment_loads():
    if not (BUNDLED / "sentiment" / "test.jsonl").is_file():
        pytest.skip("bundled sentiment data not written yet")
    task = get_task("sentiment")
    splits = task.splits()
    assert sorted(splits) == ["dev", "test", "train"]
    assert sum(map(len, splits.values())) >= 900
    for rows in splits.values():
        counts = labels_of(task, rows)
        assert set(counts) == set(task.labels) and max(counts.values()) - min(counts.values()) <= 2
    ids = [e.id for rows in splits.values() for e in rows]
    assert len(set(ids)) == len(ids)


def real(name: str) -> str:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return str(path)


def test_real_sst2():
    task = get_task("sst2")
    splits = task.splits(real("sst2"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 67349, "dev": 872}
    assert labels_of(task, splits["dev"]) == {"negative": 428, "positive": 444}
    assert labels_of(task, splits["train"])["negative"] == 29780


def test_real_sst5():
    task = get_task("sst5")
    splits = task.splits(real("sst5"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 8544, "dev": 1101}
    assert [labels_of(task, splits["dev"])[label] for label in task.labels] == [139, 289, 229, 279, 165]


def test_real_tweeteval():
    task = get_task("tweeteval-sentiment")
    splits = task.splits(real("tweeteval_sentiment"))
    assert list(splits) == ["val"] and len(splits["val"]) == 2000
    assert labels_of(task, splits["val"]) == {"negative": 312, "neutral": 869, "positive": 819}


@pytest.mark.parametrize(
    "name, folder, val, counts",
    [
        ("boolq", "boolq", 3270, {"true": 2033, "false": 1237}),
        ("rte", "rte", 277, {"entailment": 146, "not_entailment": 131}),
        ("cb", "cb", 56, {"entailment": 23, "contradiction": 28, "neutral": 5}),
    ],
)
def test_real_superglue(name, folder, val, counts):
    task = get_task(name)
    splits = task.splits(real(folder))
    assert {k: len(v) for k, v in splits.items()} == {"val": val, "train": 32, "dev32": 32}
    assert labels_of(task, splits["val"]) == counts
    assert len({e.id for e in splits["val"]}) == val


def test_real_ag_news():
    task = get_task("ag-news")
    rows = task.splits(real("ag_news"))["test"]
    assert len(rows) == 7600
    assert set(labels_of(task, rows).values()) == {1900}
    assert not any("\\" in e.fields["text"] or " #39;" in e.fields["text"] for e in rows)


def test_only_unlabelled_test_file_is_an_error(tmp_path):
    f = write(tmp_path / "test.tsv", "index\tsentence\n0\tno label here\n")
    fails(get_task("sst2"), f, r"test\.tsv: no labelled split found for task 'sst2'")


def test_two_files_for_one_split_is_an_error(reviews, tmp_path):
    jsonl(tmp_path / "train.jsonl", [{"body": "a", "stars": "good"}])
    jsonl(tmp_path / "train_full.jsonl", [{"body": "a", "stars": "good"}])
    fails(reviews, tmp_path, r"train\.jsonl and train_full\.jsonl are both split 'train'")


def test_invalid_yaml_names_the_line(tmp_path):
    spec = write(tmp_path / "bad.yaml", "name: x\nfields: [text\nkind: choices\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        get_task(str(spec))


def test_one_template_is_a_task_and_none_is_refused(tmp_path):
    """Soft-prompt users write only the bare input (README, "Your own data"); a spec without any template is one
    line that shows the bare one."""
    task = get_task(str(user_spec(tmp_path, templates=[{"name": "bare", "text": "{text}"}])))
    assert [t.name for t in task.templates] == ["bare"] and task.template(None).text == "{text}"
    with pytest.raises(ConfigError, match=r"needs at least one template; .*\{name: bare, text: '\{text\}'\}"):
        get_task(str(user_spec(tmp_path, templates=[])))
