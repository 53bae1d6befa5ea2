"""Generation and per-token scoring for the engine's batched rows (a mixin of `Engine`, which owns the model, the
prompts' KV cache and the batch layouts these use)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessorList

from ..backbones import GREEDY
from ..errors import PromptlabError
from ..model_layout import left_padded_embeds
from .jobs import Answer, InputTooLong, Row
from .registry import Servable
from .sampling import SampledLogits, Sampler, pick


class Decoding:
    """Causal: the cached prompt plus a plain greedy loop when the KV cache serves the batch, `generate` otherwise;
    seq2seq: `generate` after `[P_i, x_i]` as encoder input. A row with a sampler (the OpenAI endpoints' temperature
    > 0) draws its tokens from its own generator (sampling.py) on every path."""

    backbone: Any
    model: Any
    device: Any
    forwards: int
    _positions: int | None
    _eos: torch.Tensor
    _plain_greedy: bool
    _cache_kw: str
    _takes_positions: bool

    @torch.inference_mode()
    def _generate(self, rows: list[Row]) -> list[Answer]:
        bb = self.backbone
        servables = [r.servable for r in rows]
        texts = [r.text for r in rows]
        samplers = [r.sampler for r in rows] if any(r.sampler is not None for r in rows) else None
        sample = {"logits_processor": LogitsProcessorList([SampledLogits(samplers)])} if samplers else {}
        limits = [s.max_new_tokens if r.max_new is None else r.max_new for r, s in zip(rows, servables)]
        max_new = max(limits)
        pad = bb.tokenizer.pad_token_id
        self.forwards += 1
        if bb.kind == "causal" and self._use_kv(servables) and self._plain_greedy:
            new = self._greedy_cached(servables, texts, max_new, samplers)
        elif bb.kind == "causal":
            ids = bb.tokenizer(texts, truncation=True, max_length=bb.max_length)["input_ids"]
            emb, mask = left_padded_embeds(self.model, [s.prompt for s in servables], ids)
            new = self.model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new,
                                      pad_token_id=pad, **GREEDY, **sample)  # only the new tokens come back
        else:
            enc = bb._tok(texts)
            emb, mask = self._contiguous([s.prompt for s in servables], enc["input_ids"], enc["attention_mask"])
            new = self.model.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new,
                                      pad_token_id=pad, **GREEDY, **sample)
            new = new[:, 1:]  # the decoder start token
        outs = []
        for r, k, seq in zip(rows, limits, new):
            seq = seq[:k]
            text = bb.tokenizer.decode(seq, skip_special_tokens=True).strip()
            outs.append(Answer(input=r.text, prediction=text, tokens=seq.tolist()))
        return outs

    def _greedy_cached(self, servables: list[Servable], texts: list[str], max_new: int,
                       samplers: list[Sampler | None] | None = None) -> torch.Tensor:
        """Decoding from each row's cached prompt (the prompt's keys/values are never recomputed): greedy, or the
        row's sampler's draw."""
        bb = self.backbone
        ids_list = bb.tokenizer(texts, truncation=True, max_length=bb.max_length)["input_ids"]
        dev = self.device
        lens = torch.tensor([len(x) for x in ids_list], device=dev)
        width = int(lens.max())
        pad = bb.tokenizer.pad_token_id
        ids = torch.full((len(texts), width), pad, dtype=torch.long, device=dev)
        att = torch.zeros((len(texts), width), dtype=torch.long, device=dev)
        for b, x in enumerate(ids_list):  # right padding: every query sees at least one real key
            ids[b, : len(x)] = torch.tensor(x, dtype=torch.long, device=dev)
            att[b, : len(x)] = 1
        cache, prefix, n = self._batch_cache(servables)
        mask = torch.cat([prefix, att], dim=1)
        pos = (n[:, None] + torch.arange(width, device=dev)[None]) * att
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{self._cache_kw: cache})
        cache = out_cache(out)
        nxt = pick(out.logits[torch.arange(len(texts), device=dev), lens - 1], samplers)
        cur = n + lens  # the next token's position
        done = torch.zeros(len(texts), dtype=torch.bool, device=dev)
        steps = []
        for step in range(max_new):
            tok = torch.where(done, torch.full_like(nxt, pad), nxt)
            steps.append(tok)
            done |= torch.isin(tok, self._eos)
            if bool(done.all()) or step == max_new - 1:
                break
            mask = torch.cat([mask, mask.new_ones(len(texts), 1)], dim=1)
            out = self.model(input_ids=tok[:, None], attention_mask=mask, position_ids=cur[:, None], use_cache=True,
                             **{self._cache_kw: cache})
            cache = out_cache(out)
            cur = cur + 1
            nxt = pick(out.logits[:, -1], samplers)
        return torch.stack(steps, dim=1) if steps else torch.empty(len(texts), 0, dtype=torch.long, device=dev)

    def _check_ids(self, s: Servable, seqs: list[list[int]]) -> None:
        if self.backbone.kind == "encoder":
            raise PromptlabError("per-token log-probabilities are computed for decoder models only")
        n = s.prompt.shape[0] if self.backbone.kind == "causal" else 0  # seq2seq: the prompt is encoder input
        for i, x in enumerate(seqs):
            if self._positions is not None and n + len(x) > self._positions:
                raise InputTooLong(f"inputs[{i}] is {len(x)} tokens; with prompt '{s.name}' ({n} virtual tokens) the "
                                   f"model takes at most {self._positions}: shorten it")

    @torch.inference_mode()
    def _score(self, rows: list[Row]) -> list[Answer]:
        """log p(token_t | prompt_i, tokens_<t) for every token of each row, by one full forward: of `[P_i, x_i]`
        for a causal model (the first token has none when the prompt is empty); for seq2seq, of the decoder over
        the row's ids with `[P_i, row.text]` as encoder input. Answer.logits: the log-probs, Answer.scores: the
        `top` most likely (token id, log-prob) pairs per position (None where the first token has no log-prob)."""
        dev = self.device
        width = max(1, max(len(r.ids) for r in rows))
        ids = torch.full((len(rows), width), int(self.backbone.tokenizer.pad_token_id or 0), dtype=torch.long, device=dev)
        att = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long, device=dev)
            att[b, : len(r.ids)] = 1
        prompts = [r.servable.prompt for r in rows]
        self.forwards += 1
        seq2seq = self.backbone.kind == "seq2seq"
        if seq2seq:
            enc = self.backbone._tok([r.text for r in rows])
            emb, mask = self._contiguous(prompts, enc["input_ids"], enc["attention_mask"])
            logits = self.model(inputs_embeds=emb, attention_mask=mask, labels=ids.masked_fill(att == 0, -100)).logits
        else:
            emb, mask = self._contiguous(prompts, ids, att)
            kw = {"position_ids": positions(mask)} if self._takes_positions else {}
            logits = self.model(inputs_embeds=emb, attention_mask=mask, **kw).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for b, r in enumerate(rows):
            if seq2seq:  # decoder position t predicts token t (the labels are shifted right inside the model)
                first, at = 0, logp[b, : len(r.ids)]
            else:
                n = r.servable.prompt.shape[0]
                first = int(n == 0)  # without a prompt the first token has nothing before it
                at = logp[b, max(n - 1, 0) : n + len(r.ids) - 1]  # position t predicts token t + 1: [T - first, V]
            tgt = torch.tensor(r.ids[first:], dtype=torch.long, device=dev)
            lps: list[float | None] = [None] * first + at.gather(-1, tgt[:, None]).squeeze(-1).tolist()
            top: list[list[tuple[int, float]] | None] = [None] * first
            if r.top:
                v, i = at.topk(r.top, dim=-1)
                top += [list(zip(ii, vv)) for ii, vv in zip(i.tolist(), v.tolist())]
            out.append(Answer(input="", prediction="", logits=lps, tokens=list(r.ids), scores=top if r.top else None))  # type: ignore[arg-type]
        return out


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def out_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
