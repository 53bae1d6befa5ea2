"""Serving: mixed-prompt batches equal each artifact's offline predictions; the soft-prompt KV cache equals
recomputing; the HTTP API answers bad input with 4xx that name the problem, never 5xx, under load too.

Artifacts: one prompt-tuning artifact per backbone kind is trained through the CLI; the others are written
by promptlab's own save path from freshly initialised PEFT prompts (random vectors are as good as trained
ones for an equality test, and take no training time).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from promptlab.backbones import load_backbone
from promptlab.cli import main
from promptlab.config import RunConfig
from promptlab.errors import ModelError
from promptlab.methods import get_method, load_predictor
from promptlab.methods.adapted import AdaptedPredictor
from promptlab.serving import Engine, Job, load_servable
from promptlab.serving.app import Limits, create_app
from promptlab.serving.engine import InputTooLong
from promptlab.serving.server import build_state
from promptlab.tasks import get_task
from promptlab.tasks.base import Example

TEXTS = ["the food was great and the staff were lovely", "terrible film", "the package arrived on tuesday",
         "i would not recommend this product", "ok", "service was slow but the food was great",
         "the hotel room was clean and quiet", "awful acting, boring plot, and far too long for what it was"]
QUESTIONS = [("who was born in the city?", "the hotel room was clean"), ("what", "a"),
             ("which country is the package from?", "the package arrived on tuesday from a city")]
TOKEN = "s3cret"


# -- artifacts -------------------------------------------------------------------------------------------
def synth_artifact(model_dir: Path, out: Path, method: str, n: int, seed: int, task: str = "sentiment",
                   max_new_tokens: int = 16) -> Path:
    """A promptlab artifact of `method` with random prompt parameters, written by Predictor.save."""
    from peft import get_peft_model

    bb = load_backbone(str(model_dir))
    m = get_method(method)
    t = get_task(task)
    peft_model = get_peft_model(bb.model, m.peft_config(bb, n))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in peft_model.prompt_encoder["default"].parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    pred = AdaptedPredictor(m.name, bb, t, m.template_for(t, RunConfig(), bb.kind), model=peft_model,
                            max_new_tokens=max_new_tokens)
    pred.extras["virtual_tokens"] = n
    pred.save(out)
    return out


def ascii_model(src: Path, out: Path) -> Path:
    """The tiny model with every non-ASCII byte and special token's embedding zeroed, so greedy decoding
    writes visible text (the random model would emit EOS or invalid UTF-8 bytes and decode to '')."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, ByT5Tokenizer

    cfg = AutoConfig.from_pretrained(src)
    cls = AutoModelForSeq2SeqLM if cfg.is_encoder_decoder else AutoModelForCausalLM
    model = cls.from_pretrained(src)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        emb[:3] = 0  # pad, eos, unk: never chosen, so every row generates max_new_tokens
        emb[3 + 128 :] = 0  # bytes >= 128 and extra ids
    model.save_pretrained(out)
    ByT5Tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def arts(tiny_models, tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("serving")
    out: dict[str, dict[str, Path]] = {}
    for kind, model in tiny_models.items():
        if kind == "causal":  # one artifact trained end to end through the CLI; the rest written directly
            run = root / f"{kind}-pt"
            assert main(["train", "--task", "sentiment", "--model", str(model), "--method", "prompt-tuning",
                         "--train-size", "16", "--epochs", "1", "--virtual-tokens", "4", "--limit", "8",
                         "--out", str(run)]) == 0
        else:
            run = synth_artifact(model, root / f"{kind}-pt", "prompt-tuning", 4, seed=0)
        out[kind] = {
            "pt": run,
            "pt7": synth_artifact(model, root / f"{kind}-pt7", "prompt-tuning", 7, seed=1),
            "ptune": synth_artifact(model, root / f"{kind}-ptune", "p-tuning", 5, seed=2),
            "hyb": synth_artifact(model, root / f"{kind}-hyb", "hybrid", 3, seed=3),
            "prefix": synth_artifact(model, root / f"{kind}-prefix", "prefix-tuning", 2, seed=4),
        }
    return out


@pytest.fixture(scope="module")
def gen_setup(tiny_models, tmp_path_factory) -> dict[str, tuple[Path, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("serving-gen")
    out = {}
    for kind in ("seq2seq", "causal"):
        model = ascii_model(tiny_models[kind], root / f"ascii-{kind}")
        out[kind] = (model, {
            "a": synth_artifact(model, root / f"{kind}-a", "prompt-tuning", 6, seed=5, task="hotpotqa", max_new_tokens=6),
            "b": synth_artifact(model, root / f"{kind}-b", "p-tuning", 3, seed=6, task="hotpotqa", max_new_tokens=9),
            "c": synth_artifact(model, root / f"{kind}-c", "hybrid", 4, seed=7, task="hotpotqa", max_new_tokens=4),
        })
    return out


def examples(texts: list[str]) -> list[Example]:
    return [Example(str(i), {"text": t}) for i, t in enumerate(texts)]


def qa_examples() -> list[Example]:
    return [Example(str(i), {"question": q, "context": c}) for i, (q, c) in enumerate(QUESTIONS)]


@torch.inference_mode()
def offline_logits(pred, bb, exs: list[Example]) -> torch.Tensor:
    """What the offline predictor ranks: the readout of the PEFT-wrapped (or plain) model."""
    inputs = pred.inputs(exs)
    model = getattr(pred, "model", None) or bb.model
    if bb.kind == "encoder":
        return pred.readout.choice_logits(model, inputs)
    return bb.score_choices(inputs, pred.task.verbalizers, model, scoring=pred.scoring)


def serve_all(bb, art: dict[str, Path], engine: Engine) -> dict[str, object]:
    svs = {name: load_servable(name, str(path), bb) for name, path in art.items()}
    svs["zs"] = load_servable("zs", "zero-shot:sentiment", bb)
    if bb.kind == "encoder":  # class prototypes as anchors; generative few-shot is just a longer text
        svs["fs"] = load_servable("fs", "few-shot:sentiment", bb)
    for s in svs.values():
        engine.attach(s)
    return svs


# -- the engine --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
def test_mixed_batch_equals_offline_predict_of_each_artifact(tiny_models, arts, kind):
    bb = load_backbone(str(tiny_models[kind]))
    engine = Engine(bb, max_rows=1024)
    svs = serve_all(bb, arts[kind], engine)
    assert {n for n, s in svs.items() if not s.batchable} == {"prefix"}  # prefix tuning runs grouped
    jobs = [Job(s, examples(TEXTS[i:] + TEXTS[:i])) for i, s in enumerate(svs.values())]
    before = engine.forwards
    results = engine.run(jobs)
    # every input-level prompt (soft of lengths 7, 5, 4, 3 and hard of length 0) in ONE forward
    assert engine.forwards - before == 1
    for (name, s), job, res in zip(svs.items(), jobs, results):
        assert not isinstance(res, Exception), res
        pred = s.predictor or load_predictor(str(arts[kind][name]), bb)
        want = offline_logits(pred, bb, job.examples)
        got = torch.tensor([a.logits for a in res])
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (name, (got - want).abs().max())
        assert torch.allclose(torch.tensor([a.scores for a in res]), torch.softmax(want, -1), atol=1e-5)
        offline = pred.predict(job.examples)
        assert [a.prediction for a in res] == [p.prediction for p in offline], name
        assert all(abs(a.score - p.score) <= 1e-5 for a, p in zip(res, offline)), name
        assert [a.input for a in res] == [p.input for p in offline]


@torch.inference_mode()
def greedy_by_recomputing(bb, prompt: torch.Tensor, text: str, k: int) -> list[int]:
    """The definition of greedy decoding after a soft prompt: one full forward of [P, x, y<t] per token."""
    seq = bb.tokenizer(text, truncation=True, max_length=bb.max_length)["input_ids"]
    emb = bb.model.get_input_embeddings()
    out: list[int] = []
    for _ in range(k):
        logits = bb.model(inputs_embeds=torch.cat([prompt, emb(torch.tensor(seq + out))])[None]).logits
        out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_mixed_generation_equals_offline_generation(gen_setup, kind):
    model, art = gen_setup[kind]
    bb = load_backbone(str(model))
    engine = Engine(bb)
    svs = {n: load_servable(n, str(p), bb) for n, p in art.items()}
    svs["zs"] = load_servable("zs", "zero-shot:hotpotqa", bb)
    for s in svs.values():
        engine.attach(s)
    exs = qa_examples()
    before = engine.forwards
    results = engine.run([Job(s, exs) for s in svs.values()])
    assert engine.forwards - before == 1  # one generate() for the three soft prompts and the hard one
    for (name, s), res in zip(svs.items(), results):
        got = [a.prediction for a in res]
        assert all(len(a.tokens) == s.max_new_tokens for a in res)  # each prompt's own max_new_tokens
        if kind == "causal" and s.virtual_tokens:
            # PEFT's own generate() re-inserts a decoder-only soft prompt at every step under transformers 5;
            # both paths must equal greedy decoding by definition.
            want_tokens = [greedy_by_recomputing(bb, s.prompt, x, s.max_new_tokens) for x in s.render(exs)]
            assert [a.tokens for a in res] == want_tokens, name
        pred = s.predictor or load_predictor(str(art[name]), bb)
        want = [p.prediction for p in pred.predict(exs)]
        assert got == want, (name, got, want)
        assert any(got), "the ASCII model should generate visible text"
    assert len({tuple(a.prediction for a in r) for r in results}) > 1  # prompts steer the output


def test_kv_cache_equals_recomputing(tiny_models, arts, gen_setup, monkeypatch):
    bb = load_backbone(str(tiny_models["causal"]))
    cached, plain = Engine(bb, kv_cache=True), Engine(bb, kv_cache=False)
    assert cached.kv_cache and not plain.kv_cache
    calls = []
    real = Engine._prompt_kv
    monkeypatch.setattr(Engine, "_prompt_kv", lambda self, p: calls.append(p.shape) or real(self, p))
    svs_c = serve_all(bb, arts["causal"], cached)
    svs_p = serve_all(bb, arts["causal"], plain)
    assert all(s.kv is not None for n, s in svs_c.items() if s.batchable and s.virtual_tokens)
    assert len(calls) == 4  # once per soft prompt, at load
    for _ in range(2):  # reused across requests, never recomputed
        jobs_c = [Job(s, examples(TEXTS)) for s in svs_c.values()]
        jobs_p = [Job(s, examples(TEXTS)) for s in svs_p.values()]
        for rc, rp in zip(cached.run(jobs_c), plain.run(jobs_p)):
            assert torch.allclose(torch.tensor([a.logits for a in rc]), torch.tensor([a.logits for a in rp]),
                                  rtol=1e-5, atol=1e-5)
    assert len(calls) == 4
    # generation: the cached greedy loop against generate() over recomputed prompts
    model, art = gen_setup["causal"]
    gb = load_backbone(str(model))
    gc, gp = Engine(gb, kv_cache=True), Engine(gb, kv_cache=False)
    sc = [load_servable(n, str(p), gb) for n, p in art.items()] + [load_servable("zs", "zero-shot:hotpotqa", gb)]
    sp = [load_servable(n, str(p), gb) for n, p in art.items()] + [load_servable("zs", "zero-shot:hotpotqa", gb)]
    for a, b in zip(sc, sp):
        gc.attach(a)
        gp.attach(b)
    rc = gc.run([Job(s, qa_examples()) for s in sc])
    rp = gp.run([Job(s, qa_examples()) for s in sp])
    assert [[a.tokens for a in r] for r in rc] == [[a.tokens for a in r] for r in rp]


def test_predict_cli_goes_through_the_serving_engine(tiny_models, arts, run_cli, monkeypatch):
    runs = []
    real = Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, jobs: runs.append(len(jobs)) or real(self, jobs))
    code, out, err = run_cli("predict", "--prompt", arts["causal"]["pt"], "--model", tiny_models["causal"], *TEXTS[:3])
    assert code == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    assert runs and [r["input"] for r in rows] == TEXTS[:3]
    bb = load_backbone(str(tiny_models["causal"]))
    offline = load_predictor(str(arts["causal"]["pt"]), bb).predict(examples(TEXTS[:3]))
    assert [r["prediction"] for r in rows] == [p.prediction for p in offline]
    assert all(abs(r["score"] - p.score) <= 1e-5 for r, p in zip(rows, offline))


def test_artifacts_load_from_safetensors_only_and_for_their_backbone(tiny_models, arts, tmp_path):
    bb = load_backbone(str(tiny_models["causal"]))
    with pytest.raises(ModelError, match="kind=encoder.*kind=causal"):
        build_state(bb, [f"x={arts['encoder']['pt7']}"])
    pickled = shutil.copytree(arts["causal"]["pt7"], tmp_path / "pickled")
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelError, match="pickle"):
        build_state(bb, [f"x={pickled}"])
    no_st = shutil.copytree(arts["causal"]["pt7"], tmp_path / "no-safetensors")
    (no_st / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="safetensors"):
        build_state(bb, [f"x={no_st}"])


def test_inputs_that_overflow_the_model_with_their_prompt_are_refused(tiny_models, arts):
    from fastapi.testclient import TestClient

    bb = load_backbone(str(tiny_models["encoder"]))  # 128 positions, and the tokenizer truncates at 128
    long = " ".join(["food"] * 200)
    state = build_state(bb, [f"pt7={arts['encoder']['pt7']}", "zs=zero-shot:sentiment"])
    ok, too_long, hard = state.engine.run([Job(state.prompts["pt7"], examples(["fine"])),
                                           Job(state.prompts["pt7"], examples(["fine", long])),
                                           Job(state.prompts["zs"], examples([long]))])
    assert isinstance(too_long, InputTooLong) and "inputs[1]" in str(too_long) and "at most 128" in str(too_long)
    assert not isinstance(ok, Exception) and not isinstance(hard, Exception)  # no virtual tokens: truncation fits
    with TestClient(create_app(state)) as c:
        r = c.post("/v1/predict", json={"prompt": "pt7", "inputs": [{"text": long}]})
        assert r.status_code == 413 and "7 virtual tokens" in r.json()["detail"]


def test_serve_cli_errors_are_one_line(run_cli, tiny_models):
    code, _, err = run_cli("serve", "--model", tiny_models["causal"])
    assert code == 2 and "at least one --prompt" in err
    code, _, err = run_cli("serve", "--model", tiny_models["causal"], "--prompt", "no equals sign")
    assert code == 2 and "NAME=DIR" in err and "Traceback" not in err
    code, _, err = run_cli("serve", "--model", tiny_models["causal"], "--prompt", "b=zero-shto:sentiment")
    assert code == 2 and "prompt 'b': unknown method 'zero-shto'; did you mean 'zero-shot'?" in err, err


def test_serve_refuses_what_uvicorn_would_fail_on_after_loading(run_cli, tiny_models, tmp_path):
    """A taken port, an unresolvable host, a negative timeout, a missing artifact root: one line, before the
    model loads (uvicorn printed its own ERROR line with exit status 3; the others were accepted)."""
    base = ["serve", "--model", tiny_models["causal"], "--prompt", "zs=zero-shot:sentiment"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for extra, needle in ((["--port", port], "cannot listen on 127.0.0.1:" + port),
                              (["--host", "no-such-host.invalid"], "cannot be resolved"),
                              (["--graceful-timeout", "-1"], "--graceful-timeout must be 0 or more"),
                              (["--artifact-root", str(tmp_path / "missing")], "is not a directory")):
            code, _, err = run_cli(*base, *extra)
            assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


# -- HTTP --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def causal_state(tiny_models, arts):
    def make(**limits):
        bb = load_backbone(str(tiny_models["causal"]))
        a = arts["causal"]
        return build_state(bb, [f"pt={a['pt']}", f"pt7={a['pt7']}", "zs=zero-shot:sentiment", f"prefix={a['prefix']}"],
                           Limits(**limits), token=TOKEN, artifact_roots=[str(a["pt"].parent)])
    return make


def test_http_api_paths(causal_state, arts, tiny_models):
    from fastapi.testclient import TestClient

    state = causal_state(max_body_bytes=4000, max_inputs=4, max_input_chars=200)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(state)) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        listed = {p["name"]: p for p in c.get("/v1/prompts").json()["prompts"]}
        assert listed["pt7"]["virtual_tokens"] == 7 and listed["pt7"]["bytes"] > 0 and listed["zs"]["family"] == "hard"
        r = c.post("/v1/predict", json={"prompt": "pt", "inputs": [{"text": t} for t in TEXTS[:2]]})
        assert r.status_code == 200
        bb = load_backbone(str(tiny_models["causal"]))
        offline = load_predictor(str(arts["causal"]["pt"]), bb).predict(examples(TEXTS[:2]))
        assert [p["label"] for p in r.json()["predictions"]] == [p.prediction for p in offline]
        assert set(r.json()["predictions"][0]["scores"]) == set(get_task("sentiment").labels)

        def bad(body, status, *needles, **kw):
            resp = c.post("/v1/predict", json=body, **kw) if body is not None else c.post("/v1/predict", **kw)
            assert resp.status_code == status, resp.text
            detail = resp.json()["detail"]
            for n in needles:
                assert n in detail, (n, detail)
            return resp

        bad({"prompt": "nope", "inputs": [{"text": "x"}]}, 404, "unknown prompt 'nope'", "pt7")
        bad({"prompt": "pt", "inputs": [{"txt": "x"}]}, 422, "inputs[0]", "missing field 'text'")
        bad({"prompt": "pt", "inputs": [{"text": "x", "extra": "y"}]}, 422, "inputs[0]", "unknown field 'extra'")
        bad({"prompt": "pt", "inputs": [{"text": 3}]}, 422, "inputs[0].text", "string")
        bad({"prompt": "pt"}, 422, "inputs", "required")
        bad({"prompt": "pt", "inputs": []}, 422, "inputs")
        bad({"prompt": "pt", "inputs": [{"text": "x"}], "temperature": 1}, 422, "temperature")
        bad(None, 422, "not valid JSON", content=b'{"prompt": ', headers={"content-type": "application/json"})
        bad({"prompt": "pt", "inputs": [{"text": "x"}] * 5}, 413, "5 inputs", "limit is 4")
        bad({"prompt": "pt", "inputs": [{"text": "x" * 201}]}, 413, "inputs[0].text", "limit is 200")
        bad({"prompt": "pt", "inputs": [{"text": "x" * 150}] * 30}, 413, "larger than 4000 bytes")

        new = {"path": str(arts["causal"]["hyb"])}
        assert c.put("/v1/prompts/hyb", json=new).status_code == 401
        r = c.put("/v1/prompts/hyb", json=new, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.put("/v1/prompts/hyb", json=new, headers=auth)
        assert r.status_code == 201 and r.json()["method"] == "hybrid" and r.json()["virtual_tokens"] == 3
        assert c.put("/v1/prompts/hyb", json=new, headers=auth).status_code == 200  # replaced
        assert c.post("/v1/predict", json={"prompt": "hyb", "inputs": [{"text": "x"}]}).status_code == 200
        r = c.put("/v1/prompts/enc", json={"path": str(arts["encoder"]["pt7"])}, headers=auth)
        assert r.status_code == 400 and "kind=encoder" in r.json()["detail"]
        r = c.put("/v1/prompts/etc", json={"path": "/etc"}, headers=auth)
        assert r.status_code == 403 and "outside" in r.json()["detail"]
        r = c.put("/v1/prompts/zs2", json={"path": "zero-shot:sentiment"}, headers=auth)
        assert r.status_code == 201
        assert c.put("/v1/prompts/bad name", json=new, headers=auth).status_code == 422
        assert c.delete("/v1/prompts/hyb").status_code == 401
        assert c.delete("/v1/prompts/hyb", headers=auth).json() == {"deleted": "hyb"}
        assert c.delete("/v1/prompts/hyb", headers=auth).status_code == 404
        bad({"prompt": "hyb", "inputs": [{"text": "x"}]}, 404, "unknown prompt")

        m = c.get("/metrics").json()
        assert m["requests"]["by_status"]["422"] >= 7 and m["batches"]["count"] >= 2
        assert m["latency_ms"]["count"] >= 2 and "p99" in m["latency_ms"]
        spec = c.get("/openapi.json").json()
        assert {"/v1/predict", "/v1/prompts", "/v1/prompts/{name}", "/healthz", "/metrics"} <= set(spec["paths"])


def test_prompts_list_shipped_bytes_and_what_each_prompt_holds(causal_state, arts):
    """`bytes` counted prompt_init.safetensors, which metrics.json's artifact_bytes leaves out; `resident_bytes` was 0
    for a prefix, which holds its prefix tensors beside the shared backbone."""
    from fastapi.testclient import TestClient

    state = causal_state()
    with TestClient(create_app(state)) as c:
        listed = {p["name"]: p for p in c.get("/v1/prompts").json()["prompts"]}
    run = arts["causal"]["pt"]  # trained through the CLI: its artifact keeps the prompt's starting point
    assert (run / "artifact" / "prompt_init.safetensors").is_file()
    assert listed["pt"]["bytes"] == json.loads((run / "metrics.json").read_text())["artifact_bytes"]
    prefix = state.prompts["prefix"].predictor.model
    own = [p for n, p in prefix.named_parameters() if "prompt_encoder" in n]
    assert own and listed["prefix"]["resident_bytes"] == sum(p.numel() * p.element_size() for p in own)


def test_admin_is_off_without_a_token(tiny_models, arts):
    from fastapi.testclient import TestClient

    state = build_state(load_backbone(str(tiny_models["causal"])), ["zs=zero-shot:sentiment"])
    with TestClient(create_app(state)) as c:
        r = c.put("/v1/prompts/x", json={"path": str(arts["causal"]["pt"])})
        assert r.status_code == 403 and "--token" in r.json()["detail"]


@contextmanager
def live_server(app):
    """uvicorn on 127.0.0.1 with an ephemeral port, in a thread; shut down gracefully on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=20))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _wait_for(cond, seconds=10.0):
    deadline = time.time() + seconds
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_full_queue_answers_503_with_retry_after(causal_state, monkeypatch):
    import httpx

    state = causal_state(max_batch=1, max_queue=1, max_wait_ms=0)
    gate = threading.Event()
    real = state.engine.run
    monkeypatch.setattr(state.engine, "run", lambda jobs: gate.wait(20) and real(jobs))
    body = {"prompt": "pt", "inputs": [{"text": "x"}]}
    with live_server(create_app(state)) as (url, _, _):
        replies = []
        post = lambda: replies.append(httpx.post(f"{url}/v1/predict", json=body, timeout=30))
        first = threading.Thread(target=post)
        first.start()
        _wait_for(lambda: state.batcher.in_flight == 1)  # taken by the worker, blocked in the model
        second = threading.Thread(target=post)
        second.start()
        _wait_for(lambda: state.batcher.depth == 1)  # queued: the queue is now full
        r = httpx.post(f"{url}/v1/predict", json=body, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queue is full" in r.json()["detail"]
        gate.set()
        first.join(30)
        second.join(30)
        assert [x.status_code for x in replies] == [200, 200]
        assert httpx.get(f"{url}/metrics").json()["requests"]["rejected_queue_full"] == 1


def test_graceful_shutdown_finishes_requests_in_flight(causal_state, monkeypatch):
    import httpx

    state = causal_state(max_batch=4, max_wait_ms=0)
    gate = threading.Event()
    real = state.engine.run
    monkeypatch.setattr(state.engine, "run", lambda jobs: gate.wait(20) and real(jobs))
    replies: list = []
    with live_server(create_app(state)) as (url, server, thread):
        def post(i):
            replies.append(httpx.post(f"{url}/v1/predict", json={"prompt": ["pt", "pt7", "zs"][i % 3],
                                                                 "inputs": [{"text": TEXTS[i]}]}, timeout=30))
        clients = [threading.Thread(target=post, args=(i,)) for i in range(6)]
        for t in clients:
            t.start()
        _wait_for(lambda: state.batcher.depth + state.batcher.in_flight == 6)  # computing or queued
        server.should_exit = True  # what SIGTERM / Ctrl-C does
        _wait_for(lambda: not _accepts(url))  # shutdown has begun: no new connections
        gate.set()
        for t in clients:
            t.join(30)
        thread.join(30)
        assert not thread.is_alive()
    assert sorted(r.status_code for r in replies) == [200] * 6
    assert state.batcher.depth == 0 and state.draining


def _accepts(url: str) -> bool:
    import httpx

    try:
        httpx.get(f"{url}/healthz", timeout=2)
        return True
    except httpx.TransportError:
        return False


# -- load ----------------------------------------------------------------------------------------------
def _malformed(rng: random.Random, k: int) -> tuple[dict, int, str]:
    """(request kwargs, expected status, a word the detail must hold)."""
    cases = [
        ({"json": {"prompt": "missing", "inputs": [{"text": "x"}]}}, 404, "unknown prompt"),
        ({"json": {"prompt": "pt", "inputs": [{"txt": "x"}]}}, 422, "missing field 'text'"),
        ({"json": {"prompt": "pt7", "inputs": [{"text": "x", "label": "positive"}]}}, 422, "unknown field 'label'"),
        ({"json": {"prompt": "zs", "inputs": [{"text": None}]}}, 422, "inputs[0].text"),
        ({"json": {"prompt": "pt", "inputs": "a string"}}, 422, "inputs"),
        ({"content": b'{"prompt": "pt", "inputs": [', "headers": {"content-type": "application/json"}}, 422, "JSON"),
        ({"json": {"prompt": "pt", "inputs": [{"text": "x"}] * 9}}, 413, "limit is 8"),
        ({"json": {"prompt": "pt", "inputs": [{"text": "y" * 600}]}}, 413, "limit is 500"),
        ({"json": {"inputs": [{"text": "x"}]}}, 422, "prompt"),
    ]
    return cases[k % len(cases)]


def _load_test(state, arts, tiny_models, n_requests: int, clients: int = 32) -> None:
    import httpx

    rng = random.Random(0)
    bb = load_backbone(str(tiny_models["causal"]))
    names = ["pt", "pt7", "zs", "prefix"]
    offline = {}
    for name in names:
        s = state.prompts[name]
        pred = s.predictor or load_predictor(str(arts["causal"][name]), bb)
        offline[name] = {t: p for t, p in zip(TEXTS, pred.predict(examples(TEXTS)))}
    plan = []
    for i in range(n_requests):
        if i % 10 == 3:  # 10% malformed
            plan.append(("bad",) + _malformed(rng, i // 10))
        else:
            name = names[i % len(names)]
            plan.append(("ok", name, rng.sample(TEXTS, rng.randint(1, 3))))
    rng.shuffle(plan)
    outcomes: list = []

    async def worker(client, queue):
        while queue:
            item = queue.pop()
            if item[0] == "ok":
                r = await client.post("/v1/predict", json={"prompt": item[1], "inputs": [{"text": t} for t in item[2]]})
            else:
                r = await client.post("/v1/predict", **item[1])
            outcomes.append((item, r.status_code, r.json()))

    async def run(url):
        queue = list(plan)
        async with httpx.AsyncClient(base_url=url, timeout=60,
                                     limits=httpx.Limits(max_connections=clients)) as client:
            await asyncio.wait_for(asyncio.gather(*(worker(client, queue) for _ in range(clients))), 240)

    with live_server(create_app(state)) as (url, _, _):
        asyncio.run(run(url))
        metrics = httpx.get(f"{url}/metrics").json()
    assert len(outcomes) == n_requests
    assert not [o for o in outcomes if o[1] >= 500], [o for o in outcomes if o[1] >= 500][:3]
    for item, status, body in outcomes:
        if item[0] == "ok":
            assert status == 200, body
            for text, got in zip(item[2], body["predictions"]):
                want = offline[item[1]][text]
                assert got["label"] == want.prediction and abs(got["score"] - want.score) <= 1e-5
        else:
            _, _, want_status, needle = item
            assert status == want_status and needle in body["detail"], (item, status, body)
    assert metrics["batches"]["mixed_batches"] > 0  # concurrent requests for different prompts shared batches


def test_load_small(causal_state, arts, tiny_models):
    state = causal_state(max_inputs=8, max_input_chars=500, max_batch=32, max_wait_ms=5)
    _load_test(state, arts, tiny_models, n_requests=200)


@pytest.mark.slow
def test_load_full(causal_state, arts, tiny_models):
    state = causal_state(max_inputs=8, max_input_chars=500, max_batch=32, max_wait_ms=5)
    _load_test(state, arts, tiny_models, n_requests=1000)
