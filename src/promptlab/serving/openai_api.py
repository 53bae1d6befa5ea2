"""OpenAI-compatible endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions.

They ride the same micro-batcher, engine and KV cache as /v1/predict (a completion row can share a forward with
/v1/predict rows) and are counted in /metrics. A model id is a loaded soft prompt's name, or the backbone's own
name (the bare model: a prompt of no virtual tokens and no task). `prompt` is the raw text fed after the soft
prompt, tokenized as the tokenizer does by default; the prompt's task template is not applied (use /v1/predict
for that). Decoding is greedy when `temperature` is 0 or absent; otherwise each choice samples with `temperature`
and `top_p` from its own generator seeded from `seed` (sampling.py), so a seeded request gives the same text alone or
in any batch; `n` choices per prompt. `logprobs` of the completion (chat: `logprobs`/`top_logprobs` in chat's shape)
for causal and seq2seq models; with `echo`, the prompt's own tokens too (log p(token | soft prompt, tokens before
it)), for decoder-only models. Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..chat import has_template, token_ids
from ..chat import render_chat as render_template
from ..config import RunConfig
from ..errors import PromptlabError
from .batcher import QueueFull, ShuttingDown
from .engine import InputTooLong, Job
from .jobs import UpstreamFailed
from .registry import Servable
from .sampling import Sampler

ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions")
JSON_ROUTES = ("/v1/completions", "/v1/chat/completions")
MAX_TOKENS = 1024  # per completion
MAX_LOGPROBS = 5  # as OpenAI's legacy completions
MAX_TOP_LOGPROBS = 20  # as OpenAI's chat completions
MAX_N = 16


def is_openai(path: str) -> bool:
    return path in ROUTES or path.startswith("/v1/models/")


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind, self.headers = (
            status, message, param, code, kind, headers)

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, headers=self.headers, content=error_body(
            self.message, self.param, self.code, self.kind))


def error_body(message: str, param: str | None = None, code: str | None = None,
               kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# -- request bodies ----------------------------------------------------------------------------------------------
class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a loaded soft prompt's name, or the backbone's name (GET /v1/models)")
    temperature: float | None = Field(None, ge=0, le=2, description="0 or absent: greedy; otherwise sampling")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling (with temperature > 0)")
    n: int | None = Field(None, ge=1, le=MAX_N, description="choices per prompt")
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = Field(None, description="up to 4 strings; the text ends before the first")
    seed: int | None = Field(None, description="sampling: the same seed gives the same text")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(_Common):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "sst2", "prompt": "a gorgeous, witty film. It was", "max_tokens": 8}]})
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="raw text fed after the soft prompt (no task template), or token ids of the server's tokenizer")
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="log-probs of the tokens, and this many "
                                 "most likely tokens per position (decoder-only models)")
    echo: bool | None = Field(False, description="return the prompt before the completion (and its log-probs)")
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


# -- the endpoints ---------------------------------------------------------------------------------------------
def register(app: FastAPI, state: Any) -> None:
    """Mount the endpoints on `app`; `state` is the server's ServerState."""
    bb = state.backbone
    width = bb.model.get_input_embeddings().weight
    bare = Servable(bb.name, None, "backbone", "hard", None, bb.name, RunConfig(),  # type: ignore[arg-type]
                    prompt=width.new_zeros(0, width.shape[1]))

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    def models() -> list[tuple[str, Servable]]:
        if bb.kind == "encoder":
            return []
        soft = [(n, s) for n, s in state.prompts.items() if s.batchable and s.virtual_tokens > 0]
        return soft + ([] if bb.name in state.prompts else [(bb.name, bare)])

    def card(name: str, s: Servable) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": int(state.metrics.started), "owned_by": "promptlab",
                "task": s.task.name if s.task is not None else None, "virtual_tokens": s.virtual_tokens,
                "method": s.method}

    def resolve(name: str) -> Servable:
        if bb.kind == "encoder":
            raise OpenAIError(400, f"the backbone {bb.name} is an encoder, which does not generate text; use "
                                   "/v1/predict", "model")
        for n, s in models():
            if n == name:
                return s
        s = state.prompts.get(name)
        if s is not None and not s.batchable:
            why = f"prompt '{name}' ({s.method}) runs through its own predictor, not as input embeddings"
        elif s is not None:
            why = f"prompt '{name}' is a hard prompt ({s.method}): the completions API feeds the text as given"
        else:
            why = f"the model '{name}' does not exist"
        raise OpenAIError(404, f"{why}; models here: {', '.join(n for n, _ in models())} (GET /v1/models)", "model",
                          "model_not_found")

    @app.get("/v1/models", summary="OpenAI: the soft prompts, and the bare backbone, as model ids")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [card(n, s) for n, s in models()]}

    @app.get("/v1/models/{model:path}", summary="OpenAI: one model id")
    async def get_model(model: str) -> dict[str, Any]:
        return card(model, resolve(model))

    async def submit(job: Job, param: str) -> list[Any]:
        b = state.batcher
        if b is None or state.draining:
            raise OpenAIError(503, "the server is shutting down; retry shortly", kind="server_error",
                              headers={"Retry-After": "5"})
        try:
            return await b.submit(job)
        except QueueFull:
            state.metrics.rejected_full += 1
            raise OpenAIError(429, f"the queue is full ({b.max_queue} requests waiting); retry after 1 s",
                              code="rate_limit_exceeded", kind="rate_limit_error", headers={"Retry-After": "1"}) from None
        except ShuttingDown:
            raise OpenAIError(503, "the server is shutting down; retry shortly", kind="server_error",
                              headers={"Retry-After": "5"}) from None
        except InputTooLong as e:
            raise OpenAIError(413, str(e).replace("inputs[", f"{param}["), param, "context_length_exceeded") from None
        except UpstreamFailed as e:
            raise OpenAIError(502, str(e), kind="server_error") from None
        except PromptlabError as e:
            raise OpenAIError(400, str(e), param) from None

    async def run(req: _Common, texts: list[str], max_tokens: int, param: str, logprobs: int | None = None,
                  echo: bool = False) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """`n` completions of each of `texts` (after the soft prompt), prompt-major: one dict per choice (text, ids,
        finish_reason, prompt ids, logprobs: the raw Answer of the scoring job)."""
        check_sampling(req)
        n = req.n or 1
        s = resolve(req.model)
        lim = state.limits
        if len(texts) * n > lim.max_inputs:
            raise OpenAIError(413, f"{len(texts)} prompts x n={n} choices in one request; the limit is {lim.max_inputs} "
                                   "choices: split the request", param)
        for i, t in enumerate(texts):
            if len(t) > lim.max_input_chars:
                raise OpenAIError(413, f"{param}[{i}] has {len(t)} characters; the limit is {lim.max_input_chars}: "
                                       "shorten it", param)
        if max_tokens > MAX_TOKENS:
            raise OpenAIError(400, f"max_tokens is {max_tokens}; the limit is {MAX_TOKENS}", "max_tokens")
        if logprobs is not None and echo and bb.kind != "causal":
            raise OpenAIError(400, f"echo with logprobs is served for decoder-only models; {bb.name} is {bb.kind}: its "
                                   "prompt is encoder input, which has no next-token log-probabilities", "echo")
        t0 = time.perf_counter()
        prompt_ids = token_ids(bb.tokenizer, texts)
        for i, ids in enumerate(prompt_ids):
            if not ids and not s.virtual_tokens:
                raise OpenAIError(400, f"{param}[{i}] is empty and model '{req.model}' has no soft prompt: nothing to "
                                       "continue from; give some text", param)
        rows = [t for t in texts for _ in range(n)]
        outs = [{"text": "", "ids": [], "finish_reason": "length", "prompt_ids": list(p), "prompt": t}
                for t, p in zip(texts, prompt_ids) for _ in range(n)]
        if max_tokens > 0:
            samplers = Sampler.for_rows(req.temperature, req.top_p, req.seed, len(rows))
            answers = await submit(Job(s, [], raw=rows, max_new_tokens=max_tokens, sampling=samplers), param)
            stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
            for o, a in zip(outs, answers):
                o.update(finish(a.tokens, stops))
        if logprobs is not None and bb.kind == "causal":
            scored = await submit(Job(s, [], score=[o["prompt_ids"] + o["ids"] for o in outs], top=logprobs), param)
            for o, a in zip(outs, scored):
                o["scored"], o["start"] = a, 0 if echo else len(o["prompt_ids"])
        elif logprobs is not None:  # seq2seq: the decoder's tokens after the encoder's [soft prompt, prompt]
            scored = await submit(Job(s, [], score=[o["ids"] for o in outs], top=logprobs, context=rows), param)
            for o, a in zip(outs, scored):
                o["scored"], o["start"] = a, 0
        state.metrics.latency.append(time.perf_counter() - t0)
        state.metrics.predictions[req.model] += len(rows)
        n_prompt = sum(len(p) for p in prompt_ids)  # counted once per prompt, as OpenAI does
        n_new = sum(len(o["ids"]) for o in outs)
        return outs, {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}

    def finish(tokens: list[int], stops: list[str]) -> dict[str, Any]:
        """The completion up to (and counting) EOS, cut before the first stop string."""
        eos = set(state.engine._eos.tolist())
        ids, reason = list(tokens), "length"
        for k, t in enumerate(ids):
            if t in eos:
                ids, reason = ids[: k + 1], "stop"
                break
        text = decode(ids)
        cuts = [i for i in (text.find(x) for x in stops if x) if i >= 0]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
            k = 0
            while k < len(ids) and len(decode(ids[:k])) < len(text):
                k += 1
            ids = ids[:k]
        return {"text": text, "ids": ids, "finish_reason": reason}

    def decode(ids: list[int]) -> str:
        return bb.tokenizer.decode(ids, skip_special_tokens=True)

    def legacy_logprobs(o: dict[str, Any], top: int) -> dict[str, Any]:
        """OpenAI's legacy logprobs: each token's string, log-prob, `top` most likely alternatives, and its offset
        in the prompt + completion text (special tokens such as EOS take no characters there)."""
        a, start = o["scored"], o["start"]
        tokens = [bb.tokenizer.decode([t]) for t in a.tokens]
        base = len(o["prompt"]) if bb.kind != "causal" else 0  # seq2seq: the ids are the completion's only
        offsets = [base + n for n in prefix_lengths(bb.tokenizer, a.tokens, start)]
        tops = None
        if top:
            tops = [None if pairs is None else {bb.tokenizer.decode([i]): lp for i, lp in pairs} for pairs in a.scores]
        return {"tokens": tokens[start:], "token_logprobs": a.logits[start:],
                "top_logprobs": tops[start:] if tops is not None else None, "text_offset": offsets[start:]}

    @app.post("/v1/completions", summary="OpenAI: greedy completion after a soft prompt")
    async def completions(req: CompletionRequest) -> Any:
        texts: list[Any] = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not texts:
            raise OpenAIError(400, "prompt is an empty list; give a string or a list of strings", "prompt")
        if not all(isinstance(t, str) for t in texts):
            texts = token_prompts(texts)
        for field in ("best_of", "suffix"):
            if getattr(req, field) not in (None, 1):
                raise OpenAIError(400, f"{field} is not supported; leave it out", field)
        outs, usage = await run(req, texts, 16 if req.max_tokens is None else req.max_tokens, "prompt",
                                req.logprobs, bool(req.echo))
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
        if req.echo:
            for o in outs:
                o["echo"] = o["prompt"]
        if req.stream:
            return sse(stream_text(head, outs, usage, include_usage(req), chat=False, top=req.logprobs))
        return {**head, "choices": [{"index": i, "text": o.get("echo", "") + o["text"],
                                     "logprobs": legacy_logprobs(o, req.logprobs) if "scored" in o else None,
                                     "finish_reason": o["finish_reason"]} for i, o in enumerate(outs)],
                "usage": usage}

    @app.post("/v1/chat/completions", summary="OpenAI: chat, rendered by the tokenizer's chat template")
    async def chat(req: ChatRequest) -> Any:
        if req.top_logprobs is not None and not req.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        text = render_chat(bb.tokenizer, [m.model_dump() for m in req.messages])
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        outs, usage = await run(req, [text], 16 if max_tokens is None else max_tokens, "messages",
                                (req.top_logprobs or 0) if req.logprobs else None)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": req.model}
        if req.stream:
            return sse(stream_text({**head, "object": "chat.completion.chunk"}, outs, usage, include_usage(req),
                                   chat=True))
        return {**head, "choices": [{"index": i, "message": {"role": "assistant", "content": o["text"]},
                                     "logprobs": chat_logprobs(o) if "scored" in o else None,
                                     "finish_reason": o["finish_reason"]} for i, o in enumerate(outs)], "usage": usage}

    def chat_logprobs(o: dict[str, Any]) -> dict[str, Any]:
        """Chat's shape: per completion token, its string, log-prob, UTF-8 bytes and the most likely alternatives."""
        a, start = o["scored"], o["start"]

        def entry(t: int, lp: float) -> dict[str, Any]:
            s = bb.tokenizer.decode([t])
            return {"token": s, "logprob": lp, "bytes": list(s.encode())}

        tops = a.scores or [[] for _ in a.tokens]
        return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in top or []]}
                            for t, lp, top in zip(a.tokens[start:], a.logits[start:], tops[start:])], "refusal": None}

    def token_prompts(prompts: list[Any]) -> list[str]:
        """Token-id prompts (lm-eval's tokenized requests): the engine takes text, so each is decoded, and served
        only when the server's tokenizer encodes that text back to exactly these ids (otherwise a one-line refusal)."""
        seqs = [prompts] if all(isinstance(t, int) for t in prompts) else prompts
        vocab = len(bb.tokenizer)
        out = []
        for i, ids in enumerate(seqs):
            if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise OpenAIError(400, f"prompt[{i}] must be text or a list of token ids below {vocab}", "prompt")
            text = bb.tokenizer.decode(ids, skip_special_tokens=True)  # what the tokenizer adds, it adds again
            if bb.tokenizer(text, add_special_tokens=True)["input_ids"] != ids:
                raise OpenAIError(400, f"prompt[{i}]: these token ids are not what the server's tokenizer makes of "
                                       "their text (another tokenizer, or special tokens); send text (lm-eval: "
                                       "tokenized_requests=False)", "prompt")
            out.append(text)
        return out

    def stream_text(head: dict[str, Any], outs: list[dict[str, Any]], usage: dict[str, int], with_usage: bool,
                    chat: bool, top: int | None = None) -> list[dict[str, Any]]:
        """Chunks whose texts join to the non-streamed text: one per token that completes a character; with
        logprobs, each chunk carries those of its tokens, so they too join to the non-streamed ones."""
        chunks = []

        def piece(i: int, text: str | None, reason: str | None = None, lp: Any = None) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                return {**head, "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}]}
            return {**head, "choices": [{"index": i, "text": text or "", "logprobs": lp, "finish_reason": reason}]}

        def cut(lps: Any, a: int, b: int) -> Any:
            if lps is None or a >= b:
                return None
            if chat:
                return {"content": lps[a:b], "refusal": None}
            return {k: (v[a:b] if v is not None else None) for k, v in lps.items()}

        for i, o in enumerate(outs):
            lps = None
            if "scored" in o:
                lps = chat_logprobs(o)["content"] if chat else legacy_logprobs(o, top or 0)
            n_ids = len(o["ids"])
            c0 = (len(lps) if chat else len(lps["tokens"])) - n_ids if lps is not None else 0  # completion's 1st
            if chat:
                chunks.append({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}]})
            if o.get("echo"):
                chunks.append(piece(i, o["echo"], lp=cut(lps, 0, c0)))
            final, sent, done = o["text"], 0, 0
            for k in range(1, n_ids + 1):
                cur = decode(o["ids"][:k])
                if cur.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                    continue
                upto = min(len(cur), len(final))
                if upto > sent:
                    chunks.append(piece(i, final[sent:upto], lp=cut(lps, c0 + done, c0 + k)))
                    sent, done = upto, k
            if sent < len(final):
                chunks.append(piece(i, final[sent:], lp=cut(lps, c0 + done, c0 + n_ids)))
                done = n_ids
            chunks.append(piece(i, None, o["finish_reason"], cut(lps, c0 + done, c0 + n_ids)))  # e.g. EOS: no text
        if with_usage:
            chunks.append({**head, "choices": [], "usage": usage})
        return chunks


def prefix_lengths(tokenizer: Any, ids: list[int], start: int = 0) -> list[int]:
    """len(decode(ids[:k])) for every k (0 before `start`, where no offset is returned). Decoding each prefix is
    quadratic in the prompt (lm-eval's echo scoring sends whole prompts), so the lengths are read off the
    tokenizer's offset mapping — the end of the last text token before k — when re-encoding the decoded text
    gives the same ids back and spot checks agree; otherwise each prefix is decoded."""
    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=True)

    lengths = [0] * len(ids)
    special = set(tokenizer.all_special_ids)
    plain = [t for t in ids if t not in special]
    try:
        enc = tokenizer(decode(ids), add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError):
        enc = None
    if enc is not None and "offset_mapping" in enc and enc["input_ids"] == plain:  # ByT5's tokenizer has none
        ends, end = iter(e for _, e in enc["offset_mapping"]), 0
        for k, t in enumerate(ids):
            lengths[k] = end
            if t not in special:
                end = next(ends)
        checks = {start, len(ids) - 1, *range(start, len(ids), max(1, (len(ids) - start) // 4))}
        if all(lengths[k] == len(decode(ids[:k])) for k in checks if 0 <= k < len(ids)):
            return lengths
    return [len(decode(ids[:k])) if k >= start else 0 for k in range(len(ids))]


def check_sampling(req: _Common) -> None:
    for field in ("presence_penalty", "frequency_penalty"):
        if getattr(req, field):
            raise OpenAIError(400, f"{field} is not supported; leave it out or send 0", field)
    if req.logit_bias:
        raise OpenAIError(400, "logit_bias is not supported; leave it out", "logit_bias")
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stops) > 4:
        raise OpenAIError(400, f"stop has {len(stops)} strings; at most 4", "stop")


def include_usage(req: _Common) -> bool:
    return bool((req.stream_options or {}).get("include_usage"))


def render_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """The tokenizer's chat template with the generation prompt (chat.render_chat, as hard prompts render), when it
    has one; otherwise one `role: content` line per message and a final `assistant:`. A BOS the template writes
    stays in the text, and tokenisation adds none on top of it (chat.token_ids)."""
    msgs = []
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise OpenAIError(400, f"messages[{i}].content: only text parts are served", "messages")
                parts.append(p["text"])
            content = "".join(parts)
        msgs.append({"role": m["role"], "content": content or ""})
    if has_template(tokenizer):
        try:
            return render_template(tokenizer, msgs)
        except PromptlabError as e:
            raise OpenAIError(400, str(e), "messages") from None
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"


def sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        for c in chunks:
            yield f"data: {json.dumps(c)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


__all__ = ["JSON_ROUTES", "ROUTES", "OpenAIError", "error_body", "is_openai", "register", "render_chat"]
