"""Attention for position-bias models (T5 family), registered as its own transformers attention implementation.

With transformers' `sdpa`, every T5 attention call turns the padding mask and the [1, H, L, L] position bias
into a dense [B, H, L, L] float mask (`torch.where`, then a copy), rebuilt in every layer. In training,
attention dropout sends SDPA to its math kernel, which keeps three float [B, H, L, L] tensors per layer for
backward (softmax output, dropout noise, dropped probabilities): most of a prompt-tuning step's memory.
`position_bias_attention` avoids both:
- inference (nothing needs gradients), bidirectional attention over right-padded keys (the encoder): one SDPA
  call per run of equal-length rows on those rows' real keys, the shared bias as a broadcast mask: no
  [B, H, L, L] tensor is built. Floating-point results agree with transformers' path up to the flash kernel's
  block order, tested;
- inference, a few query rows (decoding, scoring short targets): matmul-softmax-matmul in float32, SDPA with the
  bias as its mask in bf16/fp16 (its fused kernel reads the cache once; bf16's tolerance, tests/test_dtype.py);
- training: the same operations as SDPA's math kernel in the same order (same values, same dropout draws),
  but backward keeps the softmax output and a 1-byte keep mask, and recomputes the dropped probabilities;
  gradients are tested equal to transformers' path.
What each choice measured (mask sizes, kernel timings, memory) is in bench/README.md, "Where the time goes".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Models whose attention adds a relative position bias (T5Attention): they get `BIAS_ATTENTION`.
POSITION_BIAS_MODELS = ("t5", "mt5", "umt5")
BIAS_ATTENTION = "promptlab_bias_sdpa"


def position_bias_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    mask = attention_mask
    if (position_bias is None or scaling != 1.0 or kwargs.get("output_attentions")
            or (mask is not None and (mask.dtype != torch.bool or mask.dim() != 4))):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, position_bias=position_bias, **kwargs)
    bsz, _, q_len, _ = query.shape  # [B, H, Lq, D]
    kv_len = key.shape[2]
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    low = torch.finfo(query.dtype).min
    grads = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad
                                         or position_bias.requires_grad)
    if grads or dropout:
        if torch.is_autocast_enabled(query.device.type):  # mixed precision: autocast's casts are SDPA's business
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, is_causal=is_causal, position_bias=position_bias, **kwargs)
        # SDPA's math kernel, op for op: scores = q @ k^T; + bias (where the mask allows, else the dtype's min);
        # softmax; dropout; @ v. Only what backward keeps differs.
        scores = torch.matmul(query, key.transpose(2, 3)) + position_bias  # [B, H, Lq, Lk]
        if mask is not None:
            scores.masked_fill_(~mask, low)
        elif causal and q_len > 1:
            keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
            scores.masked_fill_(~keep, low)
        out = _SoftmaxDropoutMatmul.apply(scores, value, float(dropout))
        return out.transpose(1, 2).contiguous(), None
    if q_len <= 16 and query.dtype in (torch.bfloat16, torch.float16) and (mask is not None or not causal or q_len == 1):
        # Decoding in half precision: SDPA's fused kernel streams the cached keys and values once, where
        # matmul-softmax-matmul reads them twice and materialises the scores; in float32 the matmuls are the
        # faster path (bench/README.md, "Where the time goes").
        bias = position_bias if mask is None else torch.where(mask, position_bias, low)  # [B, H, Lq, Lk]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype), scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    if q_len <= 16:
        scores = torch.matmul(query, key.transpose(2, 3)) + position_bias  # [B, H, Lq, Lk]
        if mask is not None:
            scores = scores.masked_fill(~mask, low)
        elif causal and q_len > 1:
            keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
            scores = scores.masked_fill(~keep, low)
        probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), None
    if not causal and position_bias.shape[0] == 1:
        lengths = _key_lengths(mask, bsz, kv_len)
        if lengths is not None:
            out = torch.empty_like(query)
            # Rows of one length share one call (batches are sorted by length, so equal lengths sit together): each
            # (row, head) is computed as in a call of its own. The mask is a view into one float32 copy of the bias:
            # SDPA's CPU kernel adds the mask in float32 anyway and converts a bf16 one slowly, and a view needs no
            # copy per call (same output bits either way, tested; timings in bench/README.md).
            bias32 = _float_bias(position_bias)
            start = 0
            while start < bsz:
                n, stop = lengths[start], start + 1
                while stop < bsz and lengths[stop] == n:
                    stop += 1
                out[start:stop] = F.scaled_dot_product_attention(
                    query[start:stop], key[start:stop, :, :n], value[start:stop, :, :n],
                    attn_mask=bias32[..., :n], scale=scaling)
                start = stop
            return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, position_bias=position_bias, **kwargs)


class _SoftmaxDropoutMatmul(torch.autograd.Function):
    """dropout(softmax(scores)) @ value, as SDPA's math kernel computes it (at::dropout: bernoulli noise, divided
    by 1 - p, multiplied in), saving the probabilities and a bool keep mask instead of three float tensors."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, value: torch.Tensor, p: float) -> torch.Tensor:
        probs = torch.softmax(scores, dim=-1)
        keep = None
        dropped = probs
        if p > 0:
            noise = torch.empty_like(probs).bernoulli_(1 - p)
            keep = noise.bool()
            dropped = probs * noise.div_(1 - p)
        ctx.save_for_backward(probs, value, keep)
        ctx.p = p
        return torch.matmul(dropped, value)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        probs, value, keep = ctx.saved_tensors
        noise = None if keep is None else keep.to(probs.dtype).div_(1 - ctx.p)
        dropped = probs if noise is None else probs * noise
        # The 3-D bmm calls autograd makes for matmul's backward, so gradients match it exactly.
        b, h, lq, lk = probs.shape
        g3 = grad.reshape(b * h, lq, grad.shape[-1])
        v3 = value.reshape(b * h, lk, value.shape[-1])
        grad_dropped = g3.bmm(v3.transpose(1, 2)).view(b, h, lq, lk)
        grad_value = dropped.reshape(b * h, lq, lk).transpose(1, 2).bmm(g3).view(value.shape)
        grad_probs = grad_dropped if noise is None else grad_dropped * noise
        return torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype), grad_value, None


def _float_bias(bias: torch.Tensor) -> torch.Tensor:
    """A float32, contiguous copy of a position bias, made once: T5 hands the bias its first layer computed to every
    later layer, so the copy rides on that tensor (and dies with it) instead of being made per layer and row group."""
    if bias.dtype == torch.float32 and bias.is_contiguous():
        return bias
    version = None if bias.is_inference() else bias._version  # inference tensors keep no version counter
    cached = getattr(bias, "_promptlab_float", None)
    if cached is None or cached[0] != version:
        cached = (version, bias.float().contiguous())
        bias._promptlab_float = cached
    return cached[1]


def _key_lengths(mask: torch.Tensor | None, bsz: int, kv_len: int) -> list[int] | None:
    """Per-row count of real keys when the mask is pure right padding (None: every key is real); else None."""
    if mask is None:
        return [kv_len] * bsz
    if mask.shape[1] != 1:
        return None
    keys = mask[:, 0, 0, :]  # [B, Lk]
    if mask.shape[2] > 1 and not bool((mask == keys[:, None, None, :]).all()):
        return None  # a query-dependent pattern, not padding
    n = keys.sum(-1)
    if not bool((keys == (torch.arange(kv_len, device=keys.device)[None, :] < n[:, None])).all()):
        return None  # left padding or holes
    return [int(x) for x in n]


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(BIAS_ATTENTION, position_bias_attention)
    AttentionMaskInterface.register(BIAS_ATTENTION, sdpa_mask)  # the same boolean masks sdpa receives


def use_fast_attention(model: Any) -> bool:
    """Switch a position-bias model (T5 family) that runs transformers' sdpa to `position_bias_attention`."""
    cfg = getattr(model, "config", None)
    if cfg is None or cfg.model_type not in POSITION_BIAS_MODELS or cfg._attn_implementation != "sdpa":
        return False
    _register_attention()
    model.set_attn_implementation(BIAS_ATTENTION)
    return True
