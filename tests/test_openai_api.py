"""The OpenAI-compatible endpoints, through the official `openai` client against a live server on 127.0.0.1:
greedy completions equal the engine's own generation and greedy decoding by definition, streams join to the
non-streamed text, echoed log-probs equal a full forward of [soft prompt, tokens], errors have OpenAI's shape."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import httpx
import pytest
import torch
from test_serving import _wait_for, ascii_model, greedy_by_recomputing, live_server, synth_artifact

from promptlab.backbones import load_backbone
from promptlab.methods import load_predictor
from promptlab.serving.app import Limits, create_app
from promptlab.serving.openai_api import render_chat
from promptlab.serving.server import build_state
from promptlab.tasks.base import Example

openai = pytest.importorskip("openai")

TEXTS = ["the food was great", "who was born in the city?", "x"]
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    """An ASCII-only causal and seq2seq model (so greedy text is visible), two soft prompts each, a hard prompt."""
    root = tmp_path_factory.mktemp("openai")
    out = {}
    for kind in ("causal", "seq2seq"):
        model = ascii_model(tiny_models[kind], root / f"ascii-{kind}")
        out[kind] = (model, {
            "qa": synth_artifact(model, root / f"{kind}-qa", "prompt-tuning", 6, seed=5, task="hotpotqa", max_new_tokens=6),
            "pt": synth_artifact(model, root / f"{kind}-pt", "p-tuning", 3, seed=6, task="hotpotqa", max_new_tokens=5),
        })
    return out


def state_for(setup, kind, **limits):
    model, art = setup[kind]
    bb = load_backbone(str(model))
    return build_state(bb, [f"qa={art['qa']}", f"pt={art['pt']}", "zs=zero-shot:sentiment"], Limits(**limits))


def client_for(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_list_soft_prompts_and_the_bare_backbone(setup):
    state = state_for(setup, "causal", max_wait_ms=500)
    with live_server(create_app(state)) as (url, _, _):
        c = client_for(url)
        ids = [m.id for m in c.models.list().data]
        assert ids == ["qa", "pt", state.backbone.name]  # the hard prompt is its template: not a raw-text model
        assert c.models.retrieve("qa").id == "qa"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("nope")
        # a completion and a /v1/predict request that arrive together run in one batch of the same batcher
        done = []
        threads = [threading.Thread(target=lambda: done.append(c.completions.create(model="qa", prompt="x", max_tokens=2))),
                   threading.Thread(target=lambda: done.append(httpx.post(f"{url}/v1/predict", timeout=60, json={
                       "prompt": "zs", "inputs": [{"text": "great"}]})))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(done) == 2
        m = httpx.get(f"{url}/metrics").json()
        assert m["batches"]["mixed_batches"] >= 1 and m["requests"]["by_route"]["GET /v1/models 200"] == 1


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_greedy_completions_equal_the_engine_and_offline_generation(setup, kind):
    state = state_for(setup, kind)
    bb = state.backbone
    model, art = setup[kind]
    exs = [Example("0", {"question": "who was born in the city?", "context": "the hotel room was clean"})]
    with live_server(create_app(state)) as (url, _, _):
        c = client_for(url)
        r = c.completions.create(model="qa", prompt=TEXTS, max_tokens=5, temperature=0)
        assert [ch.index for ch in r.choices] == [0, 1, 2]
        got = [ch.text for ch in r.choices]
        s = state.prompts["qa"]
        if kind == "causal":  # greedy decoding by definition: one full forward of [P, x, y<t] per token
            want = [bb.tokenizer.decode(greedy_by_recomputing(bb, s.prompt, t, 5), skip_special_tokens=True)
                    for t in TEXTS]
            assert got == want
        assert any(got) and all(ch.finish_reason == "length" for ch in r.choices)
        prompt_tokens = sum(len(x) for x in bb.tokenizer(TEXTS)["input_ids"])
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
            prompt_tokens, 15, prompt_tokens + 15)
        # the task template rendered by hand and sent raw: the same answer as the offline predictor (and /v1/predict)
        rendered = s.render(exs)[0]
        one = c.completions.create(model="qa", prompt=rendered, max_tokens=s.max_new_tokens)
        offline = load_predictor(str(art["qa"]), load_backbone(str(model))).predict(exs)[0].prediction
        assert one.choices[0].text.strip() == offline
        # the bare backbone: no virtual tokens
        bare = c.completions.create(model=bb.name, prompt="the food", max_tokens=3)
        if kind == "causal":
            ref = greedy_by_recomputing(bb, bb.model.get_input_embeddings().weight[:0], "the food", 3)
            assert bare.choices[0].text == bb.tokenizer.decode(ref, skip_special_tokens=True)
        stop = got[0][2:4]
        cut = c.completions.create(model="qa", prompt=TEXTS[0], max_tokens=5, stop=[stop]).choices[0]
        assert cut.text == got[0][: got[0].find(stop)] and cut.finish_reason == "stop"
        # the last response is counted once it has been sent: wait for it
        _wait_for(lambda: httpx.get(f"{url}/metrics").json()["requests"]["by_route"]["POST /v1/completions 200"] == 4)
        assert httpx.get(f"{url}/metrics").json()["predictions_by_prompt"]["qa"] == 5


def test_chat_renders_messages_and_streams(setup):
    state = state_for(setup, "causal")
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "who was born in the city?"}]
    text = render_chat(state.backbone.tokenizer, msgs)
    assert text == "system: be brief\nuser: who was born in the city?\nassistant:"  # no chat template: plain lines
    with live_server(create_app(state)) as (url, _, _):
        c = client_for(url)
        r = c.chat.completions.create(model="qa", messages=msgs, max_tokens=6)
        plain = c.completions.create(model="qa", prompt=text, max_tokens=6)
        assert r.choices[0].message.content == plain.choices[0].text and r.choices[0].message.role == "assistant"
        assert r.usage.total_tokens == plain.usage.total_tokens
        chunks = list(c.chat.completions.create(model="qa", messages=msgs, max_tokens=6, stream=True,
                                                stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
        assert chunks[-1].usage.total_tokens == r.usage.total_tokens
        full = c.completions.create(model="pt", prompt=TEXTS, max_tokens=7, echo=True)
        parts = {0: "", 1: "", 2: ""}
        for ch in c.completions.create(model="pt", prompt=TEXTS, max_tokens=7, echo=True, stream=True):
            parts[ch.choices[0].index] += ch.choices[0].text
        assert [parts[i] for i in range(3)] == [ch.text for ch in full.choices]
        raw = httpx.post(f"{url}/v1/completions", json={"model": "qa", "prompt": "x", "max_tokens": 2, "stream": True})
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert re.fullmatch(r"(data: \{.*\}\n\n)+data: \[DONE\]\n\n", raw.text)


def test_render_chat_uses_the_tokenizers_template(setup):
    bb = load_backbone(str(setup["causal"][0]))
    tok = bb.tokenizer
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_chat(tok, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == "<user>hi<assistant>"


@torch.inference_mode()
def reference_logprobs(bb, prompt: torch.Tensor, ids: list[int]) -> list[float | None]:
    """log p(x_t | P, x_<t) from one full forward of [P, x]; none for the first token without a prompt."""
    emb = bb.model.get_input_embeddings()
    logp = torch.log_softmax(bb.model(inputs_embeds=torch.cat([prompt, emb(torch.tensor(ids))])[None]).logits[0], -1)
    n = prompt.shape[0]
    return [None if n + t == 0 else float(logp[n + t - 1, ids[t]]) for t in range(len(ids))]


def test_echoed_logprobs_equal_a_full_forward(setup):
    state = state_for(setup, "causal")
    bb = state.backbone
    with live_server(create_app(state)) as (url, _, _):
        c = client_for(url)
        for name in ("qa", "pt", bb.name):  # lm-eval's local-completions asks exactly this: echo, no new tokens
            r = c.completions.create(model=name, prompt=TEXTS, max_tokens=0, echo=True, logprobs=1)
            prompt = state.prompts[name].prompt if name in state.prompts else bb.model.get_input_embeddings().weight[:0]
            for text, ch in zip(TEXTS, r.choices):
                ids = bb.tokenizer(text)["input_ids"]
                want = reference_logprobs(bb, prompt, ids)
                got = ch.logprobs.token_logprobs
                assert len(got) == len(ids) and ch.text == text
                assert (got[0] is None) == (want[0] is None)
                assert all(abs(g - w) < 1e-4 for g, w in zip(got, want) if w is not None)
                assert ch.logprobs.tokens[:len(text)] == list(text)
                assert all(len(t) == 1 for t in ch.logprobs.top_logprobs[1:])
            assert r.usage.completion_tokens == 0
        # logprobs of the generated tokens: greedy picks the most likely token
        r = c.completions.create(model="qa", prompt=TEXTS[0], max_tokens=4, logprobs=2)
        lp = r.choices[0].logprobs
        assert len(lp.tokens) == 4 and "".join(lp.tokens) == r.choices[0].text
        assert all(max(top.values()) == pytest.approx(v, abs=1e-6) for top, v in zip(lp.top_logprobs, lp.token_logprobs))


def test_errors_have_openais_shape_and_status(setup):
    state = state_for(setup, "causal", max_inputs=4, max_input_chars=200, max_body_bytes=4000)
    with live_server(create_app(state)) as (url, _, _):
        c = client_for(url)

        def refused(exc, param, needle, **kw):
            with pytest.raises(exc) as e:
                c.completions.create(**{"model": "qa", "prompt": "x", **kw})
            err = e.value.body
            assert set(err) >= {"message", "type", "param", "code"} and err["param"] == param, err
            assert needle in err["message"], err
            return e.value

        e = refused(openai.NotFoundError, "model", "does not exist", model="nope")
        assert e.status_code == 404 and e.body["code"] == "model_not_found" and "qa" in e.body["message"]
        refused(openai.NotFoundError, "model", "hard prompt", model="zs")
        assert refused(openai.APIStatusError, "prompt", "n=3", prompt=["x", "y"], n=3).status_code == 413
        refused(openai.BadRequestError, "max_tokens", "limit", max_tokens=5000)
        assert refused(openai.APIStatusError, "prompt", "limit is 4", prompt=["x"] * 5).status_code == 413
        assert refused(openai.APIStatusError, "prompt", "limit is 200", prompt="x" * 201).status_code == 413
        e = refused(openai.APIStatusError, "prompt", "model takes at most 1024", prompt="x" * 100, max_tokens=1000)
        assert e.status_code == 413 and e.body["code"] == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="qa", messages=[])
        assert e.value.body["param"] == "messages"

        def raw(status, **kw):
            r = httpx.post(f"{url}/v1/completions", **kw)
            assert r.status_code == status, r.text
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            return r.json()["error"]

        raw(400, content=b'{"model": ', headers={"content-type": "application/json"})
        assert "tokenized_requests=False" in raw(400, json={"model": "qa", "prompt": [[1, 2]]})["message"]
        assert raw(400, json={"model": "qa", "prompt": [1, 2]})["param"] == "prompt"
        assert "below" in raw(400, json={"model": "qa", "prompt": [[10 ** 9]]})["message"]
        assert raw(400, json={"model": "qa", "prompt": [{"text": "x"}]})["param"].startswith("prompt")
        assert raw(400, json={"model": "qa", "prompt": "x", "tools": []})["param"] == "tools"
        raw(415, content=b"{}")
        raw(413, json={"model": "qa", "prompt": "x" * 5000})
    seq = state_for(setup, "seq2seq")
    with live_server(create_app(seq)) as (url, _, _):
        with pytest.raises(openai.BadRequestError) as e:
            client_for(url).completions.create(model="qa", prompt="x", echo=True, logprobs=1, max_tokens=0)
        assert "decoder-only" in e.value.body["message"] and e.value.body["param"] == "echo"


def test_readme_client_example_runs(setup):
    """README's OpenAI-compatible example, run as written against a live server (its port and prompt swapped in)."""
    code = README.read_text().split("### OpenAI-compatible API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    state = state_for(setup, "causal")
    with live_server(create_app(state)) as (url, _, _):
        code = code.replace("http://127.0.0.1:8000", url).replace('"sst2"', '"qa"')
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 — our own README
        assert namespace["reply"].choices[0].message.content is not None
        assert len(namespace["scored"].choices[0].logprobs.token_logprobs) > 1


# -- sampling, logprobs everywhere, token-id prompts -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_seeded_sampling_is_the_same_alone_and_in_a_mixed_batch(setup, kind):
    """A seeded request draws from its own generators: the same text alone and sharing a forward with other
    requests (greedy /v1/predict rows, other seeds, chat); n choices differ; top_p near 0 is greedy."""
    state = state_for(setup, kind, max_wait_ms=400, max_batch=64)
    batches: list[list] = []
    real = state.engine.run
    state.engine.run = lambda jobs: batches.append(jobs) or real(jobs)
    want = {"model": "qa", "prompt": TEXTS[0], "max_tokens": 8, "temperature": 1.3, "top_p": 0.95, "n": 3, "seed": 7}
    with live_server(create_app(state)) as (url, _, _):
        c = client_for(url)
        first = c.completions.create(**want)
        alone = [ch.text for ch in first.choices]
        assert len(alone) == 3 and len(set(alone)) > 1  # independent samples
        n_prompt = len(state.backbone.tokenizer(TEXTS[0])["input_ids"])
        assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (n_prompt, 24)  # the prompt counted once
        others = [lambda: httpx.post(f"{url}/v1/predict", timeout=60, json={"prompt": "zs", "inputs": [{"text": "ok"}]}),
                  lambda: c.completions.create(**{**want, "seed": 8, "prompt": TEXTS}),
                  lambda: c.completions.create(**{**want, "prompt": TEXTS[1], "temperature": 0, "n": 1}),
                  lambda: c.chat.completions.create(model="pt", messages=[{"role": "user", "content": "hi"}],
                                                    temperature=0.8, max_tokens=5)]
        mixed: list = []
        threads = [threading.Thread(target=lambda: mixed.append(c.completions.create(**want)))]
        threads += [threading.Thread(target=f) for f in others]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert [ch.text for ch in mixed[0].choices] == alone
        shared = [jobs for jobs in batches if any(j.sampling and j.raw == [TEXTS[0]] * 3 for j in jobs)]
        assert len(shared[-1]) >= 3  # it did share its engine call with the others
        assert [ch.text for ch in c.completions.create(**{**want, "seed": 8}).choices] != alone
        greedy = c.completions.create(**{**want, "temperature": 0}).choices
        assert len({ch.text for ch in greedy}) == 1  # n identical greedy choices, as OpenAI allows
        nucleus = c.completions.create(**{**want, "top_p": 1e-6}).choices  # only the most likely token survives
        assert [ch.text for ch in nucleus] == [ch.text for ch in greedy]


def test_chat_logprobs_in_chats_shape(setup):
    state = state_for(setup, "causal")
    msgs = [{"role": "user", "content": "who was born in the city?"}]
    with live_server(create_app(state)) as (url, _, _):
        c = client_for(url)
        r = c.chat.completions.create(model="qa", messages=msgs, max_tokens=5, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        assert "".join(t.token for t in content) == r.choices[0].message.content and len(content) == 5
        assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-6)
                   for t in content)  # greedy: the chosen token is the most likely
        assert all(bytes(t.bytes).decode() == t.token for t in content)
        text = render_chat(state.backbone.tokenizer, msgs)
        legacy = c.completions.create(model="qa", prompt=text, max_tokens=5, logprobs=1).choices[0].logprobs
        assert [t.logprob for t in content] == pytest.approx(legacy.token_logprobs, abs=1e-6)
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="qa", messages=msgs, top_logprobs=2)
        assert e.value.body["param"] == "top_logprobs"
        # streamed: each chunk carries its tokens' log-probs, and they join to the non-streamed ones
        chunks = list(c.chat.completions.create(model="qa", messages=msgs, max_tokens=5, logprobs=True, top_logprobs=3,
                                                stream=True))
        joined = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
        assert [t.model_dump() for t in joined] == [t.model_dump() for t in content]
        full = c.completions.create(model="pt", prompt=TEXTS, max_tokens=4, echo=True, logprobs=2)
        parts: dict[int, dict[str, list]] = {i: {"tokens": [], "token_logprobs": [], "text_offset": []} for i in range(3)}
        for ch in c.completions.create(model="pt", prompt=TEXTS, max_tokens=4, echo=True, logprobs=2, stream=True):
            if ch.choices[0].logprobs:
                for key, got in parts[ch.choices[0].index].items():
                    got.extend(getattr(ch.choices[0].logprobs, key))
        for i, ch in enumerate(full.choices):
            assert parts[i] == {k: getattr(ch.logprobs, k) for k in parts[i]}


@torch.inference_mode()
def test_seq2seq_completion_logprobs_equal_the_decoder(setup):
    """seq2seq: log p(y_t | encoder [P, x], y_<t) of the generated tokens, from a forward of the model by hand."""
    state = state_for(setup, "seq2seq")
    bb = state.backbone
    with live_server(create_app(state)) as (url, _, _):
        r = client_for(url).completions.create(model="qa", prompt=TEXTS[:2], max_tokens=4, logprobs=2)
    for text, ch in zip(TEXTS, r.choices):
        ids = bb.tokenizer(text, return_tensors="pt")["input_ids"]
        emb = torch.cat([state.prompts["qa"].prompt, bb.model.get_input_embeddings()(ids)[0]])[None]
        new = bb.tokenizer([ch.text], add_special_tokens=False)["input_ids"][0][:4]
        lp = ch.logprobs
        assert len(lp.token_logprobs) == 4 and "".join(lp.tokens) == ch.text
        logp = torch.log_softmax(bb.model(inputs_embeds=emb, labels=torch.tensor([new])).logits[0], -1)
        assert lp.token_logprobs == pytest.approx([float(logp[t, x]) for t, x in enumerate(new)], abs=1e-4)
        assert all(max(top.values()) == pytest.approx(v, abs=1e-6) for top, v in zip(lp.top_logprobs, lp.token_logprobs))


def test_token_id_prompts_answer_as_their_text(setup):
    state = state_for(setup, "causal")
    tok = state.backbone.tokenizer
    with live_server(create_app(state)) as (url, _, _):
        c = client_for(url)
        by_text = c.completions.create(model="qa", prompt=TEXTS[:2], max_tokens=4, echo=True, logprobs=1)
        ids = tok(TEXTS[:2])["input_ids"]
        by_ids = c.completions.create(model="qa", prompt=ids, max_tokens=4, echo=True, logprobs=1)
        one = c.completions.create(model="qa", prompt=ids[0], max_tokens=4)
    assert [ch.text for ch in by_ids.choices] == [ch.text for ch in by_text.choices]
    assert [ch.logprobs.token_logprobs for ch in by_ids.choices] == [ch.logprobs.token_logprobs for ch in by_text.choices]
    assert one.choices[0].text == by_text.choices[0].text[len(TEXTS[0]):]

