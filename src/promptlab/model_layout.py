"""What a model, bare or PEFT-wrapped, holds around its input: its prompt's virtual tokens (prefix tuning's keys and
values take positions too), an input-level prompt's rows, the absolute positions it has, whether it attends
through a sliding window; and the `[pad, P_i, x_i]` layout decoder-only generation feeds it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# PEFT types whose prompt is a row of input embeddings in front of the input (prompt tuning, hybrid and pez,
# P-tuning), as against prefix tuning's keys and values inside every layer.
INPUT_PROMPT_TYPES = frozenset({"PROMPT_TUNING", "P_TUNING"})


def encoder_reusable(model: Any) -> bool:
    """Whether a seq2seq model's encoder states can be computed once and passed back as encoder_outputs: plain
    models, weight adapters (LoRA) and input-prompt PEFT methods; prefix tuning also feeds the decoder prefixes
    through past_key_values, so it keeps the plain path."""
    peft = _prompt_learning(model)
    return peft is None or str(peft.peft_type).rsplit(".", 1)[-1] in INPUT_PROMPT_TYPES


def _prompt_learning(model: Any) -> Any:
    """The active PEFT prompt-learning config of `model` (prompt, prefix or P-tuning), else None."""
    cfg = getattr(model, "active_peft_config", None) if hasattr(model, "peft_config") else None
    return cfg if cfg is not None and cfg.is_prompt_learning else None


def virtual_tokens(model: Any) -> int:
    """Positions a PEFT prompt takes in front of the input (prefix tuning's keys/values take them too)."""
    cfg = _prompt_learning(model)
    return int(cfg.num_virtual_tokens) if cfg is not None else 0


def model_positions(model: Any) -> int | None:
    """Absolute positions `model` holds: max_position_embeddings (n_positions), less those that RoBERTa and its kin
    (XLM-R, CamemBERT, ...) skip, counting from the padding index + 1; None for relative positions (T5)."""
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if not n:
        return None
    skipped = next((m.padding_idx + 1 for m in model.modules() if hasattr(m, "create_position_ids_from_inputs_embeds")
                    and isinstance(getattr(m, "padding_idx", None), int)), 0)
    return int(n) - skipped


def sliding_window(model: Any) -> bool:
    """Whether some layer of `model` attends through a sliding window (Mistral, Gemma 2 and 3), as the cache
    transformers builds for it says."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 — a config the cache does not know: no sliding layer that it could tell
        return False
    return any(type(layer) is not DynamicLayer for layer in cache.layers)


def input_prompt(model: Any) -> torch.Tensor | None:
    """The virtual-token embeddings an input-level PEFT prompt (prompt tuning, hybrid, P-tuning) puts before
    the input, [n, H]; None for other models. P-tuning's come out of its prompt encoder, as PEFT computes them."""
    cfg = _prompt_learning(model)
    if cfg is None or str(cfg.peft_type).rsplit(".", 1)[-1] not in INPUT_PROMPT_TYPES:
        return None
    return model.get_prompt(batch_size=1)[0]


def left_padded_embeds(model: Any, prompts: Sequence[torch.Tensor],
                       ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`[pad, P_i, x_i]` per row for decoder-only generation: inputs_embeds [B, W, H] and attention mask [B, W].
    Left padding keeps every row's last token at the end; positions follow the attention mask."""
    emb_layer = model.get_input_embeddings()
    width = max(p.shape[0] + len(x) for p, x in zip(prompts, ids))
    emb = emb_layer.weight.new_zeros(len(ids), width, emb_layer.weight.shape[1])
    mask = torch.zeros(len(ids), width, dtype=torch.long, device=emb.device)
    for b, (p, x) in enumerate(zip(prompts, ids)):
        start = width - p.shape[0] - len(x)
        emb[b, start : start + p.shape[0]] = p.to(emb.dtype)
        emb[b, start + p.shape[0] :] = emb_layer(torch.tensor(x, dtype=torch.long, device=emb.device))
        mask[b, start:] = 1
    return emb, mask


