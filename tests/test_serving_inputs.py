"""What `predict` and the server accept as input: text fields only (or HotpotQA's official context list, selected
as `eval` selects it), valid Unicode, bodies that are JSON and arrive in time; and `serve --data TASK=PATH`."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from test_hotpotqa import ITEMS
from test_serving import TOKEN, live_server, synth_artifact

from promptlab.backbones import load_backbone
from promptlab.config import RunConfig
from promptlab.errors import DataError
from promptlab.inputs import fit_inputs
from promptlab.methods import FitContext, get_method
from promptlab.pipeline import load_data
from promptlab.serving.app import Limits, create_app
from promptlab.serving.server import build_state
from promptlab.tasks import get_task
from promptlab.tasks.hotpotqa import load_hotpotqa

BAD_INPUTS = Path(__file__).resolve().parent / "bad_inputs" / "files"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def zs_state(tiny_models):
    def make(**limits):
        bb = load_backbone(str(tiny_models["causal"]))
        return build_state(bb, ["zs=zero-shot:sentiment"], Limits(**limits), token=TOKEN)
    return make


# -- HTTP bodies -------------------------------------------------------------------------------------------
def test_bodies_that_are_not_json_text_get_one_line_4xx(zs_state):
    """Used to be: invalid UTF-8 400 "There was an error parsing the body"; text/plain 422 "valid dictionary"; a lone
    surrogate 500 in plain text; an unknown field with a number "Input should be a valid string"; an empty text
    answered; a NUL byte in PUT's path 500."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(zs_state()), raise_server_exceptions=False) as c:
        def post(content: bytes, headers: dict | None = None):
            return c.post("/v1/predict", content=content, headers=JSON if headers is None else headers)

        cases = [
            (post(b'{"prompt": "zs", "inputs": [{"text": "caf\xe9"}]}'), 422, "not valid UTF-8 (byte 0xe9"),
            (post(b'{"prompt": "zs", "inputs": [{"text": "x"}]}', {"content-type": "text/plain"}), 415,
             "Content-Type 'text/plain'"),
            (post(b'{"prompt": "zs", "inputs": [{"text": "x"}]}', {}), 415, "no Content-Type"),
            (post(b'{"prompt": "zs", "inputs": [{"text": "a \\ud800 b"}]}'), 422,
             "inputs[0].text holds a lone surrogate (U+D800"),
            (post(b'{"prompt": "\\udfff", "inputs": [{"text": "x"}]}'), 422, "prompt holds a lone surrogate"),
            (post(b'{"prompt": "zs", "inputs": [{"text": "x", "extra": 3}]}'), 422, "inputs[0]: unknown field 'extra'"),
            (post(b'{"prompt": "zs", "inputs": [{"text": ""}]}'), 422, "inputs[0].text is empty"),
            (post(b'{"prompt": "zs", "inputs": [{"text": " \\n "}]}'), 422, "inputs[0].text is empty"),
            (post(b'{"prompt": "zs", "inputs": [{"text": {"a": 1}}]}'), 422, "inputs[0].text must be a string"),
            (post(b'{"prompt": "zs", "inputs": [{"text": ["a"]}]}'), 422, "got a list"),
            (c.put("/v1/prompts/x", json={"path": "runs/a\x00b"}, headers=AUTH), 422, "NUL byte"),
        ]
        for r, status, needle in cases:
            assert r.status_code == status, (needle, r.status_code, r.text)
            detail = r.json()["detail"]
            assert needle in detail and "\n" not in detail, (needle, detail)
        assert post(b'{"prompt": "zs", "inputs": [{"text": "caf\\u00e9 \\ud83d\\ude00"}]}').status_code == 200  # a pair
        assert post(b'{"prompt": "zs", "inputs": [{"text": "x"}]}', {"content-type": "application/json; charset=utf-8"}
                    ).status_code == 200
        assert not [s for s in c.get("/metrics").json()["requests"]["by_status"] if s.startswith("5")]


def test_input_too_long_reports_its_real_token_count(tiny_models, tmp_path):
    """The count in the 413 was capped at the tokenizer's max length (128), not what was sent."""
    from fastapi.testclient import TestClient

    art = synth_artifact(tiny_models["encoder"], tmp_path / "pt7", "prompt-tuning", 7, seed=1)
    bb = load_backbone(str(tiny_models["encoder"]))
    long = " ".join(["food"] * 200)
    real = len(bb.tokenizer([long], truncation=False)["input_ids"][0])
    assert real > 128
    with TestClient(create_app(build_state(bb, [f"pt7={art}"]))) as c:
        r = c.post("/v1/predict", json={"prompt": "pt7", "inputs": [{"text": long}]})
    assert r.status_code == 413 and f"inputs[0] is {real} tokens" in r.json()["detail"], r.text


def _raw_post(url: str, head_body: bytes, declared: int, rest: bytes = b"", pause: float = 0.0) -> bytes:
    """POST over a raw socket on 127.0.0.1: headers and the first bytes, an optional pause and the rest, then the
    reply read until it is whole or the server closes (each read bounded by the socket timeout)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % declared + head_body)
        if pause:
            time.sleep(pause)
        if rest:
            sock.sendall(rest)
        reply = b""
        for _ in range(100):
            head, sep, body = reply.partition(b"\r\n\r\n")
            length = next((int(h.split(b":")[1]) for h in head.lower().split(b"\r\n")
                           if h.startswith(b"content-length:")), None)
            if sep and length is not None and len(body) >= length:
                break
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def test_a_body_that_does_not_arrive_in_time_gets_408(zs_state):
    """A client sending part of its body and then nothing held the connection (and a request slot) open forever."""
    body = b'{"prompt": "zs", "inputs": [{"text": "a fine film"}]}'
    with live_server(create_app(zs_state(body_timeout_s=1.0))) as (url, _, _):
        t0 = time.time()
        reply = _raw_post(url, body[:10], len(body))
        took = time.time() - t0
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"connection: close" in reply.lower() and b"did not arrive within 1 s (10 bytes came)" in reply
        assert 0.9 <= took < 8
        reply = _raw_post(url, body[:10], len(body), rest=body[10:], pause=0.3)  # slow, but within the timeout
        assert reply.startswith(b"HTTP/1.1 200"), reply


# -- predict and the server: HotpotQA's context as its official list ---------------------------------------
def test_hotpotqa_context_list_is_selected_as_eval_selects_it(run_cli, tiny_models, tmp_path):
    """A context list became "context: [['T', ['s1']]]", and a context never went through fit_context outside eval."""
    from fastapi.testclient import TestClient

    item = ITEMS[0]
    (tmp_path / "dev.json").write_text(json.dumps([item]))
    (tmp_path / "in.jsonl").write_text(json.dumps({"question": item["question"], "context": item["context"]}) + "\n")
    code, out, err = run_cli("predict", "--task", "hotpotqa", "--method", "zero-shot", "--model", tiny_models["seq2seq"],
                             "--max-input-tokens", "200", "--input", tmp_path / "in.jsonl")
    assert code == 0, err
    row = json.loads(out)
    bb = load_backbone(str(tiny_models["seq2seq"]), max_length=200)
    task, cfg = get_task("hotpotqa"), RunConfig(task="hotpotqa", max_input_tokens=200)
    template = get_method("zero-shot").template_for(task, cfg, bb.kind)
    chosen, _ = fit_inputs(task, bb, template, cfg, load_hotpotqa(str(tmp_path / "dev.json"))["dev"],
                           new_tokens=task.max_new_tokens)
    assert row["input"] == template.render(chosen[0])
    assert "[[" not in row["input"] and len(row["input"]) < len(json.dumps(item["context"])) / 2  # selected

    state = build_state(bb, ["zs=zero-shot:hotpotqa"])  # its budget: the model's 200 tokens, as predict's
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/predict", json={"prompt": "zs", "inputs": [{"question": item["question"],
                                                                     "context": item["context"]}]})
        assert r.status_code == 200 and r.json()["predictions"][0]["text"] == row["prediction"], r.text
        r = c.post("/v1/predict", json={"prompt": "zs", "inputs": [{"question": "q", "context": [["T", "s1"]]}]})
        assert r.status_code == 422 and "inputs[0].context must be text or HotpotQA's context list" in r.json()["detail"]


def test_predict_refuses_a_lone_surrogate_in_a_text_argument(run_cli, tiny_models):
    """An undecodable byte in argv (surrogateescape) or a "\\ud800" escape: a traceback from the tokenizer."""
    code, _, err = run_cli("predict", "--task", "sentiment", "--method", "zero-shot", "--model", tiny_models["encoder"],
                           "fine", "bad \udcff byte")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "TEXT argument 2 holds a lone surrogate (U+DCFF" in err


# -- serve --data TASK=PATH --------------------------------------------------------------------------------
@pytest.fixture
def local_task(tmp_path) -> tuple[Path, Path]:
    spec = shutil.copy(BAD_INPUTS / "local-jsonl.yaml", tmp_path / "local-jsonl.yaml")
    rows = [{"id": f"r{i}", "text": f"{w} food number {i}", "label": lab}
            for i, (w, lab) in enumerate([("great", "pos"), ("awful", "neg")] * 20)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(spec), data


def test_serve_data_gives_hard_prompts_the_examples_eval_gives_them(tiny_models, local_task):
    """Few-shot demos came from the task's bundled data or the hub only; prompt-search could not be served."""
    from fastapi.testclient import TestClient

    spec, data = local_task
    bb = load_backbone(str(tiny_models["encoder"]))
    with pytest.raises(DataError, match="has no default data; pass --data"):
        build_state(bb, [f"fs=few-shot:{spec}"])
    state = build_state(bb, [f"fs=few-shot:{spec}", f"ps=prompt-search:{spec}"], token=TOKEN,
                        data={"local-jsonl": str(data)})
    task, cfg = get_task(str(spec)), RunConfig(task=str(spec), data=str(data))
    d = load_data(task, cfg)
    method = get_method("few-shot")
    want = method.fit(FitContext(bb, task, d.train, d.dev, cfg, method.template_for(task, cfg, bb.kind)))
    assert [x.id for x in state.prompts["fs"].predictor.demos] == [x.id for x in want.demos]
    assert state.prompts["ps"].predictor.extras["search"]["evaluated"] >= 1
    with TestClient(create_app(state)) as c:  # prompts loaded later read the same --data
        r = c.put("/v1/prompts/fs2", json={"path": f"few-shot:{spec}"}, headers=AUTH)
        assert r.status_code == 201, r.text
        assert c.post("/v1/predict", json={"prompt": "fs2", "inputs": [{"text": "great"}]}).status_code == 200


def test_serve_data_names_a_labels_from_data_task_s_labels(tiny_models, tmp_path):
    folder = tmp_path / "tweeteval"
    folder.mkdir()
    (folder / "val_text.txt").write_text("good day\nbad day\nmeh day\n")
    (folder / "val_labels.txt").write_text("2\n0\n1\n")
    (folder / "mapping.txt").write_text("0\tnegative\n1\tneutral\n2\tpositive\n")
    bb = load_backbone(str(tiny_models["encoder"]))
    with pytest.raises(Exception, match="reads its label names from its data"):
        build_state(bb, ["zs=zero-shot:tweeteval-sentiment"])
    state = build_state(bb, ["zs=zero-shot:tweeteval-sentiment"], data={"tweeteval-sentiment": str(folder)})
    assert state.prompts["zs"].describe()["labels"] == ["negative", "neutral", "positive"]


def test_serve_flag_errors_are_one_line(run_cli, tiny_models, tmp_path):
    base = ["serve", "--model", tiny_models["encoder"], "--prompt", "zs=zero-shot:sentiment", "--port", "0"]
    for extra, needle in ((["--data", "sst2"], "--data 'sst2' needs TASK=PATH"),
                          (["--data", f"sst2={tmp_path / 'missing'}"], "no such file or directory"),
                          (["--data", f"sst2={tmp_path}", "--data", f"sst2={tmp_path}"], "gives task 'sst2' twice"),
                          (["--data", f"sentimnet={tmp_path}"], "--data names task 'sentimnet'"),
                          (["--body-timeout", "0"], "--body-timeout must be more than 0")):
        code, _, err = run_cli(*base, *extra)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
