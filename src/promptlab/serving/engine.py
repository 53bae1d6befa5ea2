"""One forward pass for many soft prompts: every row carries its own prompt.

PEFT applies one prompt to a whole batch (its issue #759). Here a batch holds rows for different
prompts, and possibly different tasks: each row's virtual-token embeddings are gathered from its
servable and placed in front of its input embeddings, left-aligned, and the row is padded to the
longest `prompt + input` with masked positions. Hard prompts ride along as prompts of length 0.

Layout per backbone kind (what PEFT does for one prompt, done per row):
- encoder: `[P_i, x_i, pad]`; pooled exactly as `Backbone.encode` pools (virtual tokens pool like words);
  compared with that prompt's own label anchors.
- seq2seq: encoder input `[P_i, x_i, pad]` (relative positions, so nothing else moves); decoder scores
  each verbalizer, or generates.
- causal, choices: `[P_i, x_i + target, pad]` with positions 0.., or, with the KV cache, the prompt's
  precomputed keys/values `[K_i, masked gap up to the longest prompt]` then `x_i + target` at positions
  n_i... Generation (decode.py): `[pad, P_i, x_i]` through `generate` (positions follow the attention mask), or
  the cached prompt plus a plain decoding loop. Raw jobs (the OpenAI endpoints) generate from text as given, for
  their own number of tokens, greedy or sampled per row (sampling.py); score jobs give each token's log-prob after
  the prompt (one full forward).

Every path is checked against the offline predictor of each artifact (tests/test_serving.py).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

from .. import console
from ..backbones import Backbone
from ..chat import token_ids
from ..methods.readout import ANCHOR_SCALE, predictions_from_scores
from ..tasks.base import Example
from .decode import Decoding, out_cache, positions
from .jobs import Answer, InputTooLong, Job, Row
from .registry import Servable

# Generation settings that change greedy decoding; the cached greedy loop only runs when none is set.
_GREEDY_NEUTRAL = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
                   "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
                   "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
                   "sequence_bias": (None,), "exponential_decay_length_penalty": (None,),
                   "encoder_repetition_penalty": (None, 1.0), "num_beams": (None, 1)}


class Engine(Decoding):
    """Runs jobs for any mix of servables on one backbone. Not thread-safe: one caller at a time."""

    def __init__(self, backbone: Backbone, kv_cache: bool = True, max_rows: int = 128) -> None:
        self.backbone = backbone
        self.model = backbone.model
        self.device = backbone.device  # every tensor a batch is made of is made here
        self.max_rows = max_rows
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._takes_positions = "position_ids" in params
        self.kv_cache = kv_cache and backbone.kind == "causal" and kv_supported(self.model)
        gc = getattr(self.model, "generation_config", None)
        self._plain_greedy = gc is None or all(getattr(gc, k, None) in ok for k, ok in _GREEDY_NEUTRAL.items())
        eos = getattr(gc, "eos_token_id", None) if gc is not None else None
        eos = backbone.tokenizer.eos_token_id if eos is None else eos
        self._eos = torch.tensor(eos if isinstance(eos, list) else [eos] if eos is not None else [], dtype=torch.long,
                                 device=self.device)
        self.forwards = 0  # model calls made for batched rows (not counting grouped fallbacks)
        # absolute (or rotary) position limit; relative-position models such as T5 have none
        self._positions: int | None = backbone.positions

    # -- per-prompt state ---------------------------------------------------------------------------
    def attach(self, s: Servable) -> None:
        """Precompute what a prompt reuses for every request: a causal soft prompt's keys and values."""
        if self.kv_cache and s.prompt is not None and s.prompt.shape[0] > 0 and s.kv is None:
            s.kv = self._prompt_kv(s.prompt)

    @torch.inference_mode()
    def _prompt_kv(self, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        n = prompt.shape[0]
        out = self.model(inputs_embeds=prompt[None], attention_mask=torch.ones(1, n, dtype=torch.long, device=self.device),
                         position_ids=torch.arange(n, device=self.device)[None], use_cache=True)
        cache = out_cache(out)
        return [(layer.keys[0].clone(), layer.values[0].clone()) for layer in cache.layers]  # [heads, n, d]

    # -- entry points -------------------------------------------------------------------------------
    def predict(self, s: Servable, examples: list[Example], batch_size: int = 32) -> list[Answer]:
        """Offline use (`promptlab predict`): the same jobs the server runs, in chunks sorted by length."""
        order = sorted(range(len(examples)), key=lambda i: -sum(len(v) for v in examples[i].fields.values()))
        out: list[Answer | None] = [None] * len(examples)
        with console.progress(len(examples), "predict") as bar:  # at a terminal: a long --input file's progress
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                (res,) = self.run([Job(s, [examples[i] for i in idx])])
                if isinstance(res, Exception):
                    raise res
                for i, a in zip(idx, res):
                    out[i] = a
                bar.update(len(idx))
        return out  # type: ignore[return-value]

    def run(self, jobs: list[Job]) -> list[list[Answer] | Exception]:
        """Answers per job, in order; a job that fails gets its exception and the others still run."""
        results: list[Any] = [None] * len(jobs)
        choice_rows: list[Row] = []
        gen_rows: list[Row] = []
        score_rows: list[Row] = []
        for j, job in enumerate(jobs):
            s = job.servable
            try:
                if job.score is not None:
                    self._check_ids(s, job.score)
                    results[j] = [None] * len(job.score)
                    ctx = job.context or [""] * len(job.score)
                    score_rows.extend(Row(j, i, s, c, ids=x, top=job.top) for i, (x, c) in enumerate(zip(job.score, ctx)))
                    continue
                if job.raw is not None:
                    self._check_lengths(s, job.raw, extra=job.max_new_tokens, cut=False)
                    results[j] = [None] * len(job.raw)
                    samplers = job.sampling or [None] * len(job.raw)
                    gen_rows.extend(Row(j, i, s, t, max_new=job.max_new_tokens, sampler=samplers[i])
                                    for i, t in enumerate(job.raw))
                    continue
                examples = s.prepare(self.backbone, job.examples)
                if not s.batchable:
                    results[j] = self._alone(s, examples)
                    continue
                texts = s.render(examples, self.backbone)
                self._check_lengths(s, texts)
            except Exception as e:  # noqa: BLE001 — the user's mistake (PromptlabError) or a bug: this job only
                results[j] = e
                continue
            results[j] = [None] * len(texts)
            bucket = choice_rows if s.task.kind == "choices" else gen_rows
            bucket.extend(Row(j, i, s, t) for i, t in enumerate(texts))
        for rows, fn in ((choice_rows, self._choices), (gen_rows, self._generate), (score_rows, self._score)):
            for chunk in self._chunks(rows):
                try:
                    answers = fn(chunk)
                except Exception as e:  # noqa: BLE001 — a bug, not the user's: fail these jobs, keep serving
                    for r in chunk:
                        results[r.job] = e
                    continue
                for r, a in zip(chunk, answers):
                    if isinstance(results[r.job], list):
                        results[r.job][r.pos] = a
        return results

    def _check_lengths(self, s: Servable, texts: list[str], extra: int | None = None, cut: bool = True) -> None:
        """Virtual tokens come on top of the tokenizer's truncation: refuse what would run past the model's
        positions (offline, `Backbone.input_budget` cuts such an input to fit; a server says so instead of
        answering a cut input), and inputs with nothing to read."""
        bb = self.backbone
        n = s.prompt.shape[0]
        full = [len(x) for x in token_ids(bb.tokenizer, texts)]  # a chat text's BOS is in it already
        lengths = [min(k, bb.max_length) for k in full]  # what the model would read; the message says what came
        if extra is None:  # choices: lm_batch truncates input + target
            extra = s.max_new_tokens if s.task.kind == "text" else 0
        if bb.kind != "causal":
            extra = 0
        for i, k in enumerate(lengths):
            if n + k == 0:
                raise InputTooLong(f"inputs[{i}] is empty after templating; give it some text")
            if not cut and full[i] > bb.max_length:  # a raw completion prompt is never cut silently
                raise InputTooLong(f"inputs[{i}] is {full[i]} tokens; the model reads at most {bb.max_length}: "
                                   "shorten it")
            if self._positions is not None and n + k + extra > self._positions:
                raise InputTooLong(
                    f"inputs[{i}] is {full[i]} tokens; with prompt '{s.name}' ({n} virtual tokens"
                    f"{f', {extra} new tokens' if extra else ''}) the model takes at most {self._positions}: shorten it")

    def _chunks(self, rows: list[Row]) -> list[list[Row]]:
        """At most `max_rows` model rows per forward (a choice input costs one row per verbalizer)."""
        out: list[list[Row]] = []
        cur: list[Row] = []
        used = 0
        for r in rows:
            choices = r.max_new is None and r.ids is None and r.servable.task.kind == "choices"
            cost = len(r.servable.task.verbalizers) if choices and self.backbone.kind != "encoder" else 1
            if cur and used + cost > self.max_rows:
                out.append(cur)
                cur, used = [], 0
            cur.append(r)
            used += cost
        return out + ([cur] if cur else [])

    # -- choices ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _choices(self, rows: list[Row]) -> list[Answer]:
        if self.backbone.kind == "encoder":
            pooled = F.normalize(self._encode([r.servable.prompt for r in rows], [r.text for r in rows]), dim=-1)
            logits = [ANCHOR_SCALE * pooled[i] @ r.servable.anchors.to(pooled.device).T for i, r in enumerate(rows)]
        else:
            ex_s = [r.servable for r in rows for _ in r.servable.task.verbalizers]
            ex_x = [r.text for r in rows for _ in r.servable.task.verbalizers]
            ex_t = [v for r in rows for v in r.servable.task.verbalizers]
            logits = list(self._logprob(ex_s, ex_x, ex_t).split([len(r.servable.task.verbalizers) for r in rows]))
        return [_choice_answer(r, lg) for r, lg in zip(rows, logits)]

    def _encode(self, prompts: list[torch.Tensor], texts: list[str]) -> torch.Tensor:
        """Pooled embeddings of `[P_i, x_i]`, through `Backbone.pool` as `Backbone.encode` pools them. [B, H]"""
        bb = self.backbone
        enc = bb._tok(texts)
        emb, mask = self._contiguous(prompts, enc["input_ids"], enc["attention_mask"])
        self.forwards += 1
        out = self.model(inputs_embeds=emb, attention_mask=mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [B, W, H]
        return bb.pool(hidden, mask, dtype=torch.float32)

    def _logprob(self, servables: list[Servable], texts: list[str], targets: list[str]) -> torch.Tensor:
        """Summed log p(target | prompt_i, text) per row, as `Backbone.sequence_logprob` computes it. [R]"""
        bb = self.backbone
        batch = bb.lm_batch(texts, targets, scoring=[s.scoring for s in servables])  # the offline tokenisation
        ids, att, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        prompts = [s.prompt for s in servables]
        self.forwards += 1
        if bb.kind == "seq2seq":
            emb, mask = self._contiguous(prompts, ids, att)
            logits = self.model(inputs_embeds=emb, attention_mask=mask, labels=labels).logits  # [R, T, V]
            tgt = labels
        else:
            if self._use_kv(servables):
                logits = self._cached_logits(servables, ids, att)  # [R, T, V]
            else:
                emb, mask = self._contiguous(prompts, ids, att)
                kw = {"position_ids": positions(mask)} if self._takes_positions else {}
                full = self.model(inputs_embeds=emb, attention_mask=mask, **kw).logits  # [R, W, V]
                n = torch.tensor([p.shape[0] for p in prompts], device=self.device)
                idx = (n[:, None] + torch.arange(ids.shape[1], device=self.device)[None]).clamp(max=full.shape[1] - 1)
                logits = full.gather(1, idx[..., None].expand(-1, -1, full.shape[-1]))
            logits, tgt = logits[:, :-1], labels[:, 1:]  # position t predicts token t+1
        logp = torch.log_softmax(logits.float(), dim=-1)
        keep = tgt != -100
        picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * keep).sum(-1)

    # -- KV cache -----------------------------------------------------------------------------------
    def _use_kv(self, servables: list[Servable]) -> bool:
        return self.kv_cache and any(s.kv is not None for s in servables) and all(
            s.kv is not None or s.prompt.shape[0] == 0 for s in servables)

    def _cached_logits(self, servables: list[Servable], ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Logits over the input tokens only, the prompts' keys/values coming from the cache. [R, T, V]"""
        cache, prefix, n = self._batch_cache(servables)
        mask = torch.cat([prefix, att], dim=1)
        pos = (n[:, None] + torch.arange(ids.shape[1], device=self.device)[None]) * att  # padding: masked anyway
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                          **{self._cache_kw: cache}).logits

    def _batch_cache(self, servables: list[Servable]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Each row's prompt keys/values, padded to the longest prompt: (DynamicCache, prefix mask [R, P], n [R])."""
        from transformers import DynamicCache

        n = torch.tensor([s.prompt.shape[0] for s in servables], device=self.device)
        width = int(n.max())
        prefix = (torch.arange(width, device=self.device)[None] < n[:, None]).long()
        distinct: dict[int, int] = {}
        for s in servables:
            if s.kv is not None:
                distinct.setdefault(id(s), len(distinct))
        uniq = {id(s): s for s in servables if s.kv is not None}
        order = sorted(uniq.values(), key=lambda s: distinct[id(s)])
        # row -> slot in the stacked prompts; rows without a prompt point at an all-zero (masked) slot
        slot = torch.tensor([distinct.get(id(s), len(distinct)) for s in servables], device=self.device)
        layers = []
        k0, v0 = order[0].kv[0]
        for layer in range(len(order[0].kv)):
            keys = k0.new_zeros(len(order) + 1, k0.shape[0], width, k0.shape[-1])
            vals = v0.new_zeros(len(order) + 1, v0.shape[0], width, v0.shape[-1])
            for i, s in enumerate(order):
                k, v = s.kv[layer]
                keys[i, :, : k.shape[1]] = k
                vals[i, :, : v.shape[1]] = v
            layers.append((keys.index_select(0, slot), vals.index_select(0, slot)))
        return DynamicCache(ddp_cache_data=layers, config=self.model.config), prefix, n

    # -- layouts ------------------------------------------------------------------------------------
    def _contiguous(self, prompts: list[torch.Tensor], ids: torch.Tensor,
                    att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[P_i, x_i, pad]` per row: inputs_embeds [B, W, H] and attention mask [B, W]."""
        words = self.model.get_input_embeddings()(ids)  # [B, T, H]
        lens = att.sum(1).tolist()
        width = max(p.shape[0] + n for p, n in zip(prompts, lens))
        emb = words.new_zeros(len(lens), width, words.shape[-1])
        mask = att.new_zeros(len(lens), width)
        for b, (p, n) in enumerate(zip(prompts, lens)):
            # Right-padded tokenisation puts the real tokens first; left padding would not (checked).
            assert bool(att[b, :n].all()), "expected right-padded input"
            k = p.shape[0]
            emb[b, :k] = p
            emb[b, k : k + n] = words[b, :n]
            mask[b, : k + n] = 1
        return emb, mask

    # -- prompts that run on their own --------------------------------------------------------------
    def _alone(self, s: Servable, examples: list[Example]) -> list[Answer]:
        """Prefix tuning, LoRA, CoT, kNN: their predictor, one group per prompt."""
        p = s.predictor
        readout, model = p.readout, p.model
        if s.task.kind == "choices" and readout is not None and model is not None:
            inputs = p.inputs(examples)
            with torch.inference_mode():
                model.eval()
                if self.backbone.kind == "encoder":
                    logits = torch.cat([readout.choice_logits(model, inputs[i : i + 32]) for i in range(0, len(inputs), 32)])
                else:
                    logits = self.backbone.score_choices(inputs, s.task.verbalizers, model, scoring=s.scoring)
            return [_choice_answer(Row(0, i, s, x), lg) for i, (x, lg) in enumerate(zip(inputs, logits))]
        preds = p.predict(examples)
        return [Answer(input=q.input, prediction=q.prediction, label=q.label,
                       score=q.score if q.label is not None else None) for q in preds]


def _choice_answer(row: Row, logits: torch.Tensor) -> Answer:
    (pred,) = predictions_from_scores(row.servable.task, [row.text], logits[None])
    probs = torch.softmax(logits.float(), dim=-1).tolist()
    return Answer(input=row.text, prediction=pred.prediction, label=pred.label, score=pred.score, scores=probs,
                  logits=logits.float().tolist())


def kv_supported(model: Any) -> bool:
    """Plain full-attention DynamicCache layers and explicit positions: what prompt caching relies on."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 — an architecture the cache does not know: serve without it
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
