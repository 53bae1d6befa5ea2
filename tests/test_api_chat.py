"""Hard prompts on an API model's /v1/chat/completions (`--api-endpoint chat`): the request carries a real
conversation — `--system-prompt` as the system message, each demonstration as a user message and the assistant's
answer, the input last — recorded by a small fake server; end to end against promptlab's own server (its
/v1/chat/completions renders the messages as `role: content` lines for a model without a template), where cot's
reasoning is the model's own greedy continuation of that text; reruns and `eval --prompt` served from the cache."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from test_api_model import completions_served, read_run, served  # noqa: F401 — served: the module's fixture

from promptlab.backbones import load_backbone
from promptlab.methods.hard import COT_ASK, COT_TRIGGER, example_from_json
from promptlab.tasks import get_task
from promptlab.tasks.base import Template

pytest.importorskip("openai")

LABELS = get_task("sentiment").verbalizers
ASK = f"\n\nAnswer with one of: {', '.join(LABELS)}."  # what a chat endpoint's choice matching appends
REASON = "It sounds happy."


class Recorder(BaseHTTPRequestHandler):
    """/v1/chat/completions: records each body; answers REASON to cot's trigger, else 'Positive.'."""

    bodies: ClassVar[list[dict]] = []
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.bodies.append(body)
        text = REASON if body["messages"][-1]["content"].endswith(COT_TRIGGER) else "Positive."
        out = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 5, "completion_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    thread.join(10)


def chat_eval(run_cli, url: str, out: Path, *extra) -> tuple[int, str]:
    Recorder.bodies.clear()
    code, _, err = run_cli("eval", "--model", f"openai:gpt-4o-mini@{url}", "--api-endpoint", "chat", "--task",
                           "sentiment", "--limit", "2", "--api-concurrency", "1", "--api-cache", out.parent / "cache",
                           "--out", out, *extra)
    return code, err


def user_text(row: dict) -> str:
    """The example's rendered input: the last user turn of the run's recorded conversation."""
    last = row["input"].rsplit("\nuser: ", 1)[-1] if "\nuser: " in row["input"] else row["input"][len("user: "):]
    return last.removesuffix("\nassistant:")


def test_zero_shot_sends_the_input_as_the_one_user_message(recorder, run_cli, tmp_path):
    code, err = chat_eval(run_cli, recorder, tmp_path / "run", "--method", "zero-shot")
    assert code == 0, err
    metrics, rows = read_run(tmp_path / "run")
    assert [b["messages"] for b in Recorder.bodies] == [[{"role": "user", "content": user_text(r) + ASK}]
                                                        for r in rows]
    assert user_text(rows[0]).startswith("Classify the sentiment")
    assert metrics["api"]["chat_messages"] is True and metrics["api"]["endpoint"] == "/v1/chat/completions"
    assert [r["prediction"] for r in rows] == ["positive", "positive"]


def test_few_shot_sends_system_and_demonstrations_as_turns(recorder, run_cli, tmp_path):
    system = "You label the sentiment of film reviews."
    code, err = chat_eval(run_cli, recorder, tmp_path / "run", "--method", "few-shot", "--shots", "1",
                          "--system-prompt", system)
    assert code == 0, err
    metrics, rows = read_run(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "artifact" / "promptlab.json").read_text())
    assert meta["extras"]["chat"] == {"template": True, "system_prompt": system, "kwargs": {}, "messages": True}
    template = Template(meta["template"]["name"], meta["template"]["text"])
    demos = [example_from_json(d) for d in meta["extras"]["demos"]]
    assert len(demos) == len(LABELS)  # one per class
    turns = [{"role": "system", "content": system}]
    for d in demos:
        turns += [{"role": "user", "content": template.render(d, LABELS)}, {"role": "assistant",
                                                                            "content": LABELS[d.label]}]
    want = [turns + [{"role": "user", "content": user_text(r) + ASK}] for r in rows]
    assert [b["messages"] for b in Recorder.bodies] == want
    assert metrics["api"]["chat_messages"] is True
    # a rerun sends nothing: the cache keys on the whole body, messages included
    code, err = chat_eval(run_cli, recorder, tmp_path / "again", "--method", "few-shot", "--shots", "1",
                          "--system-prompt", system)
    assert code == 0, err
    assert Recorder.bodies == [] and read_run(tmp_path / "again")[1] == rows
    # another system prompt is another request
    code, err = chat_eval(run_cli, recorder, tmp_path / "other", "--method", "few-shot", "--shots", "1",
                          "--system-prompt", "Be terse.")
    assert code == 0, err
    assert [b["messages"][0]["content"] for b in Recorder.bodies] == ["Be terse."] * 2
    # eval --prompt sends the same messages again (to /v1/chat/completions, without being told): all cached
    code, err = chat_eval(run_cli, recorder, tmp_path / "reeval", "--prompt", tmp_path / "run")
    assert code == 0, err
    assert Recorder.bodies == [] and read_run(tmp_path / "reeval")[1] == rows


def test_cot_reasons_as_the_assistant_then_answers_a_second_user_turn(recorder, run_cli, tmp_path):
    code, err = chat_eval(run_cli, recorder, tmp_path / "run", "--method", "cot")
    assert code == 0, err
    _, rows = read_run(tmp_path / "run")
    bodies = Recorder.bodies
    assert len(bodies) == 4
    for r in rows:
        asked = {"role": "user", "content": f"{r['input'].split(chr(10))[0][len('user: '):]}\n\n{COT_TRIGGER}"}
        assert {"messages": [asked]} in [{"messages": b["messages"]} for b in bodies]
        assert [asked, {"role": "assistant", "content": REASON}, {"role": "user", "content": COT_ASK + ASK}] in [
            b["messages"] for b in bodies]
        assert r["input"].endswith(f"assistant: {REASON}\nuser: {COT_ASK}\nassistant:")


def test_prompt_search_scores_every_candidate_as_a_conversation(recorder, run_cli, tmp_path):
    code, err = chat_eval(run_cli, recorder, tmp_path / "run", "--method", "prompt-search", "--candidates", "6",
                          "--search-size", "4", "--shots", "1", "--system-prompt", "S.")
    assert code == 0, err
    sent = [b["messages"] for b in Recorder.bodies]
    assert len(sent) > 2 and all(m[0] == {"role": "system", "content": "S."} for m in sent)
    assert all(m[-1]["role"] == "user" and m[-1]["content"].endswith(ASK) for m in sent)
    assert any(turn["role"] == "assistant" for m in sent for turn in m)  # candidates with demonstrations
    assert read_run(tmp_path / "run")[0]["method_info"]["evaluated"] == 6


@pytest.mark.parametrize("extra, fragments", [
    (["--system-prompt", "Be brief."], ["--system-prompt on an API model needs messages", "--api-endpoint chat"]),
    (["--api-endpoint", "chat", "--chat-template", "on"], ["--chat-template on", "server applies its own"]),
    (["--api-endpoint", "chat", "--chat-template-kwargs", "{}"], ["--chat-template-kwargs", "drop the flag"]),
])
def test_chat_settings_the_endpoint_cannot_take_are_one_line(recorder, run_cli, tmp_path, extra, fragments):
    Recorder.bodies.clear()
    code, _, err = run_cli("eval", "--model", f"openai:m@{recorder}", "--task", "sentiment", "--method", "few-shot",
                           "--limit", "2", "--api-cache", "off", "--out", tmp_path / "run", *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(f in err for f in fragments), err
    assert Recorder.bodies == [] and not (tmp_path / "run").exists()


def test_a_chat_artifact_on_the_completions_endpoint_is_one_line(recorder, run_cli, tmp_path):
    assert chat_eval(run_cli, recorder, tmp_path / "run", "--method", "zero-shot")[0] == 0
    code, _, err = run_cli("eval", "--prompt", tmp_path / "run", "--api-endpoint", "completions", "--api-cache", "off",
                           "--out", tmp_path / "again")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "made as chat messages" in err and "--api-endpoint chat" in err


def test_cot_with_a_system_prompt_over_promptlabs_own_chat_endpoint(served, run_cli, tmp_path):  # noqa: F811
    url, model = served
    argv = ["eval", "--model", f"openai:{model}@{url}/v1", "--api-endpoint", "chat", "--task", "sentiment",
            "--method", "cot", "--limit", "2", "--system-prompt", "Think.", "--api-cache", tmp_path / "cache"]
    code, _, err = run_cli(*argv, "--out", tmp_path / "cot")
    assert code == 0, err
    metrics, rows = read_run(tmp_path / "cot")
    assert metrics["api"]["chat_messages"] is True and metrics["api"]["usage"]["requests"] == 4
    # the server rendered the conversation as `role: content` lines (the tiny model has no template) and
    # continued it greedily: the reasoning is the model's own continuation of that text, here
    first, reason = rows[0]["input"].split(f"{COT_TRIGGER}\nassistant: ", 1)
    assert first.startswith("system: Think.\nuser: Classify the sentiment")
    reason = reason.split(f"\nuser: {COT_ASK}")[0]
    assert reason.strip()  # the ASCII model writes visible text
    bb = load_backbone(str(model))
    assert bb.generate([f"{first}{COT_TRIGGER}\nassistant:"], 64) == [reason]
    before = completions_served(url)
    code, _, err = run_cli(*argv, "--out", tmp_path / "again")
    assert code == 0, err
    assert completions_served(url) == before and read_run(tmp_path / "again")[1] == rows
    code, _, err = run_cli("eval", "--prompt", tmp_path / "cot", "--limit", "2", "--api-cache", tmp_path / "cache", "--out",
                           tmp_path / "reeval")
    assert code == 0, err
    assert completions_served(url) == before and read_run(tmp_path / "reeval")[1] == rows
