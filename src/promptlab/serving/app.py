"""The HTTP API: FastAPI over one Engine and one Batcher. OpenAPI docs at /docs and /openapi.json.

Errors are JSON `{"detail": "..."}` with one line that names the problem (and the field, for 422):
404 unknown prompt, 422 wrong or missing fields (or a body that is not UTF-8 JSON), 415 a body not sent as
JSON, 413 a limit (body bytes, inputs per request, characters per field, tokens), 408 a body that did not
arrive in time, 401/403 admin calls without the token, 503 + Retry-After when the queue is full or the
server is draining for shutdown.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from ..backbones import Backbone
from ..errors import PromptlabError
from ..tasks.base import Example
from ..tasks.predict_inputs import check_unicode, input_text
from .batcher import Batcher, QueueFull, ShuttingDown
from .engine import Engine, InputTooLong, Job
from .jobs import UpstreamFailed
from .metrics import Metrics
from .openai_api import JSON_ROUTES as OPENAI_JSON_ROUTES
from .openai_api import ROUTES as OPENAI_ROUTES
from .openai_api import error_body, is_openai, register
from .registry import Servable, check_name, is_hard_spec, load_servable


@dataclass
class Limits:
    max_body_bytes: int = 1_000_000
    max_inputs: int = 64
    max_input_chars: int = 10_000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    body_timeout_s: float = 30.0


@dataclass
class ServerState:
    backbone: Backbone
    engine: Engine
    prompts: dict[str, Servable]
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    artifact_roots: list[Path] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    batcher: Batcher | None = None
    draining: bool = False
    data: dict[str, str] = field(default_factory=dict)  # --data TASK=PATH

    def load(self, name: str, value: str) -> Servable:
        """Runs on the model thread: reading anchors or filling a KV cache uses the model."""
        s = load_servable(name, value, self.backbone, data=self.data)
        self.engine.attach(s)
        return s


# -- request and response bodies ---------------------------------------------------------------------------
class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"prompt": "sst2", "inputs": [{"text": "a gorgeous, witty film"}, {"text": "dull and overlong"}]}]})
    prompt: str = Field(description="name of a loaded prompt (GET /v1/prompts)")
    # Values are checked by input_text, as `predict` checks its JSONL: an unknown field is then reported as unknown
    # whatever its value, and HotpotQA's context may be its official list of paragraphs.
    inputs: list[dict[str, Any]] = Field(min_length=1, description="one object per input, with exactly the task's "
                                         "fields, each non-empty text (HotpotQA's context may also be its official "
                                         "[[title, [sentence, ...]], ...] list)")


class Prediction(BaseModel):
    label: str | None = Field(None, description="choice tasks: the predicted label")
    score: float | None = Field(None, description="choice tasks: its probability")
    scores: dict[str, float] | None = Field(None, description="choice tasks: probability of every label")
    text: str | None = Field(None, description="text tasks: the generated answer")


class PredictResponse(BaseModel):
    prompt: str
    task: str
    predictions: list[Prediction]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"path": "runs/sst2-pt"}]})
    path: str = Field(description="an artifact or run directory under an --artifact-root, or METHOD:TASK[:TEMPLATE]")


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text} for code, text in (
        (404, "unknown prompt"), (413, "a request limit was exceeded"), (422, "a field is missing, unknown or wrong"),
        (503, "queue full or shutting down; see Retry-After"))
}


# -- middleware: the body read whole, in time, as JSON; response counts ----------------------------------------
JSON_ROUTES = ("/v1/predict", "/v1/prompts/{name}", *OPENAI_JSON_ROUTES)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Guard:
    """Reads a request's body before the app does, so no client can hold a connection or the app's parser: a body
    over the limit is refused before it is read whole (413), one that does not arrive within the body timeout
    (a client sending a byte a second) gets 408, and a JSON route's body must be declared JSON (415) and be UTF-8
    JSON without lone surrogates (422), which FastAPI would answer with 400 or let through to a 500. The body is
    then replayed to the app. Every response is counted by route."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                status[0] = 499  # until answered: a client that goes away mid-body is logged as nginx logs it
                body = await self._read(scope, receive, send_counted)
                if body is None:  # answered here, or the client went away
                    return
                status[0] = 500
                receive = _replay(body, receive)
            await self.app(scope, receive, send_counted)
        finally:
            self.state.metrics.record_response(scope["method"], _route(scope["path"]), status[0])

    async def _read(self, scope: dict, receive: Callable, send: Callable) -> bytes | None:
        lim = self.state.limits
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        oa = is_openai(scope["path"])  # errors in OpenAI's shape there
        if declared is not None and declared.isdigit() and int(declared) > lim.max_body_bytes:
            return await _reply(send, 413, _too_large_text(lim.max_body_bytes), close=True, oa=oa)
        json_route = _route(scope["path"]) in JSON_ROUTES
        if json_route:
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
            if ctype != "application/json" and not ctype.endswith("+json"):
                got = f"Content-Type '{ctype}'" if ctype else "no Content-Type"
                return await _reply(send, 415, f"the body must be JSON but the request has {got}; send it with "
                                               "'Content-Type: application/json'", close=True, oa=oa)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lim.body_timeout_s
        chunks: list[bytes] = []
        seen = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return await _reply(send, 408, f"the request body did not arrive within {lim.body_timeout_s:g} s "
                                               f"({seen} bytes came); send the whole body at once", close=True, oa=oa)
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > lim.max_body_bytes:
                return await _reply(send, 413, _too_large_text(lim.max_body_bytes), close=True, oa=oa)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        problem = _json_problem(body) if json_route else None
        if problem:
            return await _reply(send, 400 if oa else 422, problem, oa=oa)
        return body


def _json_problem(body: bytes) -> str | None:
    """Why a JSON route's body cannot be read, in one line; None when it can."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return (f"body: not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start}); send JSON encoded as "
                "UTF-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return f"body: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); send one JSON object"
    if _SURROGATE_ESCAPE.search(text):  # "\ud800" decodes to a lone surrogate, which no encoder can write back
        try:
            _walk_strings(doc, "body")
        except PromptlabError as e:
            return str(e)
    return None


def _walk_strings(doc: Any, loc: str) -> None:
    if isinstance(doc, str):
        check_unicode(doc, loc)
    elif isinstance(doc, dict):
        for k, v in doc.items():
            check_unicode(k, f"a key in {loc}")
            _walk_strings(v, k if loc == "body" else f"{loc}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            _walk_strings(v, f"{loc}[{i}]")


def _replay(body: bytes, receive: Callable) -> Callable:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, as uvicorn would deliver it

    return replay


def _too_large_text(limit: int) -> str:
    return f"request body is larger than {limit} bytes; send fewer or shorter inputs per request"


async def _reply(send: Callable, status: int, detail: str, close: bool = False, oa: bool = False) -> None:
    """A JSON error sent by the middleware itself; `close` when the rest of the body is left unread, so the
    connection cannot be reused mid-body. `oa`: in OpenAI's error shape."""
    body = json.dumps(error_body(detail, code=str(status)) if oa else {"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body})


KNOWN_ROUTES = ("/v1/predict", "/v1/prompts", "/healthz", "/metrics", "/docs", "/openapi.json", *OPENAI_ROUTES)


def _route(path: str) -> str:
    if path.startswith("/v1/prompts/"):
        return "/v1/prompts/{name}"
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    return path if path in KNOWN_ROUTES else "other"


def _loc(loc: tuple | list) -> str:
    """('body', 'inputs', 0, 'text') -> 'inputs[0].text'."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


# -- the app -------------------------------------------------------------------------------------------------
def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        lim = state.limits
        make = getattr(state.engine, "batcher", Batcher)  # an engine may bring its own (--engine vllm)
        state.batcher = make(state.engine, state.metrics, max_batch=lim.max_batch, max_wait_ms=lim.max_wait_ms,
                             max_queue=lim.max_queue)
        state.batcher.start()
        yield
        state.draining = True  # uvicorn has finished the requests in flight; finish anything still queued
        await state.batcher.close()

    app = FastAPI(
        title="promptlab", lifespan=lifespan,
        description="Many soft prompts (and hard prompts) on one frozen model. Requests for different prompts "
                    "that arrive together run as one batch, each row with its own prompt.",
    )
    app.add_middleware(Guard, state=state)
    bearer = HTTPBearer(auto_error=False)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Bodies that are not JSON never get here: Guard answers them.
        errors = [{"loc": _loc(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5]) or "invalid request"
        if is_openai(request.url.path):
            return JSONResponse(status_code=400, content=error_body(detail, errors[0]["loc"] if errors else None))
        return JSONResponse(status_code=422, content={"detail": detail, "errors": errors[:50]})

    def admin(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if state.token is None:
            raise HTTPException(403, "loading and unloading prompts is off; start the server with --token T "
                                     "(or PROMPTLAB_TOKEN) and send 'Authorization: Bearer T'")
        given = (creds.credentials if creds is not None else "").encode()
        if not hmac.compare_digest(given, state.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    def get_batcher() -> Batcher:
        if state.batcher is None or state.draining:
            raise HTTPException(503, "the server is shutting down; retry shortly", headers={"Retry-After": "5"})
        return state.batcher

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=ERRORS,
              summary="Predict with a loaded prompt")
    async def predict(req: PredictRequest, batcher: Batcher = Depends(get_batcher)) -> dict[str, Any]:  # noqa: B008
        s = state.prompts.get(req.prompt)
        if s is None:
            raise HTTPException(404, f"unknown prompt '{req.prompt}'; loaded: {', '.join(sorted(state.prompts)) or 'none'}"
                                     " (GET /v1/prompts lists them)")
        examples = _examples(s, req.inputs, state.limits)
        t0 = time.perf_counter()
        try:
            answers = await batcher.submit(Job(s, examples))
        except QueueFull:
            state.metrics.rejected_full += 1
            raise HTTPException(503, f"the queue is full ({batcher.max_queue} requests waiting); retry after 1 s",
                                headers={"Retry-After": "1"}) from None
        except ShuttingDown:
            raise HTTPException(503, "the server is shutting down; retry shortly", headers={"Retry-After": "5"}) from None
        except InputTooLong as e:
            raise HTTPException(413, str(e)) from None
        except UpstreamFailed as e:
            raise HTTPException(502, str(e)) from None
        except PromptlabError as e:
            raise HTTPException(422, str(e)) from None
        state.metrics.latency.append(time.perf_counter() - t0)
        state.metrics.predictions[s.name] += len(examples)
        labels = s.task.labels if s.task.kind == "choices" else None
        return {"prompt": s.name, "task": s.task.name, "predictions": [a.to_json(labels) for a in answers]}

    @app.get("/v1/prompts", summary="Loaded prompts: name, task, method, virtual tokens, bytes")
    async def prompts() -> dict[str, Any]:
        return {"model": state.backbone.name, "kind": state.backbone.kind,
                "prompts": [s.describe() for s in state.prompts.values()]}

    @app.put("/v1/prompts/{name}", dependencies=[Depends(admin)], responses={
        201: {"description": "loaded"}, 400: {"model": Problem, "description": "cannot be loaded on this model"},
        401: {"model": Problem}, 403: {"model": Problem}}, summary="Load (or replace) a prompt; needs the token")
    async def put_prompt(name: str, body: LoadRequest, response: Response,
                         batcher: Batcher = Depends(get_batcher)) -> dict[str, Any]:  # noqa: B008
        try:
            check_name(name)
        except PromptlabError as e:
            raise HTTPException(422, str(e)) from None
        if "\x00" in body.path:  # no file name holds one; Path.resolve() would raise ValueError (a 500)
            raise HTTPException(422, "path holds a NUL byte; pass an artifact or run directory, or METHOD:TASK")
        if not is_hard_spec(body.path):
            _check_readable(body.path, state.artifact_roots)
        try:
            s = await batcher.call(state.load, name, body.path)
        except PromptlabError as e:
            raise HTTPException(400, str(e)) from None
        response.status_code = 200 if name in state.prompts else 201
        state.prompts[name] = s
        return s.describe()

    @app.delete("/v1/prompts/{name}", dependencies=[Depends(admin)], responses={404: {"model": Problem}},
                summary="Unload a prompt; needs the token")
    async def delete_prompt(name: str) -> dict[str, str]:
        if state.prompts.pop(name, None) is None:
            raise HTTPException(404, f"unknown prompt '{name}'; loaded: {', '.join(sorted(state.prompts)) or 'none'}")
        return {"deleted": name}

    register(app, state)

    @app.get("/healthz", summary="Liveness: 200 while serving, 503 while draining")
    async def healthz() -> JSONResponse:
        ok = state.batcher is not None and not state.draining
        return JSONResponse(status_code=200 if ok else 503, content={
            "status": "ok" if ok else "draining", "model": state.backbone.name, "kind": state.backbone.kind,
            "prompts": len(state.prompts), "queue": state.batcher.depth if state.batcher else 0})

    @app.get("/metrics", summary="Request counts, batch sizes, latency percentiles (JSON)")
    async def metrics() -> dict[str, Any]:
        b = state.batcher
        return state.metrics.snapshot(queue_depth=b.depth if b else 0, in_flight_inputs=b.in_flight if b else 0,
                                      prompts=len(state.prompts), model_forwards=state.engine.forwards,
                                      kv_cache=state.engine.kv_cache,
                                      limits={k: getattr(state.limits, k) for k in Limits.__dataclass_fields__})

    return app


def _examples(s: Servable, inputs: list[dict[str, str]], limits: Limits) -> list[Example]:
    if len(inputs) > limits.max_inputs:
        raise HTTPException(413, f"{len(inputs)} inputs in one request; the limit is {limits.max_inputs}: "
                                 "split the request")
    fields = s.task.input_fields
    out = []
    for i, row in enumerate(inputs):
        for f in fields:
            if f not in row:
                raise HTTPException(422, f"inputs[{i}]: missing field '{f}'; prompt '{s.name}' (task '{s.task.name}') "
                                         f"takes fields {fields}")
        for f in row:
            if f not in fields:
                raise HTTPException(422, f"inputs[{i}]: unknown field '{f}'; prompt '{s.name}' (task "
                                         f"'{s.task.name}') takes fields {fields}")
        texts: dict[str, str] = {}
        meta: dict[str, Any] = {}
        for f in fields:
            try:
                texts[f], more = input_text(s.task, f, row[f], f"inputs[{i}].{f}")
            except PromptlabError as e:
                raise HTTPException(422, str(e)) from None
            meta.update(more)
            if len(texts[f]) > limits.max_input_chars:
                raise HTTPException(413, f"inputs[{i}].{f} has {len(texts[f])} characters; the limit is "
                                         f"{limits.max_input_chars}: shorten it")
        out.append(Example(str(i), texts, meta=meta))
    return out


def _check_readable(value: str, roots: list[Path]) -> None:
    path = Path(value).expanduser().resolve()
    if not any(path.is_relative_to(r) for r in roots):
        raise HTTPException(403, f"'{value}' is outside the directories this server may read "
                                 f"({', '.join(str(r) for r in roots) or 'none'}); start it with --artifact-root")
    if not path.is_dir():
        raise HTTPException(400, f"'{value}' is not a directory; pass an artifact or run directory")
