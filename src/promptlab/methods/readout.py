"""How a (possibly adapted) model's output becomes an answer, and the loss that trains it.

Shared by every method so that hard prompts, soft prompts and baselines are read out the same way:
- encoder, choices: cosine similarity between the pooled input and frozen label anchors (the label
  descriptions' embeddings) — no head is trained, so a soft prompt is the only thing that adapts;
- seq2seq / causal, choices: log-likelihood of each verbalizer after the input;
- text tasks: greedy generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..errors import ConfigError
from ..scoring import normalised
from ..tasks.base import Example, Task
from .base import Prediction

# Cosine similarities live in [-1, 1]; a fixed temperature turns them into usable logits for the
# cross-entropy without training a scale (which would be a head).
ANCHOR_SCALE = 20.0


def label_anchors(backbone: Backbone, task: Task) -> torch.Tensor:
    """Unit-norm embeddings of the label descriptions under the frozen model. [C, H]"""
    return F.normalize(backbone.embed(task.descriptions), dim=-1)


@dataclass
class Readout:
    backbone: Backbone
    task: Task
    anchors: torch.Tensor | None = None
    max_new_tokens: int = 16
    scoring: str = "lmeval"  # scoring.SCORINGS: how choices are scored, and what a choice target trains on

    def __post_init__(self) -> None:
        if self.task.kind == "choices" and not self.task.labels:
            raise ConfigError(f"task '{self.task.name}' reads its label names from its data; pass --data with "
                              "its files")
        if self.task.kind == "text" and self.backbone.kind == "encoder":
            raise ConfigError(
                f"task '{self.task.name}' needs generated answers but '{self.backbone.name}' is an encoder; "
                "use a seq2seq or causal model"
            )
        if self.task.kind == "choices" and self.backbone.kind == "encoder" and self.anchors is None:
            self.anchors = label_anchors(self.backbone, self.task)

    # [B, C] logits for choice tasks, with gradients when the caller allows them
    def choice_logits(self, model: Any, inputs: list[str]) -> torch.Tensor:
        if self.backbone.kind == "encoder":
            return self._anchor_logits(self.backbone.encode(inputs, model))
        return self.backbone.score_choices(inputs, self.task.verbalizers, model, scoring=self.scoring)

    def _anchor_logits(self, emb: torch.Tensor) -> torch.Tensor:
        # Trained anchors (--train-anchors) drift off the unit sphere; frozen ones are unit-norm already.
        anchors = F.normalize(self.anchors, dim=-1) if self.anchors.requires_grad else self.anchors
        return ANCHOR_SCALE * F.normalize(emb.float(), dim=-1) @ anchors.to(emb.device).T

    def loss(self, model: Any, inputs: list[str], examples: list[Example]) -> torch.Tensor:
        if self.task.kind == "choices" and self.backbone.kind == "encoder":
            logits = self.choice_logits(model, inputs)
            gold = torch.tensor([ex.label for ex in examples], device=logits.device)
            return F.cross_entropy(logits, gold)
        targets = [self.task.verbalizers[ex.label] if self.task.kind == "choices" else ex.answers[0] for ex in examples]
        # A choice trains on exactly what it is scored on (DESIGN.md); a text answer keeps EOS, to learn to stop.
        batch = self.backbone.lm_batch(inputs, targets, model, self.scoring if self.task.kind == "choices" else "eos")
        return model(**batch).loss

    @torch.inference_mode()
    def predict(self, model: Any, inputs: list[str], batch_size: int = 32) -> list[Prediction]:
        if self.task.kind == "text":
            texts = self.backbone.generate(inputs, self.max_new_tokens, model, batch_size=batch_size)
            return [Prediction(input=i, prediction=t) for i, t in zip(inputs, texts)]
        if self.backbone.kind == "encoder":  # embed sorts by length, and reuses an embedding_cache's texts
            logits = self._anchor_logits(self.backbone.embed(inputs, model, batch_size))
        else:
            logits = self.backbone.score_choices(inputs, self.task.verbalizers, model, batch_size=batch_size,
                                                 scoring=self.scoring)
            return predictions_from_scores(self.task, inputs, logits, normalised(logits, self.task.verbalizers))
        return predictions_from_scores(self.task, inputs, logits)


def predictions_from_scores(task: Task, inputs: list[str], scores: torch.Tensor,
                            norm: torch.Tensor | None = None) -> list[Prediction]:
    """`norm`: the length-normalised scores of a generative readout, whose argmax is acc_norm's pick."""
    probs = torch.softmax(scores.float(), dim=-1)
    conf, best = probs.max(dim=-1)
    picks = norm.argmax(dim=-1).tolist() if norm is not None else [None] * len(inputs)
    return [
        Prediction(input=i, prediction=task.labels[int(b)], label=int(b), score=round(float(c), 6), label_norm=n)
        for i, b, c, n in zip(inputs, best, conf, picks)
    ]
