"""Which examples train, select and evaluate: the task's official splits, or a seeded carve of one.

The carve and the evaluation sample use a fixed seed (0), independent of the training seed, so runs
with different seeds and different methods are always scored on the same examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .config import RunConfig
from .errors import ConfigError, unknown
from .tasks.base import Example, Task

CARVE_SEED = 0
CARVE_EVAL_FRACTION = 0.4
DEV_SPLITS = ("dev", "dev32", "validation", "val")


@dataclass
class Data:
    train: list[Example]
    dev: list[Example]
    eval: list[Example]
    info: dict[str, Any] = field(default_factory=dict)


def _shuffled(rows: list[Example], seed: int) -> list[Example]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def resolve(task: Task, available: dict[str, list[Example]], cfg: RunConfig) -> Data:
    eval_name = cfg.split or task.eval_split
    info: dict[str, Any] = {"eval_split": eval_name, "available": {k: len(v) for k, v in available.items()}}
    if eval_name not in available:
        if not (cfg.split is None and len(available) == 1):
            raise unknown(f"split of task '{task.name}'", eval_name, list(available))
        eval_name = next(iter(available))
        info["eval_split"] = eval_name
    pool = available.get("train") if eval_name != "train" else None
    if pool is None:
        rows = _shuffled(available[eval_name], CARVE_SEED)
        n_eval = max(1, round(len(rows) * CARVE_EVAL_FRACTION))
        evaluation, pool = rows[:n_eval], rows[n_eval:]
        info["carve"] = {"from": eval_name, "seed": CARVE_SEED, "eval": len(evaluation), "train_pool": len(pool)}
    else:
        evaluation = available[eval_name]
    dev_name = next((d for d in DEV_SPLITS if d in available and d != eval_name), None)
    pool = _shuffled(pool, CARVE_SEED)
    if dev_name:
        dev = _shuffled(available[dev_name], CARVE_SEED)[: cfg.train.dev_size]
        info["dev"] = {"from": dev_name, "n": len(dev)}
    else:
        n_dev = min(cfg.train.dev_size, len(pool) // 5)
        dev, pool = pool[:n_dev], pool[n_dev:]
        info["dev"] = {"from": "held out of train", "n": len(dev)}
    train = pool
    if cfg.train.train_size is not None:
        if cfg.train.train_size > len(pool):
            raise ConfigError(
                f"--train-size {cfg.train.train_size} is larger than the {len(pool)} training examples of task "
                f"'{task.name}' (after holding out {len(dev)} for dev); use at most {len(pool)}"
            )
        train = _shuffled(pool, cfg.seed)[: cfg.train.train_size]
    if cfg.eval_size is not None:
        evaluation = _shuffled(evaluation, CARVE_SEED)[: cfg.eval_size]
    info.update({"train": len(train), "eval": len(evaluation)})
    return Data(train=train, dev=dev, eval=evaluation, info=info)
