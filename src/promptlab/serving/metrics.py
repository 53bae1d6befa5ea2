"""Counters and recent-window percentiles for GET /metrics. Touched only from the event loop."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

WINDOW = 10_000  # percentiles are over the most recent observations


def percentiles(values: list[float] | deque, scale: float = 1.0) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    xs = sorted(values)

    def q(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * scale, 3)

    return {"count": len(xs), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": round(xs[-1] * scale, 3),
            "mean": round(sum(xs) / len(xs) * scale, 3)}


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.responses: Counter[str] = Counter()  # "POST /v1/predict 200" -> n
        self.predictions: Counter[str] = Counter()  # prompt name -> inputs answered
        self.rejected_full = 0
        self.batches = 0
        self.batch_inputs: deque[int] = deque(maxlen=WINDOW)
        self.batch_prompts: deque[int] = deque(maxlen=WINDOW)
        self.batch_seconds: deque[float] = deque(maxlen=WINDOW)
        self.queue_seconds: deque[float] = deque(maxlen=WINDOW)
        self.latency: deque[float] = deque(maxlen=WINDOW)  # successful POST /v1/predict, seconds

    def record_response(self, method: str, route: str, status: int) -> None:
        self.responses[f"{method} {route} {status}"] += 1

    def record_batch(self, inputs: int, prompts: int, seconds: float, waits: list[float]) -> None:
        self.batches += 1
        self.batch_inputs.append(inputs)
        self.batch_prompts.append(prompts)
        self.batch_seconds.append(seconds)
        self.queue_seconds.extend(waits)

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        by_status: Counter[str] = Counter()
        for key, n in self.responses.items():
            by_status[key.rsplit(" ", 1)[1]] += n
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "requests": {"total": sum(self.responses.values()), "by_status": dict(by_status),
                         "by_route": dict(self.responses), "rejected_queue_full": self.rejected_full},
            "predictions_by_prompt": dict(self.predictions),
            "batches": {"count": self.batches, "inputs": percentiles(self.batch_inputs),
                        "prompts_per_batch": percentiles(self.batch_prompts),
                        "mixed_batches": sum(1 for p in self.batch_prompts if p > 1),
                        "compute_ms": percentiles(self.batch_seconds, 1000.0)},
            "latency_ms": percentiles(self.latency, 1000.0),
            "queue_wait_ms": percentiles(self.queue_seconds, 1000.0),
            **extra,
        }
