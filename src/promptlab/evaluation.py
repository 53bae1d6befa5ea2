"""Batched prediction, metrics and per-example records: every method is scored by this one function."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import console, metrics
from .methods.base import Prediction, Predictor
from .tasks.base import Example, Task


@dataclass
class EvalResult:
    metrics: dict[str, float]
    records: list[dict[str, Any]]
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return len(self.records) / self.seconds if self.seconds > 0 else 0.0


def predict_batches(predictor: Predictor, examples: list[Example], batch_size: int = 32,
                    desc: str = "eval") -> list[Prediction]:
    """`predictor.predict`, one batch of examples at a time so that a progress bar can follow (console.progress:
    at a terminal only). The batches are taken longest input first, as the backbone orders a whole list, so
    padding stays within similar lengths; answers come back in the examples' order."""
    order = sorted(range(len(examples)), key=lambda i: -sum(len(v) for v in examples[i].fields.values()))
    out: list[Prediction | None] = [None] * len(examples)
    with console.progress(len(examples), desc) as bar:
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start : start + max(1, batch_size)]
            for i, p in zip(idx, predictor.predict([examples[i] for i in idx], batch_size=batch_size)):
                out[i] = p
            bar.update(len(idx))
    return out  # type: ignore[return-value]  # every slot filled above


def evaluate(predictor: Predictor, task: Task, examples: list[Example], batch_size: int = 32,
             desc: str = "eval") -> EvalResult:
    """`desc` names the progress bar (the method, in a comparison)."""
    t0 = time.perf_counter()
    preds = predict_batches(predictor, examples, batch_size, desc)
    seconds = time.perf_counter() - t0
    records = []
    if task.kind == "choices":
        golds = [ex.label for ex in examples]
        scores = metrics.compute(task.metrics, [p.label for p in preds], golds, n_labels=len(task.labels))
        norm = bool(preds) and all(p.label_norm is not None for p in preds)  # a generative readout: lm-eval's acc_norm
        if norm:
            scores["acc_norm"] = metrics.accuracy([p.label_norm for p in preds], golds)
        for ex, p in zip(examples, preds):
            records.append({"id": ex.id, "input": p.input, "prediction": p.prediction, "gold": task.labels[ex.label],
                            "score": p.score, "correct": int(p.label == ex.label),
                            **({"correct_norm": int(p.label_norm == ex.label)} if norm else {})})
    else:
        golds = [list(ex.answers) for ex in examples]
        scores = metrics.compute(task.metrics, [p.prediction for p in preds], golds)
        for ex, p in zip(examples, preds):
            f1 = round(metrics.f1(p.prediction, list(ex.answers)), 6)  # "score" too: what every record has
            records.append({"id": ex.id, "input": p.input, "prediction": p.prediction, "gold": list(ex.answers),
                            "score": f1, "em": metrics.exact_match(p.prediction, list(ex.answers)), "f1": f1})
    return EvalResult(metrics=scores, records=records, seconds=seconds)
