"""Micro-batching: requests that arrive within a short wait run as one engine call.

A bounded queue of requests feeds one worker. The worker takes the oldest request, waits at most
`max_wait_ms` (counted from that request's arrival) for more, then runs up to `max_batch` inputs —
for any mix of prompts — in one `Engine.run` on a single model thread, so the event loop keeps
accepting requests while the model computes. A full queue is refused (503), never grown.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .engine import Engine
from .jobs import Answer, Job
from .metrics import Metrics


class QueueFull(Exception):
    """The queue holds `max_queue` requests already; the client should retry later."""


class ShuttingDown(Exception):
    """The server is draining for shutdown and takes no new work."""


@dataclass
class _Pending:
    job: Job
    future: asyncio.Future
    enqueued: float

    @property
    def rows(self) -> int:
        return self.job.rows


class Batcher:
    def __init__(self, engine: Engine, metrics: Metrics, max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._items: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptlab-model")
        self._task: asyncio.Task | None = None
        self._closing = False
        self.in_flight = 0  # inputs being computed right now

    @property
    def depth(self) -> int:
        return len(self._items)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="promptlab-batcher")

    async def submit(self, job: Job) -> list[Answer]:
        if self._closing:
            raise ShuttingDown()
        if len(self._items) >= self.max_queue:
            raise QueueFull()
        fut = asyncio.get_running_loop().create_future()
        self._items.append(_Pending(job, fut, time.perf_counter()))
        self._wake.set()
        return await fut

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the model thread, between batches (loading a prompt uses the model too)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        """Finish everything queued, then stop. New submissions are refused from now on."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # -- the worker ---------------------------------------------------------------------------------
    def _rows_waiting(self) -> int:
        return sum(p.rows for p in self._items)

    def _take(self) -> list[_Pending]:
        batch = [self._items.popleft()]
        rows = batch[0].rows
        while self._items and rows + self._items[0].rows <= self.max_batch:
            rows += self._items[0].rows
            batch.append(self._items.popleft())
        return batch

    async def _wait_for_items(self) -> bool:
        """Until something is queued: True, or False once the batcher closes with nothing left."""
        while not self._items:
            if self._closing:
                return False
            self._wake.clear()
            await self._wake.wait()
        return True

    async def _worker(self) -> None:
        while await self._wait_for_items():
            deadline = self._items[0].enqueued + self.max_wait
            while self._rows_waiting() < self.max_batch and not self._closing:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = [p for p in self._take() if not p.future.done()]  # a client that left is skipped
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Pending]) -> None:
        """One engine call for `batch`, off the event loop; each job's answer (or error) to its caller."""
        rows = sum(p.rows for p in batch)
        self.in_flight += rows
        t0 = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.run,
                                                                       [p.job for p in batch])
        except Exception as e:  # noqa: BLE001 — the engine isolates per-job errors; this is the last line of defence
            results = [e] * len(batch)
        finally:
            self.in_flight -= rows
        self.metrics.record_batch(rows, len({p.job.servable.name for p in batch}), time.perf_counter() - t0,
                                  [t0 - p.enqueued for p in batch])
        for p, r in zip(batch, results):
            if not p.future.done():
                (p.future.set_exception if isinstance(r, Exception) else p.future.set_result)(r)
