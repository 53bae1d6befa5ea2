"""Every endpoint under load and faults: 32 concurrent clients over /v1/predict, /v1/completions and
/v1/chat/completions (streamed and not), 10% malformed. No response is 5xx; every valid request is answered as
offline (the artifact's own predictor; greedy decoding by its definition, one full forward per token); malformed
ones get 4xx, OpenAI-shaped on the OpenAI routes. Clients that leave mid-stream or mid-request leave no rows behind
(/metrics), and SIGTERM lets the streams in flight finish while new requests are refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from test_serving import (
    _malformed,
    _wait_for,
    ascii_model,
    greedy_by_recomputing,
    live_server,
    synth_artifact,
)

from promptlab.backbones import load_backbone
from promptlab.methods import load_predictor
from promptlab.serving.app import Limits, create_app
from promptlab.serving.openai_api import render_chat
from promptlab.serving.server import build_state
from promptlab.tasks.base import Example

SENTENCES = ["the food was great and the staff were lovely", "terrible film", "ok",
             "the package arrived on tuesday", "service was slow but the food was great"]
QA = [{"question": "who was born in the city?", "context": "the hotel room was clean"}, {"question": "what", "context": "a"}]
CHATS = [[{"role": "user", "content": "hi"}],
         [{"role": "system", "content": "be brief"}, {"role": "user", "content": "who was born in the city?"}]]
MAX_TOKENS = 6
LIMITS = {"max_inputs": 8, "max_input_chars": 500, "max_batch": 32, "max_wait_ms": 5}
OPENAI_BAD = [  # (path, request kwargs, status, param); every body is {"error": {message, type, param, code}}
    ("/v1/completions", {"json": {"model": "nope", "prompt": "x"}}, 404, "model"),
    ("/v1/completions", {"json": {"model": "qa", "prompt": "x", "max_tokens": 5000}}, 400, "max_tokens"),
    ("/v1/completions", {"json": {"model": "qa", "prompt": "x", "n": 0}}, 400, "n"),
    ("/v1/completions", {"json": {"model": "qa", "prompt": "x", "stream": True, "logprobs": 9}}, 400, "logprobs"),
    ("/v1/completions", {"content": b'{"model": "qa", "prompt": ', "headers": {"content-type": "application/json"}},
     400, None),
    ("/v1/completions", {"json": {"model": "qa", "prompt": "y" * 600}}, 413, "prompt"),
    ("/v1/completions", {"json": {"model": "nope", "prompt": "x", "stream": True}}, 404, "model"),
    ("/v1/chat/completions", {"json": {"model": "qa", "messages": []}}, 400, "messages"),
    ("/v1/chat/completions", {"json": {"model": "pt", "messages": CHATS[0], "tools": []}}, 400, "tools"),
    ("/v1/chat/completions", {"json": {"model": "qa", "messages": CHATS[0], "stream": True, "top_logprobs": 2}},
     400, "top_logprobs"),
]


@pytest.fixture(scope="module")
def load_setup(tiny_models, tmp_path_factory):
    """An ASCII-only causal model (greedy text is visible and never stops early), a choice prompt, a QA prompt;
    every answer a valid request can get, computed offline."""
    root = tmp_path_factory.mktemp("load")
    model = ascii_model(tiny_models["causal"], root / "ascii-causal")
    art = {"pt": synth_artifact(model, root / "pt", "prompt-tuning", 4, seed=1),
           "pt7": synth_artifact(model, root / "pt7", "prompt-tuning", 7, seed=2),  # named by _malformed's cases
           "qa": synth_artifact(model, root / "qa", "prompt-tuning", 6, seed=5, task="hotpotqa", max_new_tokens=6)}
    bb = load_backbone(str(model))
    predict = {}
    for name, exs in (("pt", [Example(str(i), {"text": t}) for i, t in enumerate(SENTENCES)]),
                      ("qa", [Example(str(i), f) for i, f in enumerate(QA)])):
        preds = load_predictor(str(art[name]), bb).predict(exs)
        predict[name] = {json.dumps(ex.fields, sort_keys=True): p.prediction for ex, p in zip(exs, preds)}
    served = build_state(bb, [f"qa={art['qa']}", f"pt={art['pt']}"]).prompts  # the artifacts' prompt vectors
    greedy = {}
    with torch.inference_mode():
        for name in ("pt", "qa", bb.name):
            prompt = served[name].prompt if name in served else bb.model.get_input_embeddings().weight[:0]
            for text in SENTENCES + [render_chat(bb.tokenizer, m) for m in CHATS]:
                greedy[name, text] = bb.tokenizer.decode(greedy_by_recomputing(bb, prompt, text, MAX_TOKENS),
                                                         skip_special_tokens=True)
    return {"model": model, "art": art, "name": bb.name, "predict": predict, "greedy": greedy}


def make_state(setup, **limits):
    bb = load_backbone(str(setup["model"]))
    a = setup["art"]
    return build_state(bb, [f"pt={a['pt']}", f"pt7={a['pt7']}", f"qa={a['qa']}", "zs=zero-shot:sentiment"],
                       Limits(**{**LIMITS, **limits}))


def _plan(setup, n: int, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    models = ["pt", "qa", setup["name"]]
    plan: list[tuple] = []
    for i in range(n):
        k = rng.randint(1, MAX_TOKENS)
        if i % 10 == 3:  # 10% malformed, half on /v1/predict, half on the OpenAI routes
            if (i // 10) % 2:
                plan.append(("bad", "/v1/predict") + _malformed(rng, i // 20))
            else:
                plan.append(("bad",) + OPENAI_BAD[(i // 20) % len(OPENAI_BAD)])
            continue
        kind = ["predict", "complete", "complete-stream", "chat", "chat-stream", "complete-many"][i % 6]
        model = models[i % 3]
        if kind == "predict":
            name = ["pt", "qa", "pt"][i % 3]
            fields = rng.sample([{"text": t} for t in SENTENCES] if name == "pt" else QA, 1 + (i % 2))
            plan.append(("predict", name, fields))
        elif kind.startswith("complete"):
            texts = rng.sample(SENTENCES, 2 if kind == "complete-many" else 1)
            plan.append((kind, model, texts, k))
        else:
            plan.append((kind, model, rng.choice(CHATS), k))
    rng.shuffle(plan)
    return plan


async def _send(client: httpx.AsyncClient, item: tuple) -> tuple[int, object]:
    """(status, what came back): a JSON body, or for a stream the joined text per choice and the last finish_reason."""
    kind = item[0]
    if kind == "bad":
        r = await client.post(item[1], **item[2])
        return r.status_code, r.json()
    if kind == "predict":
        r = await client.post("/v1/predict", json={"prompt": item[1], "inputs": item[2]})
        return r.status_code, r.json()
    model, what, k = item[1], item[2], item[3]
    body = {"model": model, "max_tokens": k}
    chat = kind.startswith("chat")
    body.update({"messages": what} if chat else {"prompt": what})
    path = "/v1/chat/completions" if chat else "/v1/completions"
    if not kind.endswith("stream"):
        r = await client.post(path, json=body)
        return r.status_code, r.json()
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    async with client.stream("POST", path, json={**body, "stream": True}) as r:
        if r.status_code != 200:
            return r.status_code, json.loads(await r.aread())
        lines = [x async for x in r.aiter_lines() if x]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    for line in lines[:-1]:
        for ch in json.loads(line.removeprefix("data: "))["choices"]:
            piece = (ch["delta"].get("content") or "") if chat else ch["text"]
            texts[ch["index"]] = texts.get(ch["index"], "") + piece
            if ch["finish_reason"]:
                reasons[ch["index"]] = ch["finish_reason"]
    return 200, {"texts": [texts[i] for i in sorted(texts)], "reasons": [reasons[i] for i in sorted(reasons)]}


def _expected(setup, tok, item: tuple) -> list[str]:
    kind, model, what, k = item
    texts = [render_chat(tok, what)] if kind.startswith("chat") else what
    # greedy is a prefix property: the first k of MAX_TOKENS tokens; the ASCII model gives one character per token
    return [setup["greedy"][model, t][:k] for t in texts]


def _check(setup, tok, item: tuple, status: int, body) -> None:
    kind = item[0]
    if kind == "bad":
        path, _, want, param = item[1:5]
        assert status == want, (item, status, body)
        if path == "/v1/predict":
            assert param in body["detail"], (item, body)  # /v1/predict's own shape, as before
        else:
            assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["param"] == param, body
        return
    assert status == 200, (item, body)
    if kind == "predict":
        want = setup["predict"][item[1]]
        assert [p.get("label", p.get("text")) for p in body["predictions"]] == [
            want[json.dumps(f, sort_keys=True)] for f in item[2]], (item, body)
        return
    want = _expected(setup, tok, item)
    if kind.endswith("stream"):
        assert body["texts"] == want and body["reasons"] == ["length"] * len(want), (item, body)
    elif kind.startswith("chat"):
        assert [c["message"]["content"] for c in body["choices"]] == want, (item, body)
    else:
        assert [c["text"] for c in body["choices"]] == want, (item, body)


def _load(setup, n_requests: int, clients: int = 32) -> dict:
    state = make_state(setup)
    tok = state.backbone.tokenizer
    plan = _plan(setup, n_requests)
    outcomes: list = []

    async def worker(client, queue):
        while queue:
            item = queue.pop()
            outcomes.append((item, *await _send(client, item)))

    async def run(url):
        queue = list(plan)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=clients)) as c:
            await asyncio.wait_for(asyncio.gather(*(worker(c, queue) for _ in range(clients))), 900)

    t0 = time.perf_counter()
    with live_server(create_app(state)) as (url, _, _):
        asyncio.run(run(url))
        seconds = time.perf_counter() - t0
        metrics = httpx.get(f"{url}/metrics").json()
    assert len(outcomes) == n_requests
    assert not [o for o in outcomes if o[1] >= 500], [o for o in outcomes if o[1] >= 500][:3]
    for item, status, body in outcomes:
        _check(setup, tok, item, status, body)
    assert metrics["batches"]["mixed_batches"] > 0 and metrics["queue_depth"] == 0 and metrics["in_flight_inputs"] == 0
    by_kind: dict[str, int] = {}
    for item in plan:
        by_kind[item[0]] = by_kind.get(item[0], 0) + 1
    return {"seconds": seconds, "by_kind": by_kind, "metrics": metrics}


def test_load_every_endpoint_small(load_setup):
    _load(load_setup, n_requests=200)


@pytest.mark.slow
def test_load_every_endpoint_full(load_setup):
    """1,000 requests from 32 concurrent clients; PROMPTLAB_LOAD_RECORD=FILE writes the numbers bench/serving_load.md quotes."""
    out = _load(load_setup, n_requests=1000)
    m = out["metrics"]
    record = {"requests": 1000, "clients": 32, "seconds": round(out["seconds"], 1), "by_kind": out["by_kind"],
              "by_status": m["requests"]["by_status"], "batches": m["batches"]["count"],
              "mixed_batches": m["batches"]["mixed_batches"], "inputs_per_batch": m["batches"]["inputs"],
              "latency_ms": m["latency_ms"]}
    if os.environ.get("PROMPTLAB_LOAD_RECORD"):
        Path(os.environ["PROMPTLAB_LOAD_RECORD"]).write_text(json.dumps(record, indent=1) + "\n")


def test_clients_that_leave_mid_stream_free_their_rows(load_setup):
    """Streams dropped after their first chunk and requests abandoned while queued or computing: afterwards
    nothing is queued or computing, and the server answers a new request as offline."""
    state = make_state(load_setup, max_batch=4)
    body = {"model": "qa", "prompt": SENTENCES[0], "max_tokens": 400, "stream": True}

    async def leave_mid_stream(c):
        async with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    return  # one chunk read: hang up

    async def give_up(c):
        with pytest.raises(httpx.TimeoutException):
            await c.post("/v1/chat/completions", timeout=0.05,
                         json={"model": "pt", "messages": CHATS[1], "max_tokens": 400, "stream": True})

    async def run(url):
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            await asyncio.gather(*[leave_mid_stream(c) for _ in range(6)], *[give_up(c) for _ in range(6)])

    with live_server(create_app(state)) as (url, _, _):
        asyncio.run(run(url))
        metrics = lambda: httpx.get(f"{url}/metrics").json()
        _wait_for(lambda: metrics()["queue_depth"] == 0 and metrics()["in_flight_inputs"] == 0, 120)
        r = httpx.post(f"{url}/v1/completions", json={"model": "qa", "prompt": SENTENCES[0], "max_tokens": 6}, timeout=60)
        assert r.json()["choices"][0]["text"] == load_setup["greedy"]["qa", SENTENCES[0]]
        assert state.batcher.depth == 0 and state.batcher.in_flight == 0
        assert metrics()["requests"]["by_status"].get("500") is None


@pytest.mark.slow
def test_sigterm_drains_streams_in_flight(load_setup, tmp_path):
    """`promptlab serve` in a subprocess gets SIGTERM while streams are open: they finish (all their tokens, then
    [DONE]), a new connection is refused, and the process exits 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from promptlab.cli import main; sys.exit(main())",
                             "serve", "--model", str(load_setup["model"]), "--prompt", f"qa={load_setup['art']['qa']}",
                             "--port", str(port), "--max-wait-ms", "50", "--graceful-timeout", "120"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: proc.poll() is None and _up(url), 120)
        n_tokens, results = 300, []

        def stream(i):
            with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
                    "model": "qa", "prompt": SENTENCES[i], "max_tokens": n_tokens, "stream": True,
                    "stream_options": {"include_usage": True}}) as r:
                results.append((r.status_code, [x for x in r.iter_lines() if x]))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        _wait_for(lambda: httpx.get(f"{url}/metrics").json()["in_flight_inputs"] > 0, 60)  # computing
        proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: not _up(url), 30)  # no new connections from now on
        for t in threads:
            t.join(180)
        assert proc.wait(180) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(results) == 4
    for status, lines in results:
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2].removeprefix("data: "))["usage"]["completion_tokens"] == n_tokens


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
