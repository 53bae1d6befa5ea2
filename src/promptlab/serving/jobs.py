"""What the engine works on: a request's job, one model row of it, and an input's answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PromptlabError
from ..tasks.base import Example
from .registry import Servable
from .sampling import Sampler


class InputTooLong(PromptlabError):
    """An input that does not fit the model once its prompt's virtual tokens are added (HTTP 413)."""


class UpstreamFailed(PromptlabError):
    """The server an engine hands requests to (vLLM) failed or went away: the gateway's fault, not the client's
    (HTTP 502)."""


@dataclass
class Answer:
    """One input's answer: the label and its probability (and all of them) for choices, text otherwise."""

    input: str
    prediction: str
    label: int | None = None
    score: float | None = None
    scores: list[float] | None = None  # softmax over the task's labels, in label order
    logits: list[float] | None = None  # what the softmax was taken of (log-likelihoods, or scaled cosines)
    tokens: list[int] | None = None  # text tasks: the generated token ids

    def to_json(self, labels: Sequence[str] | None = None) -> dict[str, Any]:
        if self.label is None:
            return {"text": self.prediction}
        out: dict[str, Any] = {"label": self.prediction, "score": self.score}
        if self.scores is not None and labels is not None:
            out["scores"] = {name: round(p, 6) for name, p in zip(labels, self.scores)}
        return out


@dataclass
class Job:
    """One request's work: a prompt and its inputs."""

    servable: Servable
    examples: list[Example]
    raw: list[str] | None = None  # completions: texts fed as they are after the soft prompt (no template)
    max_new_tokens: int | None = None  # raw: tokens to generate, instead of the prompt's own
    score: list[list[int]] | None = None  # token ids whose log-probs to compute after the soft prompt (causal)
    top: int = 0  # score: how many most likely tokens to return per position
    sampling: list[Sampler | None] | None = None  # raw: per text, its sampler (None: greedy)
    context: list[str] | None = None  # score, seq2seq: the encoder input each row's (decoder) ids follow

    @property
    def rows(self) -> int:
        return len(self.score if self.score is not None else self.raw if self.raw is not None else self.examples)


@dataclass
class Row:
    job: int
    pos: int
    servable: Servable
    text: str
    max_new: int | None = None  # raw generation
    ids: list[int] | None = None  # scoring
    top: int = 0
    sampler: Sampler | None = None
