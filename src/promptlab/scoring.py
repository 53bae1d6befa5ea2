"""Log-likelihood of a continuation after a context: how choices are tokenised, batched and scored.

Two conventions (`--scoring`, recorded in every run and artifact):
- `lmeval` (the default): lm-evaluation-harness's `loglikelihood` requests, so zero- and few-shot numbers sit
  beside the ones users know. The continuation is the target delimiter " " + the verbalizer, no EOS; the context's
  trailing spaces move to the continuation; a causal model encodes context + continuation whole and splits at the
  context's length (special tokens as the tokenizer adds them by default, none when the text already starts with
  the BOS string; an empty context is the BOS token, EOS where there is none); a seq2seq encoder reads the context
  as the tokenizer encodes it (T5 appends </s>), the decoder the continuation without special tokens.
  `acc_norm` divides each choice's log-likelihood by the verbalizer's length in characters (lm-eval's
  `completion_len`, taken without the delimiter).
- `eos`: promptlab's earlier convention: context and " " + verbalizer + EOS tokenised apart (seq2seq: the
  verbalizer with the tokenizer's special tokens), kept so older artifacts score as they were trained.
Text answers are always trained with EOS (a generated answer has to learn to stop).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .chat import token_ids
from .config import SCORINGS
from .model_layout import encoder_reusable, virtual_tokens

if TYPE_CHECKING:
    from .backbones import Backbone

__all__ = ["SCORINGS", "encode_pairs", "lm_batch", "normalised", "score_choices", "sequence_logprob"]
TARGET_DELIMITER = " "  # lm-eval's default target_delimiter


def prefix_token_id(tokenizer: Any) -> int:
    """What lm-eval conditions an empty context on: BOS, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer: Any, texts: list[str], special: bool | None) -> list[list[int]]:
    """lm-eval's `tok_encode`: `special` None is the tokenizer's default, except for a text that already starts
    with the BOS as text (a rendered chat template), which gets none added (chat.token_ids)."""
    if special is not None:
        return tokenizer(texts, add_special_tokens=special)["input_ids"] if texts else []
    return token_ids(tokenizer, texts)


def encode_pairs(tokenizer: Any, kind: str, contexts: Sequence[str], choices: Sequence[str],
                 special: bool | None = None) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per pair, exactly as lm-eval's HFLM.loglikelihood and `_encode_pair` make
    them for the request (context, TARGET_DELIMITER + choice). `special`: as `_encode`'s (None: lm-eval's)."""
    ctxs, conts = [], []
    for c, ch in zip(contexts, choices):
        cont = TARGET_DELIMITER + ch
        n = len(c) - len(c.rstrip())
        if n:
            c, cont = c[:-n], c[-n:] + cont
        ctxs.append(c)
        conts.append(cont)
    out: list[tuple[list[int], list[int]]] = [([], [])] * len(ctxs)
    full = [i for i, c in enumerate(ctxs) if c]
    empty = [i for i, c in enumerate(ctxs) if not c]
    if empty:  # lm-eval: the prefix token stands for the context, unless the continuation starts with it
        first = prefix_token_id(tokenizer)
        for i, cont in zip(empty, _encode(tokenizer, [conts[i] for i in empty], False)):
            out[i] = ([first], cont) if cont[:1] != [first] else (cont[:1], cont[1:])
    if full:
        uniq = list(dict.fromkeys(ctxs[i] for i in full))  # a prompt's context is encoded once for all its choices
        by_text = dict(zip(uniq, _encode(tokenizer, uniq, special)))
        ctx_ids = [by_text[ctxs[i]] for i in full]
        if kind == "seq2seq":  # encoded apart: the encoder and the decoder read them; each distinct text once
            texts = list(dict.fromkeys(conts[i] for i in full))
            by_cont = dict(zip(texts, _encode(tokenizer, texts, False)))
            cont_ids = [by_cont[conts[i]] for i in full]
        else:  # encoded whole and split at the context's length, as lm-eval does
            whole = _encode(tokenizer, [ctxs[i] + conts[i] for i in full], special)
            cont_ids = [w[len(c):] for w, c in zip(whole, ctx_ids)]
        for i, c, t in zip(full, ctx_ids, cont_ids):
            out[i] = (c, t)
    return out


def lm_batch(bb: Backbone, prompts: Sequence[str], targets: Sequence[str], model: Any = None,
             scoring: str | Sequence[str] = "lmeval", special: bool | None = None) -> dict[str, torch.Tensor]:
    """Tokenise (prompt, target) pairs for a loss on the target only; padding and prompt are -100 in `labels`.
    `model`: the model the batch is for (a soft prompt's virtual tokens are kept room for). `scoring`: one
    convention, or one per row (the server batches prompts made under either)."""
    if not isinstance(scoring, str):
        return _mixed_batch(bb, prompts, targets, model, list(scoring), special)
    if scoring == "eos":
        return _eos_batch(bb, prompts, targets, model)
    budget = bb.input_budget(model)
    pairs = encode_pairs(bb.tokenizer, bb.kind, prompts, targets, special)
    pad = bb.tokenizer.pad_token_id
    if bb.kind == "seq2seq":
        # lm-eval keeps the context's last max_length tokens, and the continuation whole
        enc = [c[-budget:] for c, _ in pairs]
        ids, att = _right_pad(enc, pad)
        lab, _ = _right_pad([t[: bb.max_length] for _, t in pairs], -100)
        return {"input_ids": ids.to(bb.device), "attention_mask": att.to(bb.device), "labels": lab.to(bb.device)}
    # causal: the context cut on the left where context + continuation run past the budget (lm-eval does too)
    rows = []
    for c, t in pairs:
        t = t[: budget - 1]
        rows.append((c[len(c) + len(t) - budget:] if len(c) + len(t) > budget else c, t))
    return _causal_rows(bb, rows)


def _mixed_batch(bb: Backbone, prompts: Sequence[str], targets: Sequence[str], model: Any, scorings: list[str],
                 special: bool | None) -> dict[str, torch.Tensor]:
    """Rows under different conventions in one batch: each group tokenised as `lm_batch` does, padded to one width
    on the right (pad token, mask 0, label -100) and put back in row order."""
    groups = {s: [i for i, x in enumerate(scorings) if x == s] for s in dict.fromkeys(scorings)}
    if len(groups) == 1:
        return lm_batch(bb, prompts, targets, model, scorings[0] if scorings else "lmeval", special)
    parts = [(idx, lm_batch(bb, [prompts[i] for i in idx], [targets[i] for i in idx], model, s, special))
             for s, idx in groups.items()]
    fill = {"input_ids": bb.tokenizer.pad_token_id, "attention_mask": 0, "labels": -100}
    order = torch.tensor([i for idx, _ in parts for i in idx]).argsort()
    out = {}
    for key, value in fill.items():
        width = max(b[key].shape[1] for _, b in parts)
        out[key] = torch.cat([torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=value)
                              for _, b in parts])[order.to(parts[0][1][key].device)]
    return out


def _right_pad(seqs: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    # one tensor from padded lists: a copy into the tensor per row cost 10% of a tiny T5's scoring time
    ids = torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)
    att = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, att


def _causal_rows(bb: Backbone, rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """prompt + target per row, right-padded: right padding keeps the absolute positions of GPT-2-style models
    right (PEFT prompt learning drops position_ids)."""
    ids, att = _right_pad([p + t for p, t in rows], bb.tokenizer.pad_token_id)
    lab = torch.full_like(ids, -100)
    for r, (p, t) in enumerate(rows):
        lab[r, len(p) : len(p) + len(t)] = torch.tensor(t, dtype=torch.long)
    return {"input_ids": ids.to(bb.device), "attention_mask": att.to(bb.device), "labels": lab.to(bb.device)}


def _eos_batch(bb: Backbone, prompts: Sequence[str], targets: Sequence[str], model: Any) -> dict[str, torch.Tensor]:
    """The `eos` convention: prompt and " " + target + EOS tokenised apart, so the boundary is exact."""
    eos = bb.tokenizer.eos_token or ""
    if bb.kind == "seq2seq":
        enc = bb._tok(prompts, max_length=bb.input_budget(model))  # BART's encoder positions are absolute
        labels = bb.tokenizer(list(targets), padding=True, truncation=True, max_length=bb.max_length,
                              return_tensors="pt")
        lab = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100).to(bb.device)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": lab}
    budget = bb.input_budget(model)
    p_ids = bb.tokenizer(list(prompts), add_special_tokens=False, truncation=True, max_length=budget)["input_ids"]
    t_ids = [t[: budget - 1] for t in bb.tokenizer([" " + t + eos for t in targets], add_special_tokens=False)["input_ids"]]
    return _causal_rows(bb, [(p[len(p) - (budget - len(t)):] if len(p) + len(t) > budget else p, t)
                             for p, t in zip(p_ids, t_ids)])


def sequence_logprob(bb: Backbone, batch: dict[str, torch.Tensor], model: Any = None, **extra: Any) -> torch.Tensor:
    """Sum of log p(target token) per row, with gradients. [B] `extra`: e.g. precomputed encoder_outputs."""
    model = model or bb.model
    labels = batch["labels"]
    if bb.kind == "seq2seq":
        # decoder inputs made here rather than from `labels`: given labels, the model also computes a cross-entropy
        # loss over the full vocabulary that nothing reads; no cache either (building one copies the config: 15% of
        # a tiny T5's scoring time). PEFT wrappers get labels: prompt learning pads them for its virtual tokens.
        shift = getattr(type(model), "prepare_decoder_input_ids_from_labels", None)
        dec = {"decoder_input_ids": shift(model, labels)} if shift is not None else {"labels": labels}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **dec,
                    **extra)
        logits = out.logits  # [B, T, V]
        tgt = labels
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, -labels.shape[1] :][:, :-1]  # drop virtual-token positions; predict next
        tgt = labels[:, 1:]
    # x_t - logsumexp(x): a full [B, T, V] log-softmax tensor is never written (it cost more than a small model's
    # forward); no boolean indexing, so batches on the `meta` device run too
    lf = logits.float()
    picked = lf.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) - lf.logsumexp(-1)  # [B, T]
    return (picked * (tgt != -100)).sum(-1)


@torch.inference_mode()
def score_choices(bb: Backbone, prompts: Sequence[str], choices: Sequence[str], model: Any = None,
                  batch_size: int = 32, scoring: str = "lmeval", special: bool | None = None) -> torch.Tensor:
    """Log-likelihood of every choice after every prompt. [N, C]"""
    n, c = len(prompts), len(choices)
    scores = torch.empty(n, c)
    per = max(1, batch_size // c)
    reuse = bb.kind == "seq2seq" and c > 1 and encoder_reusable(model or bb.model)
    if reuse and scoring == "lmeval" and _seq2seq_one_token(bb, prompts, choices, special):
        per = batch_size  # one decoder row per prompt (below): batch_size rows a forward, as the caller asked
    todo = list(range(n))
    if bb.kind == "causal" and scoring == "lmeval" and c > 1 and not virtual_tokens(model or bb.model):
        # one-token choices (most verbalizers): one forward per prompt instead of one per choice, as lm-eval does
        scores, todo = _one_token_choices(bb, prompts, choices, model, batch_size, special)
    for part in bb._batches([prompts[i] for i in todo], per):
        idx = [todo[i] for i in part]
        rows_p = [prompts[i] for i in idx for _ in choices]
        rows_t = [ch for _ in idx for ch in choices]
        batch = lm_batch(bb, rows_p, rows_t, model, scoring, special)
        extra = {}
        if reuse:
            # Each prompt sits in c rows: encode one copy and share the states, instead of encoding the same input
            # once per choice. One-token choices (most verbalizers) all read the decoder's first step, whose input
            # is the start token for every choice: one row per prompt, encoder and that step in one call, read at
            # each choice's token. A PEFT prompt goes through the wrapper (it puts its virtual tokens in front);
            # otherwise the encoder runs alone and the decoder reads its states repeated per choice.
            one = torch.arange(0, len(rows_p), c)
            m = model or bb.model
            ids, att, lab = batch["input_ids"][one], batch["attention_mask"][one], batch["labels"]
            one_token = lab.shape[1] == 1 and bool((lab != -100).all())
            if one_token or virtual_tokens(m):
                start = torch.full((len(idx), 1), int(bb.model.config.decoder_start_token_id or 0), device=bb.device)
                out = m(input_ids=ids, attention_mask=att, decoder_input_ids=start, use_cache=False)
                if one_token:
                    lf = out.logits[:, 0].float()  # [P, V]; the same x_t - logsumexp(x) as sequence_logprob
                    lp = lf.gather(-1, lab.view(len(idx), c)) - lf.logsumexp(-1, keepdim=True)
                    scores[idx] = lp.cpu()
                    continue
                states = out.encoder_last_hidden_state
            else:
                states = m.get_encoder()(input_ids=ids, attention_mask=att).last_hidden_state
            extra = {"encoder_outputs": (states.repeat_interleave(c, dim=0),)}
        lp = sequence_logprob(bb, batch, model, **extra)
        scores[idx] = lp.view(len(idx), c).float().cpu()
    return scores


def _seq2seq_one_token(bb: Backbone, prompts: Sequence[str], choices: Sequence[str], special: bool | None) -> bool:
    """Whether every choice is one decoder token after every prompt. The decoder's text is the choice after the
    context's trailing whitespace (`encode_pairs`), so each distinct trailing whitespace is tried once."""
    tails = dict.fromkeys(p[len(p.rstrip()):] for p in prompts)
    return all(len(t) == 1 for tail in tails
               for _, t in encode_pairs(bb.tokenizer, "seq2seq", ["x" + tail] * len(choices), choices, special))


def _one_token_choices(bb: Backbone, prompts: Sequence[str], choices: Sequence[str], model: Any, batch_size: int,
                       special: bool | None) -> tuple[torch.Tensor, list[int]]:
    """What lm-eval's one-token continuation cache computes: the next-token log-probabilities after each context
    (one row per prompt, not per choice), read at every choice's token. Returns the scores [N, C] and the prompts
    where some choice is not one token after this context (a merge across the boundary): the caller scores those
    row by row."""
    c = len(choices)
    scores = torch.empty(len(prompts), c)
    budget = bb.input_budget(model)
    rest: list[int] = []
    for idx in bb._batches(prompts, batch_size):
        pairs = encode_pairs(bb.tokenizer, bb.kind, [prompts[i] for i in idx for _ in choices], list(choices) * len(idx),
                             special)
        keep, ctxs, toks = [], [], []
        for r, i in enumerate(idx):
            mine = pairs[r * c : (r + 1) * c]
            if all(len(t) == 1 for _, t in mine):
                keep.append(i)
                ctxs.append(mine[0][0][-(budget - 1):])
                toks.append([t[0] for _, t in mine])
            else:
                rest.append(i)
        if not keep:
            continue
        last = _last_logits(bb, model or bb.model, ctxs)  # [B, V]
        logp = last.float().log_softmax(-1).gather(-1, torch.tensor(toks, device=last.device))
        scores[keep] = logp.cpu()
    return scores, rest


def _last_logits(bb: Backbone, model: Any, ctxs: list[list[int]]) -> torch.Tensor:
    """The logits after each context's last token. [B, V] Where the model takes them, left padding with explicit
    positions and `logits_to_keep=1`: the LM head and the softmax run on one position per row instead of all
    (for a small model they cost more than its layers)."""
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" not in params or "position_ids" not in params:
        ids, att = _right_pad(ctxs, bb.tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(bb.device), attention_mask=att.to(bb.device)).logits
        return logits[torch.arange(len(ctxs), device=logits.device), (att.sum(1) - 1).to(logits.device)]
    width = max(len(c) for c in ctxs)
    ids = torch.full((len(ctxs), width), bb.tokenizer.pad_token_id, dtype=torch.long)
    att = torch.zeros((len(ctxs), width), dtype=torch.long)
    for r, c in enumerate(ctxs):
        ids[r, width - len(c):] = torch.tensor(c, dtype=torch.long)
        att[r, width - len(c):] = 1
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(bb.device), attention_mask=att.to(bb.device), position_ids=pos.to(bb.device),
                logits_to_keep=1)
    return out.logits[:, -1]


def normalised(scores: torch.Tensor, choices: Sequence[str]) -> torch.Tensor:
    """lm-eval's acc_norm scores: each choice's log-likelihood over its length in characters. [N, C]"""
    return scores / torch.tensor([float(max(1, len(ch))) for ch in choices])
