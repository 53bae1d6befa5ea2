"""Batched prediction, metrics and per-example records: every method is scored by this one function."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import metrics
from .methods.base import Predictor
from .tasks.base import Example, Task


@dataclass
class EvalResult:
    metrics: dict[str, float]
    records: list[dict[str, Any]]
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return len(self.records) / self.seconds if self.seconds > 0 else 0.0


def evaluate(predictor: Predictor, task: Task, examples: list[Example], batch_size: int = 32) -> EvalResult:
    t0 = time.perf_counter()
    preds = predictor.predict(examples, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    records = []
    if task.kind == "choices":
        golds = [ex.label for ex in examples]
        scores = metrics.compute(task.metrics, [p.label for p in preds], golds, n_labels=len(task.labels))
        for ex, p in zip(examples, preds):
            records.append({"id": ex.id, "input": p.input, "prediction": p.prediction, "gold": task.labels[ex.label],
                            "score": p.score, "correct": int(p.label == ex.label)})
    else:
        golds = [list(ex.answers) for ex in examples]
        scores = metrics.compute(task.metrics, [p.prediction for p in preds], golds)
        for ex, p in zip(examples, preds):
            f1 = round(metrics.f1(p.prediction, list(ex.answers)), 6)  # "score" too: what every record has
            records.append({"id": ex.id, "input": p.input, "prediction": p.prediction, "gold": list(ex.answers),
                            "score": f1, "em": metrics.exact_match(p.prediction, list(ex.answers)), "f1": f1})
    return EvalResult(metrics=scores, records=records, seconds=seconds)
