"""One short training loop for everything that trains: soft prompts, LoRA, full fine-tuning.

Plain PyTorch, with accelerate handling the device (and processes under `accelerate launch`). Only
parameters with requires_grad are optimised and kept; the best dev epoch wins; patience stops early.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError

# Input-only soft prompts barely move at the AdamW learning rates used for weights (5e-4 in the seed
# notebook); Lester et al. train them with Adafactor at 0.3, constant. Everything else uses AdamW.
ADAFACTOR_METHODS = {"prompt-tuning", "hybrid", "p-tuning"}
DEFAULT_LR = {"prompt-tuning": 0.3, "hybrid": 0.3, "p-tuning": 0.3, "prefix-tuning": 1e-2, "lora": 1e-3,
              "full-finetune": 3e-5}


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    steps: int = 0
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort inside chunks of 50 batches: little padding, still a random order."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = batch_size * 50
    batches = []
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s : s + chunk], key=lambda i: lengths[i], reverse=True)
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def make_optimizer(method: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> Any:
    if method in ADAFACTOR_METHODS:
        from transformers.optimization import Adafactor

        # scale_parameter: updates are relative to each tensor's RMS, so one lr suits embedding
        # tables of very different scales (T5's ~10, MiniLM's ~0.05).
        return Adafactor(params, lr=lr, scale_parameter=True, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train_loop(
    model: torch.nn.Module,
    method: str,
    n_examples: int,
    lengths: list[int],
    loss_fn: Callable[[torch.nn.Module, list[int]], torch.Tensor],
    dev_fn: Callable[[torch.nn.Module], float],
    *,
    epochs: int,
    batch_size: int,
    lr: float | None,
    seed: int,
    patience: int,
    max_steps: int | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> TrainResult:
    """Train `model`'s trainable parameters; restore the best dev epoch's values at the end."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    seed_everything(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, "nothing to train: every parameter is frozen"
    lr = lr if lr is not None else DEFAULT_LR.get(method, 1e-3)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    optimizer = make_optimizer(method, params, lr, weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    result = TrainResult()
    best_state = _trainable_state(model)
    t0 = time.perf_counter()
    since_best = 0
    for epoch in range(1, epochs + 1):
        model.train()
        batches = length_grouped_batches(lengths, batch_size, rng)
        total, seen = 0.0, 0
        bar = tqdm(batches, desc=f"{method} epoch {epoch}/{epochs}", leave=False, disable=not progress or None)
        for batch in bar:
            loss = loss_fn(model, batch)  # scalar, mean over the batch
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"training loss became {loss.item()} at step {result.steps + 1} (epoch {epoch}); "
                    f"lower --lr (now {lr})"
                )
            accelerator.backward(loss)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            total += loss.item() * len(batch)
            seen += len(batch)
            bar.set_postfix(loss=f"{total / seen:.4f}")
            if max_steps and result.steps >= max_steps:
                break
        model.eval()
        score = dev_fn(model)
        result.history.append({"epoch": epoch, "step": result.steps, "train_loss": total / max(seen, 1),
                               "dev_score": score, "seconds": round(time.perf_counter() - t0, 3)})
        if score > result.best_score or math.isnan(result.best_score):
            result.best_score, result.best_epoch, since_best = score, epoch, 0
            best_state = _trainable_state(model)
        else:
            since_best += 1
        if since_best >= patience or (max_steps and result.steps >= max_steps):
            break
    _load_trainable(model, best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])
