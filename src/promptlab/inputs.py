"""Input budgeting: how much of a long input a model gets to see, and what is kept room for around it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backbones import Backbone, virtual_tokens
from .tasks.base import Example, Task, Template

if TYPE_CHECKING:
    from .config import RunConfig
    from .methods.base import Predictor


def fit_inputs(task: Task, backbone: Backbone, template: Template, cfg: RunConfig, examples: list[Example],
               virtual: int = 0, new_tokens: int | None = None) -> tuple[list[Example], dict[str, Any]]:
    """Long-context tasks choose what fits the token budget around this template. The budget is also what the
    model will keep: on an absolute-position model (GPT-2) the positions left after the `virtual` tokens of a
    soft prompt in front and, for a causal model, the `new_tokens` of its answer after (default the run's), so
    that nothing chosen is cut off again when the input is tokenised."""
    if task.fit_context is None or not examples:
        return examples, {}
    budget = cfg.max_input_tokens or task.extras.get("max_input_tokens") or backbone.max_length
    answer = (new_tokens or cfg.max_new_tokens or task.max_new_tokens) if backbone.kind == "causal" else 0
    room = backbone.input_budget(virtual=virtual, new_tokens=answer)
    return task.fit_context(examples, backbone.tokenizer, int(min(budget, room)), template)


def reservations(predictor: Predictor) -> dict[str, int | None]:
    """What fit_inputs keeps room for around a trained or loaded predictor's input: its soft prompt's positions
    (`virtual`) and its answer's length (`new_tokens`)."""
    return {"virtual": virtual_tokens(predictor.model),
            "new_tokens": predictor.readout.max_new_tokens if predictor.readout is not None else None}
