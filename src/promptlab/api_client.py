"""Requests to an OpenAI-compatible server: the cache first, then the `openai` client, with bounded concurrency,
and every fault turned into one line (errors.ApiError).

The official `openai` client rather than hand-written httpx: it already retries what should be retried (429,
408, 409, 5xx, timeouts, dropped connections) with exponential backoff and jitter (0.5 s doubling to 8 s, less
up to 25%), honours Retry-After (up to 60 s), and reports how many retries a request took. Its raw-response
form is used so that the JSON is parsed here (a malformed body becomes one line, not a traceback) and so
that what is cached is exactly what the server said.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .api_cache import ResponseCache, request_key
from .errors import ApiError

T = TypeVar("T")
R = TypeVar("R")

# USD per million tokens (input, output), from openai.com/api/pricing (standard tier) as of 2025; a guide, not a
# bill: --api-price-per-mtok IN,OUT overrides it, and a model not listed has no cost (null), never 0.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40), "gpt-3.5-turbo": (0.50, 1.50), "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "davinci-002": (2.00, 2.00), "babbage-002": (0.40, 0.40),
}


def parse_price(text: str | None) -> tuple[float, float] | None:
    """`--api-price-per-mtok IN,OUT` (config.PRICE_RE has checked it) -> (in, out) USD per million tokens."""
    if text is None:
        return None
    a, b = (float(x) for x in text.split(","))
    return a, b


@dataclass
class Usage:
    """What the run cost: fresh requests (billed) and cached ones (free) counted apart."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_requests: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    endpoints: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, endpoint: str, usage: dict[str, Any] | None, cached: bool, retries: int = 0) -> None:
        usage = usage or {}
        p, c = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        with self._lock:
            self.endpoints[endpoint] = self.endpoints.get(endpoint, 0) + 1
            if cached:
                self.cached_requests += 1
                self.cached_prompt_tokens += p
                self.cached_completion_tokens += c
            else:
                self.requests += 1
                self.retries += retries
                self.prompt_tokens += p
                self.completion_tokens += c

    def report(self, model: str, price: tuple[float, float] | None) -> dict[str, Any]:
        known = price or PRICES.get(model)
        out: dict[str, Any] = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        if known is None:
            out["cost_usd"] = None
            out["cost_note"] = f"no price known for '{model}'; pass --api-price-per-mtok IN,OUT"
        else:
            out["price_per_mtok"] = list(known)
            out["cost_usd"] = round((self.prompt_tokens * known[0] + self.completion_tokens * known[1]) / 1e6, 10)
            out["cached_cost_usd_saved"] = round(
                (self.cached_prompt_tokens * known[0] + self.cached_completion_tokens * known[1]) / 1e6, 10)
            out["cost_source"] = "--api-price-per-mtok" if price else "promptlab's price table"
        return out


class ServerRefused(Exception):
    """HTTP 400/422 to a request: the caller decides whether that means 'this server lacks a feature'."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ApiClient:
    """One model on one server: cached, retried, bounded requests."""

    def __init__(self, model: str, base_url: str, key_env: str | None, cache: ResponseCache, concurrency: int,
                 timeout: float, retries: int) -> None:
        import openai  # the runtime dependency is needed only by API models

        self.model, self.base_url, self.cache = model, base_url.rstrip("/"), cache
        self.key_env = key_env or "OPENAI_API_KEY"
        self.key_set = bool(os.environ.get(self.key_env))
        self.concurrency, self.timeout, self.retries = concurrency, timeout, retries
        self.usage = Usage()
        # A local server (vLLM, llama.cpp, promptlab serve) takes any key; the client refuses none at all.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(self.key_env) or "EMPTY",
                                     max_retries=retries, timeout=timeout)
        self._openai = openai

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """fn over items, at most `concurrency` at a time, results in order; the first error is raised."""
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(items)))
        try:
            return list(pool.map(fn, items))
        finally:  # after an error (a 401) or Ctrl-C, the requests not yet sent are not sent
            pool.shutdown(wait=False, cancel_futures=True)

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """The server's JSON for `body` at `endpoint` ("completions" or "chat/completions"), from the cache when
        the same request was answered before. Raises ServerRefused on 400/422, ApiError on any other fault."""
        body = {"model": self.model, **body}
        key = request_key(self.model, self.base_url, endpoint, body)
        hit = self.cache.get(key)
        if hit is not None:
            self.usage.add(endpoint, hit.get("usage"), cached=True)
            return hit
        data, retries = self._send(endpoint, body)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise ApiError(f"{self.base_url}/{endpoint} answered without 'choices' ({_short(json.dumps(data))}); is "
                           "it an OpenAI-compatible /v1 endpoint?")
        self.usage.add(endpoint, data.get("usage"), cached=False, retries=retries)
        self.cache.put(key, body, data)
        return data

    def _send(self, endpoint: str, body: dict[str, Any]) -> tuple[Any, int]:
        o, url = self._openai, f"{self.base_url}/{endpoint}"
        create = (self._client.chat.completions if endpoint == "chat/completions" else self._client.completions)
        after = f"after {self.retries} retries" if self.retries else "(retries off)"
        try:
            raw = create.with_raw_response.create(**body)
        except o.AuthenticationError as e:
            why = f"{self.key_env} is not set" if not self.key_set else f"the key in {self.key_env} was refused"
            raise ApiError(f"{url} answered 401 Unauthorized ({_msg(e)}): {why}; set {self.key_env} to a valid API "
                           "key, or name another variable with --api-key-env") from None
        except o.PermissionDeniedError as e:
            raise ApiError(f"{url} answered 403 Forbidden ({_msg(e)}); the key in {self.key_env} may not use model "
                           f"'{self.model}'") from None
        except o.NotFoundError as e:
            chat = "; a chat-only model needs --api-endpoint chat" if endpoint == "completions" else ""
            raise ApiError(f"{url} answered 404 Not Found ({_msg(e)}); check the model id '{self.model}' (GET "
                           f"{self.base_url}/models lists them) and that the base URL ends in /v1{chat}") from None
        except o.RateLimitError as e:
            raise ApiError(f"{url} is still rate-limiting (429: {_msg(e)}) {after}; lower --api-concurrency, raise "
                           "--api-retries, or retry later") from None
        except o.APITimeoutError:
            raise ApiError(f"{url} did not answer within {self.timeout:g} s {after}; raise --api-timeout, or check "
                           "the server") from None
        except o.APIConnectionError as e:
            raise ApiError(f"cannot connect to {url} ({_short(str(e.__cause__ or e))}) {after}; is the server "
                           "running and the base URL right?") from None
        except o.APIStatusError as e:
            if e.status_code in (400, 422):
                raise ServerRefused(e.status_code, _msg(e)) from None
            raise ApiError(f"{url} answered HTTP {e.status_code} ({_msg(e)}) {after}; retry later, or check the "
                           "server") from None
        text = raw.http_response.text
        try:
            return json.loads(text), raw.retries_taken
        except ValueError:
            raise ApiError(f"{url} answered with malformed JSON ({_short(text)!r}); is it an OpenAI-compatible /v1 "
                           "endpoint?") from None


def _msg(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(msg, str):
            return _short(msg)
    return _short(getattr(e, "message", None) or str(e))


def _short(text: str, n: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= n else line[: n - 3] + "..."
