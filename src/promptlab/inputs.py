"""Input budgeting: how much of a long input a model gets to see, what is kept room for around it, and what
the model was actually given."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .backbones import Backbone
from .chat import token_ids
from .model_layout import virtual_tokens
from .tasks.base import Example, Task, Template

if TYPE_CHECKING:
    from .config import RunConfig
    from .methods.base import Predictor

DECODERS = ("causal", "api")


def input_budget(task: Task, backbone: Backbone, cfg: RunConfig, virtual: int = 0, new_tokens: int | None = None,
                 reserve: int = 0) -> int:
    """Tokens one whole input may take: the run's budget (--max-input-tokens, else the task's, else the model's),
    and no more than the model keeps: on an absolute-position model (GPT-2) the positions left after the
    `virtual` tokens of a soft prompt in front and, for a causal model, the `new_tokens` of its answer after
    (default the run's). `reserve`: tokens the predictor adds after the input (chain-of-thought's reasoning)."""
    budget = cfg.max_input_tokens or task.extras.get("max_input_tokens") or backbone.max_length
    # a decoder-only model (local, or behind an API) writes its answer into the same window as the input
    answer = (new_tokens or cfg.max_new_tokens or task.max_new_tokens) if backbone.kind in DECODERS else 0
    room = backbone.input_budget(virtual=virtual, new_tokens=answer)
    return max(1, int(min(budget, room)) - reserve)


def fit_inputs(task: Task, backbone: Backbone, template: Template, cfg: RunConfig, examples: list[Example],
               virtual: int = 0, new_tokens: int | None = None, reserve: int = 0) -> tuple[list[Example], dict[str, Any]]:
    """Long-context tasks choose what fits `input_budget` around this template — the whole text the model
    reads (a predictor's `input_template()`: a few-shot prompt's demonstrations included), so that nothing
    chosen is cut off again when the input is tokenised."""
    if task.fit_context is None or not examples:
        return examples, {}
    budget = input_budget(task, backbone, cfg, virtual=virtual, new_tokens=new_tokens, reserve=reserve)
    return task.fit_context(examples, backbone.tokenizer, budget, template)


def reservations(predictor: Predictor) -> dict[str, int | None]:
    """What fit_inputs keeps room for around a trained or loaded predictor's input: its soft prompt's positions
    (`virtual`) and its answer's length (`new_tokens`)."""
    return {"virtual": virtual_tokens(predictor.model),
            "new_tokens": predictor.readout.max_new_tokens if predictor.readout is not None else None}


def predictor_budget(predictor: Predictor, cfg: RunConfig) -> int:
    """input_budget for what `predictor` reads: room for its reservations and what it adds after the input."""
    return input_budget(predictor.task, predictor.backbone, cfg, reserve=predictor.reserved_tokens(),
                        **reservations(predictor))


def fit_for(predictor: Predictor, cfg: RunConfig, examples: list[Example]) -> tuple[list[Example], dict[str, Any]]:
    """fit_inputs around everything `predictor` puts in front of and after each example."""
    return fit_inputs(predictor.task, predictor.backbone, predictor.input_template(), cfg, examples,
                      reserve=predictor.reserved_tokens(), **reservations(predictor))


def count_tokens(tokenizer: Any, texts: Sequence[str], special: bool = True) -> list[int]:
    """Each text's token count as the backbone tokenises it, uncut (a tokenizer file may carry a truncation); a
    chat-rendered text counts the special tokens it holds, not the tokenizer's on top (chat.token_ids)."""
    if not texts:
        return []
    if special:
        return [len(ids) for ids in token_ids(tokenizer, texts, truncation=False)]
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]]


def received_stats(predictor: Predictor, examples: list[Example], inputs: list[str], budget: int) -> dict[str, Any]:
    """What the model was given: the exact inputs it read (`inputs`, demonstrations and instructions included),
    tokenised as the backbone tokenises them, against what it keeps (`model_keeps`); `truncated` counts the
    inputs cut to fit. A long-context task adds what of the gold reached the model (`Task.measure_inputs`),
    read from the part it kept. `budget`: the tokens inputs were fitted to."""
    backbone, task = predictor.backbone, predictor.task
    new = predictor.readout.max_new_tokens if predictor.readout is not None and task.kind == "text" else 0
    keep = backbone.input_budget(predictor.model, new_tokens=new if backbone.kind in DECODERS else 0)
    ids = token_ids(backbone.tokenizer, inputs, truncation=False)
    lengths = [len(i) for i in ids]
    kept = [t if len(i) <= keep else backbone.tokenizer.decode(i[:keep], skip_special_tokens=True)
            for t, i in zip(inputs, ids)]
    stats: dict[str, Any] = {
        "input_tokens": {"median": float(statistics.median(lengths)) if lengths else 0.0,
                         "mean": round(float(statistics.fmean(lengths)), 3) if lengths else 0.0,
                         "max": max(lengths, default=0), "min": min(lengths, default=0)},
        "model_keeps": keep, "truncated": sum(n > keep for n in lengths), "budget": budget, "n": len(inputs),
    }
    if virtual_tokens(predictor.model):
        stats["virtual_tokens"] = virtual_tokens(predictor.model)
    if task.measure_inputs is not None:
        stats.update(task.measure_inputs(examples, kept))
    return stats
