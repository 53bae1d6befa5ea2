"""A logistic-regression head over sentence embeddings, shared by `linear-probe` (frozen encoder) and `setfit`
(fine-tuned encoder): the method, the predictor and the conversion of sklearn's classifier to a logit layer.

The head is kept as a [C, H] weight and [C] bias in safetensors rather than sklearn's pickle, so loading an
artifact never unpickles anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..backbones import Backbone
from ..errors import ConfigError
from ..tasks.base import Example, Task
from .base import Method, Prediction, Predictor
from .readout import predictions_from_scores

HEAD_FILE = "head.safetensors"


class HeadMethod(Method):
    """A baseline that fits a classifier head on the bare input's embeddings: encoders and label tasks only."""

    family = "baseline"
    kinds = ("encoder",)
    trains = True
    bare_input = True
    scores_choices = False

    def check(self, backbone: Backbone, task: Task) -> None:
        super().check(backbone, task)
        if task.kind != "choices":
            raise ConfigError(f"{self.name} needs a task with labels; '{task.name}' has free-text answers")


@dataclass
class HeadPredictor(Predictor):
    """Answers by `embed(input) @ weight.T + bias`; subclasses say how inputs are embedded."""

    weight: torch.Tensor | None = None  # [C, H] (labels unseen in training: bias -1e4)
    bias: torch.Tensor | None = None  # [C]

    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, examples: list[Example], batch_size: int = 32) -> list[Prediction]:
        inputs = [self.template.render(ex) for ex in examples]
        return predictions_from_scores(self.task, inputs, self.embed(inputs, batch_size) @ self.weight.T + self.bias)


def head_as_logits(clf: Any, n_labels: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """sklearn's LogisticRegression as a [C, H] logit layer whose softmax is its predict_proba, and its
    parameter count.

    Binary heads have one row w: logits (-w/2, +w/2) give softmax = sigmoid(w.x + b), as sklearn does.
    Labels absent from the training sample get a -1e4 bias, so they are never predicted (as SetFit).
    """
    coef, inter = np.asarray(clf.coef_), np.asarray(clf.intercept_)
    if len(clf.classes_) == 2 and coef.shape[0] == 1:
        coef, inter = np.vstack([-coef[0] / 2, coef[0] / 2]), np.array([-inter[0] / 2, inter[0] / 2])
    w = np.zeros((n_labels, coef.shape[1]), dtype=np.float32)
    b = np.full(n_labels, -1e4, dtype=np.float32)
    for row, cls in enumerate(clf.classes_):
        w[int(cls)], b[int(cls)] = coef[row], inter[row]
    return torch.from_numpy(w), torch.from_numpy(b), int(np.asarray(clf.coef_).size + np.asarray(clf.intercept_).size)
