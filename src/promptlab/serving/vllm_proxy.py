"""`serve --engine vllm`: promptlab keeps the prompts, the API and the batcher; a vLLM server generates.

vLLM removed its prompt adapters (PR #20588) but its completions API takes `prompt_embeds` when started with
`--enable-prompt-embeds`. For each generation row this engine builds what PEFT's prompt tuning would feed the
model, `[P_i; E(x_i)]` (the soft prompt's rows, then the backbone's word embeddings of the tokenized input, the
same tokenization `Engine._generate` uses), and posts it as a base64 `torch.save` of a float tensor, the encoding
vLLM's renderer reads (`torch.load(BytesIO(b64decode(...)), weights_only=True)`). Greedy decoding on both sides, so
the tokens equal promptlab's own engine's where the arithmetic agrees (bench/vllm.md).

What vLLM cannot do with prompt embeddings is refused in one line:
- scoring choices, and log-probabilities of given tokens (OpenAI `logprobs`/`echo`): vLLM returns no prompt
  log-probs for `prompt_embeds` requests ("prompt_logprobs is not compatible with prompt embeds", its
  renderers/online_renderer.py in 0.32), and a choice score is exactly a prompt log-prob;
- prompts that change the model's inside (prefix tuning's keys/values, LoRA), chain of thought's two passes, and
  encoder or seq2seq backbones: vLLM takes embeddings as a decoder-only model's input only.
The stdlib HTTP client (not httpx, a dev-only dependency here) keeps the server's runtime dependencies as they are.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..backbones import Backbone
from ..errors import ConfigError, ModelError, PromptlabError
from .batcher import Batcher, _Pending
from .engine import Engine
from .jobs import Answer, InputTooLong, Job, Row, UpstreamFailed
from .registry import Servable
from .sampling import Sampler

CHOICES_REFUSED = ("choice tasks are not served with --engine vllm: scoring a label needs the log-probability of its "
                   "tokens after the prompt, which vLLM does not return for prompt_embeds; serve this prompt with "
                   "--engine promptlab")
SCORE_REFUSED = ("logprobs and echo are not served with --engine vllm: vLLM returns no prompt log-probabilities for "
                 "prompt_embeds; drop them, or serve with --engine promptlab")


class VllmUnavailable(UpstreamFailed):
    """The vLLM server could not be reached or answered with an error (HTTP 502 to the client, one line)."""


def encode_embeds(emb: torch.Tensor) -> str:
    """A [T, H] tensor as vLLM's completions API reads `prompt_embeds`: base64 of its torch.save bytes."""
    buf = io.BytesIO()
    torch.save(emb.detach().to("cpu").contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_embeds(text: str) -> torch.Tensor:
    """The inverse of encode_embeds, as vLLM loads it (weights_only: no code runs)."""
    return torch.load(io.BytesIO(base64.b64decode(text, validate=True)), weights_only=True, map_location="cpu")


def check_servable(s: Servable, backbone: Backbone) -> None:
    """Refuse, in one line, a prompt that vLLM cannot run from embeddings."""
    if backbone.kind != "causal":
        raise ConfigError(f"--engine vllm serves decoder-only models; '{backbone.name}' is {backbone.kind} (vLLM takes "
                          "prompt embeddings as a decoder's input only): use --engine promptlab")
    if not s.batchable:
        raise ModelError(f"prompt '{s.name}' ({s.method}) cannot be served with --engine vllm: only input-level soft "
                         "prompts (prompt tuning, hybrid, P-tuning) and zero-/few-shot text become prompt embeddings; "
                         "prefix tuning and LoRA change the model's layers, which vLLM does not load; use --engine "
                         "promptlab")


class VllmClient:
    """POSTs to a vLLM OpenAI-compatible server; one request per row, run concurrently so vLLM's continuous
    batching sees them together."""

    def __init__(self, url: str, model: str | None = None, timeout: float = 600.0, workers: int = 64) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout
        self.model = model or self._served_model()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promptlab-vllm")

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if body is not None else "GET",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise VllmUnavailable(f"vLLM at {self.url} answered {e.code}: {_vllm_message(e)}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise VllmUnavailable(f"cannot reach vLLM at {self.url} ({reason}); start it with `vllm serve MODEL "
                                  "--enable-prompt-embeds` and pass its address as --vllm-url") from None

    def _served_model(self) -> str:
        data = self._request("/v1/models").get("data") or []
        if not data:
            raise VllmUnavailable(f"vLLM at {self.url} lists no model; pass --vllm-model")
        return str(data[0]["id"])

    def complete(self, embeds: list[torch.Tensor], max_tokens: list[int],
                 samplers: list[Sampler | None] | None = None) -> list[list[int]]:
        """Completion token ids for each prompt embedding, in order: greedy, or sampled with the row's temperature,
        top_p and seed (vLLM's own sampler: a seeded request repeats on vLLM, not token for token with promptlab's)."""
        def one(emb: torch.Tensor, k: int, sampler: Sampler | None) -> list[int]:
            body = {"model": self.model, "prompt_embeds": encode_embeds(emb), "max_tokens": k, "temperature": 0.0,
                    "return_token_ids": True}
            if sampler is not None:
                body.update(temperature=sampler.temperature, top_p=sampler.top_p,
                            seed=int(sampler.generator.initial_seed()) % 2**31)
            choice = self._request("/v1/completions", body)["choices"][0]
            return [int(t) for t in choice.get("token_ids") or []]

        return list(self._pool.map(one, embeds, max_tokens, samplers or [None] * len(embeds)))


def _vllm_message(e: urllib.error.HTTPError) -> str:
    try:
        doc = json.loads(e.read())
        msg = doc.get("error", {}).get("message") if isinstance(doc.get("error"), dict) else doc.get("message")
        return " ".join(str(msg or doc).split())[:300]
    except Exception:  # noqa: BLE001 — a body that is not vLLM's JSON: the status says enough
        return e.reason or "error"


class VllmBatcher(Batcher):
    """Dispatches requests to vLLM as they come, up to `concurrency` engine calls at once, instead of one batch at a
    time: vLLM batches continuously on its side, so holding a request back for the previous batch to finish only
    idles it (bench/vllm.md). Under load, what queued meanwhile still goes together, up to max_batch rows."""

    def __init__(self, engine: Engine, *args: Any, concurrency: int = 16, **kwargs: Any) -> None:
        super().__init__(engine, *args, **kwargs)
        self._executor.shutdown(wait=False)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="promptlab-model")
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task] = set()

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while await self._wait_for_items():
            await self._slots.acquire()
            batch = [p for p in self._take() if not p.future.done()] if self._items else []
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._running:
            await asyncio.gather(*self._running)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            await super()._run(batch)
        finally:
            self._slots.release()


class VllmEngine(Engine):
    """An Engine whose generation rows run on vLLM; everything else (templates, limits, the APIs) is promptlab's
    own, so /v1/predict and /v1/completions answer as with --engine promptlab. Several calls run at once
    (VllmBatcher): the tokenizer and the embedding lookup go one call at a time (a fast tokenizer shared across
    threads fails with 'Already borrowed'), the HTTP round trips overlap."""

    batcher = VllmBatcher

    def __init__(self, backbone: Backbone, client: VllmClient, max_rows: int = 128) -> None:
        super().__init__(backbone, kv_cache=False, max_rows=max_rows)
        self._cpu = threading.Lock()
        if backbone.kind != "causal":
            raise ConfigError(f"--engine vllm serves decoder-only models; '{backbone.name}' is {backbone.kind} (vLLM "
                              "takes prompt embeddings as a decoder's input only): use --engine promptlab")
        self.client = client

    def attach(self, s: Servable) -> None:
        check_servable(s, self.backbone)

    def run(self, jobs: list[Job]) -> list[list[Answer] | Exception]:
        refused: dict[int, Exception] = {}
        for j, job in enumerate(jobs):
            if job.score is not None:
                refused[j] = PromptlabError(SCORE_REFUSED)
            elif job.raw is None and job.servable.task is not None and job.servable.task.kind == "choices":
                refused[j] = PromptlabError(CHOICES_REFUSED)
        rest = [j for j in range(len(jobs)) if j not in refused]
        with self._cpu:  # released by _generate while vLLM computes
            done = iter(super().run([jobs[j] for j in rest]) if rest else [])
        return [refused[j] if j in refused else next(done) for j in range(len(jobs))]

    def embeds(self, s: Servable, text: str) -> tuple[torch.Tensor, list[int]]:
        """`[P; E(x)]` for one row, [n + T, H], and x's token ids."""
        bb = self.backbone
        ids = bb.tokenizer([text], truncation=True, max_length=bb.max_length)["input_ids"][0]
        with torch.inference_mode():
            words = bb.word_embeddings(ids)
        return torch.cat([s.prompt.to(words.dtype), words]).float(), list(ids)

    def _generate(self, rows: list[Row]) -> list[Answer]:
        bb = self.backbone
        limits = [r.servable.max_new_tokens if r.max_new is None else r.max_new for r in rows]
        embeds = []
        for r in rows:
            emb, _ = self.embeds(r.servable, r.text)
            if emb.shape[0] == 0:
                raise InputTooLong("an input is empty after templating; give it some text")
            embeds.append(emb)
        self.forwards += 1
        self._cpu.release()
        try:
            new = self.client.complete(embeds, limits, [r.sampler for r in rows])
        finally:
            self._cpu.acquire()
        outs = []
        for r, seq in zip(rows, new):
            text = bb.tokenizer.decode(seq, skip_special_tokens=True).strip()
            outs.append(Answer(input=r.text, prediction=text, tokens=seq))
        return outs

    def _choices(self, rows: list[Row]) -> list[Answer]:
        raise PromptlabError(CHOICES_REFUSED)

    def _score(self, rows: list[Row]) -> list[Answer]:
        raise PromptlabError(SCORE_REFUSED)

    def _alone(self, s: Servable, examples: list[Any]) -> list[Answer]:
        check_servable(s, self.backbone)
        raise PromptlabError(f"prompt '{s.name}' cannot run on --engine vllm")
