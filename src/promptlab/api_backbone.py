"""A model behind an OpenAI-compatible server (`--model openai:MODEL@BASE_URL`) as a backbone for hard prompts.

It implements what the hard methods (zero-shot, few-shot, cot, prompt-search) call on a Backbone — kind, name,
tokenizer, max_length, input_budget, score_choices, generate — and nothing that needs weights: soft methods
refuse it in Method.check (kind "api"). Local models keep the Backbone dataclass; this is a separate class
because almost nothing of Backbone (embeddings, PEFT wrapping, batching tensors) applies.

Endpoints. Choices are scored by /v1/completions with `echo=True, logprobs=1, max_tokens=0`: the server returns
the log-probability of every prompt token, and a choice's score is the sum over the tokens of the continuation
" " + choice only (lm-eval's convention: no EOS, the " " delimiter). Where the server gives no such log-probs
(a 400, or null logprobs: OpenAI's chat models, servers without echo), `--api-scoring auto` falls back to
generating a short greedy answer and matching it to the choices (`match`), and says so in metrics.json;
`--api-scoring logprobs` refuses instead. Generation (cot, text tasks) uses /v1/completions, which continues the
raw text promptlab renders exactly as a local model reads it. `--api-endpoint chat` (chat-only models) sends
/v1/chat/completions a messages list instead, and scoring can only match there: the hard methods' chat format
(chat.py) is on, but the "template" is the server's — the tokenizer here (ServerTemplate) keeps each conversation
as its messages (chat.Conversation): `--system-prompt` as the system message, each demonstration as a user message
and the assistant's answer, the input as the last user message. `--chat-template`/`--chat-template-kwargs` are
refused there (the server renders with its own template).

Token counts. There is no local tokenizer for a remote model, so input budgets and the counts in input_stats
are an estimate: one token per 4 characters (OpenAI's rule of thumb for English), unless `--api-tokenizer DIR`
names a local tokenizer of the same model, which then counts exactly. What the server billed comes from its
`usage` fields, recorded with an estimated cost in metrics.json ("api").
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch

from .api_cache import DEFAULT_DIR, ResponseCache
from .api_client import ApiClient, ServerRefused, parse_price
from .chat import Conversation, has_template
from .config import ApiConfig
from .errors import ApiError, ConfigError, ModelError

PREFIX = "openai:"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONTEXT = 4096  # input budget when --max-input-tokens is not given: servers do not say theirs
CHARS_PER_TOKEN = 4
NO_MATCH = -1e4  # a choice the generated answer is not: a log-probability no real one reaches


def is_api_model(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_model(name: str) -> tuple[str, str]:
    """'openai:MODEL@BASE_URL' -> (MODEL, BASE_URL); the URL defaults to OpenAI's. The split is at the last '@'
    before 'http', so a model id may hold '@'."""
    rest = name[len(PREFIX):]
    at = rest.rfind("@http")
    model, url = (rest[:at], rest[at + 1:]) if at >= 0 else (rest, DEFAULT_BASE_URL)
    if not model or "@" in rest and at < 0:
        raise ConfigError(f"--model '{name}' is not openai:MODEL@BASE_URL; e.g. openai:gpt-4o-mini@"
                          "https://api.openai.com/v1 or openai:my-model@http://127.0.0.1:8000/v1")
    return model, url.rstrip("/")


class CharTokenizer:
    """The tokenizer interface promptlab's budgets use (call, decode, len), counting one token per 4 characters.
    A piece's id is its index in a table built as texts arrive, so decode returns the exact text cut at piece
    boundaries."""

    all_special_tokens: ClassVar[list[str]] = []
    eos_token = pad_token = None
    backend_tokenizer = None
    name = f"estimate: 1 token per {CHARS_PER_TOKEN} characters"

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def _id(self, piece: str) -> int:
        i = self._ids.get(piece)
        if i is None:
            with self._lock:
                i = self._ids.setdefault(piece, len(self._pieces))
                if i == len(self._pieces):
                    self._pieces.append(piece)
        return i

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True, truncation: bool = False,
                 max_length: int | None = None, **_: Any) -> dict[str, Any]:
        one = isinstance(texts, str)
        out = []
        for t in [texts] if one else texts:
            ids = [self._id(t[i:i + CHARS_PER_TOKEN]) for i in range(0, len(t), CHARS_PER_TOKEN)]
            out.append(ids[:max_length] if truncation and max_length else ids)
        return {"input_ids": out[0] if one else out}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True, **_: Any) -> str:
        return "".join(self._pieces[i] for i in ids)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._pieces[i] for i in ids]

    def __len__(self) -> int:
        return len(self._pieces)


class ServerTemplate:
    """A chat endpoint model's tokenizer: counts tokens as `inner` does, and its chat template keeps a conversation
    as its messages (the server applies the model's own template to them)."""

    chat_template = "the server's"
    sends_messages = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)

    def apply_chat_template(self, messages: list[dict[str, Any]], tokenize: bool = False,
                            add_generation_prompt: bool = True, **_: Any) -> Conversation:
        return Conversation(messages)


def load_api_backbone(name: str, api: ApiConfig | None = None, max_length: int | None = None) -> ApiBackbone:
    api = api or ApiConfig()
    model, url = parse_model(name)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--model '{name}': the base URL '{url}' is not http(s)://; e.g. http://127.0.0.1:8000/v1")
    if api.api_endpoint == "chat" and api.api_scoring == "logprobs":
        raise ConfigError("--api-scoring logprobs needs /v1/completions (chat completions do not echo the prompt's "
                          "log-probs); drop --api-endpoint chat, or use --api-scoring match")
    if api.api_tokenizer:
        from transformers import AutoTokenizer  # only when asked for: counting exactly costs a tokenizer load

        try:
            tokenizer: Any = AutoTokenizer.from_pretrained(api.api_tokenizer)
        except (OSError, ValueError) as e:
            raise ModelError(f"--api-tokenizer '{api.api_tokenizer}' cannot be loaded ({str(e).splitlines()[0][:120]}); "
                             "pass a local directory holding the model's tokenizer files") from None
    else:
        tokenizer = CharTokenizer()
    if api.api_endpoint == "chat":
        tokenizer = ServerTemplate(tokenizer)
    cache = ResponseCache(None if api.api_cache == "off" else api.api_cache or DEFAULT_DIR)
    client = ApiClient(model, url, api.api_key_env, cache, api.api_concurrency, api.api_timeout, api.api_retries)
    return ApiBackbone(name, client, tokenizer, max_length or DEFAULT_CONTEXT, api)


class ApiBackbone:
    kind = "api"
    model = None  # no weights here: Readout and predictors pass it along untouched
    family = "api"
    total_params = 0
    positions = None
    device = torch.device("cpu")  # where score tensors are built
    dtype = torch.float32

    def __init__(self, name: str, client: ApiClient, tokenizer: Any, max_length: int, api: ApiConfig) -> None:
        self.name, self.client, self.tokenizer, self.max_length, self.api = name, client, tokenizer, max_length, api
        self.endpoint = "chat/completions" if api.api_endpoint == "chat" else "completions"
        self.extras: dict[str, Any] = {}
        self.scoring: str | None = None  # "logprobs" or "match", once a choice task has been scored
        self.scoring_note: str | None = None
        self.unmatched = 0
        self.sent_messages = False  # whether a run's requests carried a conversation (system, demonstrations)
        self._answer_tokens = 8
        self._echo_new = 0  # max_tokens of an echo request: 0, or 1 where a server refuses 0
        self._lock = threading.Lock()

    # -- what artifacts and metrics read -------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "model_type": "api"}

    def check_fingerprint(self, other: dict[str, Any], where: str) -> None:
        if other.get("kind") not in (None, "api"):
            raise ModelError(f"{where} was built on the local model '{other.get('name')}' and '{self.name}' is an API "
                             "model: a soft prompt has no weights to attach to there, and a hard prompt is rebuilt "
                             "for it with --method (zero-shot, few-shot, cot, prompt-search)")

    def check_chat(self, mode: str, system: str | None, kwargs: str | None) -> None:
        """The chat settings this endpoint takes (chat.resolve_chat asks), refused in one line otherwise."""
        if self.endpoint == "chat/completions":
            for given, flag in ((mode != "auto", f"--chat-template {mode}"), (kwargs, "--chat-template-kwargs")):
                if given:
                    raise ConfigError(f"{flag}: an API model's server applies its own chat template to the messages "
                                      "promptlab sends (--api-endpoint chat); drop the flag")
        elif system is not None and not has_template(self.tokenizer):
            raise ConfigError("--system-prompt on an API model needs messages: add --api-endpoint chat (/v1/completions"
                              " reads raw text; or give --api-tokenizer DIR whose chat template renders it here)")

    def describe(self) -> dict[str, Any]:
        return {"device": "api", "name": self.client.base_url, "dtype": None}

    def begin_run(self) -> None:
        """Counters per run: a compare runs several methods on one backbone."""
        self.client.usage = type(self.client.usage)()
        self.scoring, self.scoring_note, self.unmatched, self._echo_new = None, None, 0, 0
        self.sent_messages = False

    def report(self) -> dict[str, Any]:
        """metrics.json's "api": the server, how choices were scored, the tokens billed and their cost."""
        out: dict[str, Any] = {
            "model": self.client.model, "base_url": self.client.base_url, "endpoint": f"/v1/{self.endpoint}",
            "scoring": self.scoring, "token_counts": f"tokenizer {self.api.api_tokenizer}" if self.api.api_tokenizer
            else CharTokenizer.name, "chat_messages": self.sent_messages,
            "concurrency": self.client.concurrency, "cache": str(self.client.cache.path) if self.client.cache.path
            else None,
            "usage": self.client.usage.report(self.client.model, parse_price(self.api.api_price_per_mtok)),
        }
        if self.scoring_note:
            out["scoring_note"] = self.scoring_note
        if self.scoring == "match":
            out["unmatched_answers"] = self.unmatched
        return out

    # -- budgets ---------------------------------------------------------------------------------------------------
    def input_budget(self, model: Any = None, new_tokens: int = 0, virtual: int | None = None) -> int:
        return max(1, self.max_length - new_tokens)

    @contextmanager
    def embedding_cache(self) -> Iterator[None]:
        yield

    def _cut(self, text: str, budget: int, keep_end: bool) -> str:
        """The text within `budget` (counted tokens), cut as a local backbone cuts: a scored prompt keeps its end
        (the question nearest the answer), a generation prompt its start."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return text
        if isinstance(text, Conversation):  # the last user message (the input) gives up what is over
            last = text.messages[-1]["content"]
            cut = self._cut(last, max(0, len(self.tokenizer(last, add_special_tokens=False)["input_ids"]) - len(ids)
                                      + budget), keep_end)
            return Conversation([*text.messages[:-1], {"role": "user", "content": cut}])
        return self.tokenizer.decode(ids[len(ids) - budget:] if keep_end else ids[:budget], skip_special_tokens=True)

    # -- generation ------------------------------------------------------------------------------------------------
    def _request(self, text: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
        if self.endpoint == "chat/completions":
            if isinstance(text, Conversation):
                self.sent_messages = True
            messages = text.messages if isinstance(text, Conversation) else [{"role": "user", "content": text}]
            return {"messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}
        return {"prompt": text, "max_tokens": max_tokens, "temperature": 0, **extra}

    def _text(self, data: dict[str, Any]) -> str:
        first = data["choices"][0]
        text = (first.get("message") or {}).get("content") if self.endpoint == "chat/completions" else first.get("text")
        if not isinstance(text, str):
            raise ApiError(f"{self.client.base_url}/{self.endpoint} answered without text ({str(first)[:120]}); is it "
                           "an OpenAI-compatible /v1 endpoint?")
        return text

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.client.post(self.endpoint, body)
        except ServerRefused as e:
            raise ApiError(f"{self.client.base_url}/{self.endpoint} refused the request (HTTP {e.status}: "
                           f"{e.message})") from None

    def generate(self, prompts: Sequence[str], max_new_tokens: int, model: Any = None, batch_size: int = 16) -> list[str]:
        """Greedy (temperature 0) answers, one request per prompt, `--api-concurrency` at a time."""
        budget = self.input_budget(new_tokens=max_new_tokens)
        cut = [self._cut(p, budget, False) for p in prompts]  # here: a tokenizer is not shared across threads
        return self.client.map(lambda p: self._text(self._post(self._request(p, max_new_tokens))).strip(), cut)

    # -- choices ---------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def score_choices(self, prompts: Sequence[str], choices: Sequence[str], model: Any = None,
                      batch_size: int = 32, scoring: str = "lmeval", special: bool | None = None) -> torch.Tensor:
        """Log-likelihood of every choice after every prompt [N, C] (or, where the server gives none, 0 for the
        choice a generated answer matches and NO_MATCH for the rest). Always lm-eval's convention (`scoring`):
        a server's echo gives the prompt's tokens as it tokenised them, and no EOS after a choice."""
        if scoring != "lmeval":
            raise ConfigError(f"--scoring {scoring}: an API model scores choices as lm-eval does (' ' + choice, no "
                              "EOS); drop the flag")
        prompts, choices = list(prompts), list(choices)
        if not prompts:
            return torch.empty(0, len(choices))
        longest = max(len(c) for c in self.tokenizer([" " + c for c in choices], add_special_tokens=False)["input_ids"])
        prompts = [self._cut(p, max(1, self.max_length - longest), True) for p in prompts]
        self._answer_tokens = max(longest + 4, 8)  # room for a matched answer: the longest choice and a little
        rows: list[list[float]] = []
        if self.scoring is None:  # the first prompt decides, alone, before the others go out together
            rows.append(self._first(prompts[0], choices))
            prompts = prompts[1:]
        score = self._logprobs if self.scoring == "logprobs" else self._match
        rows += self.client.map(lambda p: score(p, choices), prompts)
        return torch.tensor(rows, dtype=torch.float32)

    def _first(self, prompt: str, choices: list[str]) -> list[float]:
        mode = self.api.api_scoring
        if self.endpoint == "chat/completions":
            self.scoring, self.scoring_note = "match", "chat completions give no prompt log-probs"
            return self._match(prompt, choices)
        if mode == "match":
            self.scoring = "match"
            return self._match(prompt, choices)
        try:
            try:
                row = self._logprobs(prompt, choices)
            except Refused:
                # Some servers refuse max_tokens=0; with 1, the one generated token lies after the choice and is not
                # counted (what lm-eval's local-completions sends).
                self._echo_new = 1
                row = self._logprobs(prompt, choices)
                self.scoring_note = "the server refused max_tokens=0; echoed with max_tokens=1"
        except LacksLogprobs as e:
            if mode == "logprobs":
                raise ApiError(f"{self.client.base_url}/completions gives no prompt log-probs ({e}), which "
                               "--api-scoring logprobs needs; use --api-scoring match (or auto)") from None
            self.scoring, self.scoring_note = "match", f"the server gives no prompt log-probs ({e})"
            return self._match(prompt, choices)
        self.scoring = "logprobs"
        return row

    def _logprobs(self, prompt: str, choices: list[str]) -> list[float]:
        fulls = [f"{prompt} {c}" for c in choices]
        body = {"prompt": fulls, "echo": True, "logprobs": 1, "max_tokens": self._echo_new, "temperature": 0}
        try:
            data = self.client.post("completions", body)
        except ServerRefused as e:
            raise (Refused if self._echo_new == 0 else LacksLogprobs)(f"HTTP {e.status}: {e.message}") from None
        got = sorted(data["choices"], key=lambda c: c.get("index", 0))
        if len(got) != len(fulls):
            raise ApiError(f"{self.client.base_url}/completions answered {len(got)} choices to {len(fulls)} prompts; "
                           "is it an OpenAI-compatible /v1 endpoint?")
        return [continuation_logprob(c.get("logprobs"), len(prompt), len(full)) for c, full in zip(got, fulls)]

    def _match(self, prompt: str, choices: list[str]) -> list[float]:
        """A short greedy answer, matched to the choices: 0 for the one it names, NO_MATCH for the others (all 0
        where it names none: the first choice wins, as in any tie, and the run counts it as unmatched)."""
        if self.endpoint == "chat/completions":  # a chat model answers in sentences unless it is told the options
            ask = f"\n\nAnswer with one of: {', '.join(choices)}."
            prompt = prompt.ask(ask) if isinstance(prompt, Conversation) else prompt + ask
        text = self._text(self._post(self._request(prompt, self._answer_tokens)))
        best = match_choice(text, choices)
        if best is None:
            with self._lock:
                self.unmatched += 1
            return [0.0] * len(choices)
        return [0.0 if i == best else NO_MATCH for i in range(len(choices))]


class LacksLogprobs(Exception):
    """The server answered an echo/logprobs request without the prompt's log-probs."""


class Refused(LacksLogprobs):
    """The server refused an echo request of max_tokens=0 (it may take max_tokens=1)."""


def continuation_logprob(lp: Any, start: int, end: int) -> float:
    """Sum of the log-probs of the tokens that begin in [start, end) of the echoed text: the continuation, not the
    prompt, and not what a server adds after the text (an EOS at `end`, a generated token)."""
    if not isinstance(lp, dict) or not lp.get("token_logprobs") or not lp.get("text_offset"):
        raise LacksLogprobs("its reply holds no token_logprobs/text_offset")
    picked = [v for off, v in zip(lp["text_offset"], lp["token_logprobs"]) if start <= off < end]
    if not picked or any(v is None for v in picked):
        raise LacksLogprobs("no log-prob for the continuation's tokens")
    return float(sum(picked))


def _norm(text: str) -> str:
    line = text.strip().split("\n")[0] if text.strip() else ""
    return " ".join(re.sub(r"[^\w ]+", " ", line.lower()).split())


def match_choice(text: str, choices: list[str]) -> int | None:
    """The choice a generated answer names: the longest one it starts with, else the one it mentions first, else
    the closest by spelling (difflib, ratio >= 0.6); None when nothing is close."""
    said = _norm(text)
    names = [_norm(c) for c in choices]
    starts = [i for i, n in enumerate(names) if n and (said == n or said.startswith(n + " "))]
    if starts:
        return max(starts, key=lambda i: len(names[i]))
    found = [(m.start(), i) for i, n in enumerate(names) if n for m in [re.search(rf"\b{re.escape(n)}\b", said)] if m]
    if found:
        return min(found)[1]
    close = difflib.get_close_matches(said.split(" ")[0] if said else "", names, n=1, cutoff=0.6)
    return names.index(close[0]) if close else None
