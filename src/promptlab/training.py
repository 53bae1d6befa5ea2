"""One short training loop for everything that trains: soft prompts, LoRA, full fine-tuning.

Plain PyTorch, with accelerate handling the device and, under `accelerate launch` / `torchrun`, the
processes: every process builds the same batches, trains on its own slice of each batch, and DDP
averages the gradients, so N processes take the same steps as one process with the same global batch.
Under FSDP (sharding.py) the frozen blocks are sharded instead of replicated, and the loop averages the
replicated prompt's gradients itself.
Only parameters with requires_grad are optimised and kept; the best dev epoch wins; patience stops early.

With a CheckpointPlan the loop checkpoints every `checkpoint_every` steps and at each epoch end, and
continues from the newest checkpoint: the batch order of an epoch is a function of (seed, epoch), and
the RNG states (dropout) are restored, so a resumed run takes exactly the steps an uninterrupted one does.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from . import console, sharding
from .checkpoints import Checkpoint, CheckpointPlan, CheckpointStore, restore_rng
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import TrainConfig

OPTIMIZERS = ("adamw", "adafactor")  # what a method trained by this loop may declare (methods/adapted.py)


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    steps: int = 0
    seconds: float = 0.0
    lr: float = 0.0
    optimizer: str = ""
    resumed_from: int | None = None  # the step a checkpoint put us at, when the run was resumed
    processes: int = 1  # data-parallel processes (torchrun / accelerate launch)
    local_examples: int = 0  # examples this process computed losses on: n_steps x batch / processes
    sharding: dict[str, Any] | None = None  # FSDP: the frozen blocks sharded over the processes (sharding.py)


def lr_factor(schedule: str, step: int, planned: int, warmup: float) -> float:
    """The multiplier on the base lr for optimizer step `step` (0-based) of `planned`.

    Computed from the step count rather than kept in a torch LR scheduler, so a resumed run needs no scheduler
    state: the count is in the checkpoint. 'linear' has the shape of transformers' get_linear_schedule_with_warmup.
    """
    if schedule == "constant":
        return 1.0
    n_warm = int(warmup * planned)
    if step < n_warm:
        return (step + 1) / (n_warm + 1)
    return max(0.0, (planned - step) / max(1, planned - n_warm))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` job, or the only process: the one that writes files.

    Read from the launcher's environment, so it is known before (and without) an Accelerator.
    """
    return int(os.environ.get("RANK", "0")) == 0


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


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch, from (seed, epoch) alone: a resumed run rebuilds them without replaying."""
    return length_grouped_batches(lengths, batch_size, random.Random(f"promptlab-order:{seed}:{epoch}"))


def make_optimizer(kind: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> Any:
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r}; one of {OPTIMIZERS}")
    if kind == "adafactor":
        from transformers.optimization import Adafactor

        # scale_parameter: updates are relative to each tensor's RMS, so one lr suits embedding
        # tables of very different scales (T5's ~10, MiniLM's ~0.05).
        return Adafactor(params, lr=lr, scale_parameter=True, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@dataclass
class _Position:
    """Where the loop is: what a checkpoint must hold besides tensors to continue at the same step."""

    epoch: int = 1
    batch: int = 0  # next batch index within the epoch
    epoch_done: bool = False  # the epoch's dev evaluation has run
    stopped: bool = False  # early stopping or max_steps decided to end training
    total: float = 0.0  # sum of per-example losses this epoch (for the history's train_loss)
    seen: float = 0.0
    since_best: int = 0


def planned_steps(n_examples: int, cfg: TrainConfig) -> int:
    """Optimizer steps the loop will take on `n_examples` (fewer if early stopping ends it): the schedule's length
    and the plan a run prints before it starts, from one formula."""
    per_epoch = -(-n_examples // (cfg.batch_size * cfg.grad_accum))
    return min(cfg.epochs * per_epoch, cfg.max_steps) if cfg.max_steps else cfg.epochs * per_epoch


def train_loop(
    model: torch.nn.Module,
    lengths: list[int],
    cfg: TrainConfig,
    *,
    loss_fn: Callable[[torch.nn.Module, list[int]], torch.Tensor],
    dev_fn: Callable[[torch.nn.Module], float],
    seed: int,
    optimizer: str,
    default_lr: float,
    label: str = "train",
    checkpoint: CheckpointPlan | None = None,
    data_fingerprint: str = "",
    progress: bool = True,
) -> TrainResult:
    """Train `model`'s trainable parameters on examples of these token `lengths` (one per example), as `cfg`
    says; restore the best dev epoch's values at the end. `optimizer` and `default_lr` (used when cfg.lr is
    unset) are the method's; `label` names it in the progress bar and messages."""
    from accelerate import Accelerator

    seed_everything(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, "nothing to train: every parameter is frozen"
    n_examples, epochs, batch_size, max_steps = len(lengths), cfg.epochs, cfg.batch_size, cfg.max_steps
    lr, weight_decay, patience = (cfg.lr if cfg.lr is not None else default_lr), cfg.weight_decay, cfg.patience
    # The backbone's device decides (--device): accelerate would otherwise move a model the user put on the CPU
    # to a GPU it finds.
    accelerator = Accelerator(cpu=next(model.parameters()).device.type == "cpu")
    optimizer = make_optimizer(optimizer, params, lr, weight_decay)
    world, rank = accelerator.num_processes, accelerator.process_index
    blocks = sharding.sharded_blocks(model)  # FSDP: sharded when the backbone loaded (sharding.place)
    sharded = bool(blocks)
    if sharded:  # what trains stays replicated (sharding.py: why not accelerator.prepare)
        sharding.check_trainable(blocks, label)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)  # parameter names without DDP's "module." prefix

    result = TrainResult(lr=lr, optimizer=type(getattr(optimizer, "optimizer", optimizer)).__name__, processes=world,
                         sharding=sharding.describe(blocks, world) if sharded else None)
    pos = _Position()
    best_state = _trainable_state(core)
    store = CheckpointStore(checkpoint, cfg.keep_checkpoints, writer=accelerator.is_main_process) if checkpoint else None
    prior_seconds = 0.0
    if store is not None:  # continue from the newest complete checkpoint, if any
        ck = store.latest()
        if ck is not None:
            best_state, prior_seconds = _resume(ck, core, optimizer, result, pos, lr, weight_decay,
                                                n_examples, data_fingerprint)
            if accelerator.is_main_process:
                print(f"promptlab: resuming {label} at step {ck.step} from '{ck.path}'", file=sys.stderr)

    def save(name: str) -> None:
        if store is None:
            return
        state = {"loop": {**pos.__dict__, "steps": result.steps, "seconds": time.perf_counter() - t0},
                 "history": result.history, "best_epoch": result.best_epoch, "best_score": result.best_score,
                 "n_examples": n_examples, "data": data_fingerprint, "local_examples": result.local_examples}
        store.save(name, state, _trainable_state(core), best_state, optimizer.state_dict())

    accum = cfg.grad_accum  # one step per `accum` batches: the epoch's batches are the steps' whole batches
    planned = planned_steps(n_examples, cfg)
    t0 = time.perf_counter() - prior_seconds
    while not pos.stopped and pos.epoch <= epochs:
        epoch = pos.epoch
        if pos.epoch_done:  # resumed from an epoch-end checkpoint: the next epoch starts afresh
            pos = _Position(epoch=epoch + 1, since_best=pos.since_best)
            continue
        batches = epoch_batches(lengths, batch_size * accum, seed, epoch)
        model.train()
        bar = console.progress(len(batches), f"{label} epoch {epoch}/{epochs}", unit="step", initial=pos.batch,
                               show=progress and accelerator.is_main_process)
        for b in range(pos.batch, len(batches)):
            if max_steps and result.steps >= max_steps:
                break
            batch = batches[b]
            # Each process takes every world-th example; its mean loss is re-weighted by its share, so the
            # average DDP takes over processes is the mean over the whole batch, even for a ragged last one.
            shard, weight = batch, 1.0
            if world > 1:
                shard = batch[rank::world]
                weight = len(shard) * world / len(batch)
                if not shard:  # fewer examples than processes: join the collectives with a zero-weight copy
                    shard, weight = batch[:1], 0.0
            # Gradient accumulation: the shard in `accum` pieces, each mean loss weighted by its share of the
            # shard, so the summed gradients are the whole shard's mean: the step a batch `accum` times as big takes.
            size = -(-len(shard) // accum)
            pieces = [shard[i : i + size] for i in range(0, len(shard), size)]
            sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
            for j, piece in enumerate(pieces):
                share = weight * len(piece) / len(shard)
                sync = world == 1 or sharded or j == len(pieces) - 1  # DDP averages once, after the last piece
                with nullcontext() if sync else accelerator.no_sync(model):
                    loss = loss_fn(model, piece)  # scalar, mean over the piece
                    n = len(piece) if weight else 0
                    sums += torch.tensor([loss.item() * n if n else 0.0, float(n)], dtype=torch.float64,
                                         device=accelerator.device)
                    accelerator.backward(loss * share if share != 1.0 else loss)
            if sharded:
                sharding.average_gradients(params, world)
            result.local_examples += int(sums[1].item())
            stats = accelerator.reduce(sums, "sum")
            batch_loss = stats[0].item() / max(stats[1].item(), 1.0)
            if not math.isfinite(batch_loss):  # before any step: a non-finite gradient never reaches the parameters
                raise _non_finite("training loss", batch_loss, result.steps + 1, epoch, lr, weight_decay, store)
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            if not torch.isfinite(norm):  # checked before the step: parameters (and checkpoints) stay finite
                raise _non_finite("gradient norm", norm.item(), result.steps + 1, epoch, lr, weight_decay, store)
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(cfg.schedule, result.steps, planned, cfg.warmup)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            pos.batch = b + 1
            pos.total += stats[0].item()
            pos.seen += stats[1].item()
            bar.update(1)
            bar.set_postfix(loss=f"{pos.total / max(pos.seen, 1):.4f}")
            if result.steps % cfg.checkpoint_every == 0:
                save(f"step-{result.steps:08d}")
        bar.close()
        model.eval()
        score = dev_fn(core)
        result.history.append({"epoch": epoch, "step": result.steps, "train_loss": pos.total / max(pos.seen, 1),
                               "dev_score": score, "seconds": round(time.perf_counter() - t0, 3)})
        if score > result.best_score or math.isnan(result.best_score):
            result.best_score, result.best_epoch, pos.since_best = score, epoch, 0
            best_state = _trainable_state(core)
        else:
            pos.since_best += 1
        pos.epoch_done = True
        pos.stopped = pos.since_best >= patience or bool(max_steps and result.steps >= max_steps)
        save(f"step-{result.steps:08d}-epoch")
    _load_trainable(core, best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def _resume(ck: Checkpoint, core: torch.nn.Module, optimizer: Any, result: TrainResult, pos: _Position,
            lr: float, weight_decay: float, n_examples: int, fingerprint: str) -> tuple[dict[str, torch.Tensor], float]:
    """Apply a loaded checkpoint to the model, optimizer, RNGs and loop position; return (best state, seconds)."""
    state = ck.state
    names = {n for n, p in core.named_parameters() if p.requires_grad}
    if set(ck.trainable) != names or state.get("n_examples") != n_examples or state.get("data") != fingerprint:
        raise ConfigError(f"checkpoint '{ck.path}' was made for other parameters or training data; delete "
                          f"'{ck.path.parent}' to start over")
    _load_trainable(core, ck.trainable)
    optimizer.load_state_dict(ck.optimizer)
    for group in optimizer.param_groups:  # --resume may continue with a new lr (after a non-finite loss)
        group["lr"] = lr
        if isinstance(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, torch.optim.AdamW):
            group["weight_decay"] = weight_decay
    restore_rng(ck.rng["meta"], ck.rng["tensors"])
    loop = state["loop"]
    if missing := [k for k in pos.__dict__ if k not in loop]:
        raise ConfigError(f"checkpoint '{ck.path}' has no loop position ({', '.join(missing)}) in its state.json; "
                          f"delete '{ck.path.parent}' to start over")
    for k in pos.__dict__:
        setattr(pos, k, loop[k])
    result.steps = int(loop["steps"])
    result.history = list(state["history"])
    result.best_epoch, result.best_score = int(state["best_epoch"]), float(state["best_score"])
    result.resumed_from = result.steps
    result.local_examples = int(state.get("local_examples", 0))
    return dict(ck.best), float(loop["seconds"])


def _non_finite(what: str, value: float, step: int, epoch: int, lr: float, weight_decay: float,
                store: CheckpointStore | None) -> ConfigError:
    """One line: what became non-finite, at which step, what to change, and where the last good state is."""
    if step == 1:  # nothing has been updated yet: the settings cannot be the cause
        fix = "the model's output is not finite before any update; check the model's weights and the inputs"
    else:
        fix = f"lower --lr (now {lr})" + (f" or train.weight_decay (now {weight_decay})" if weight_decay else "")
    kept = ""
    if store is not None and store.last_step is not None:
        kept = (f"; the last good checkpoint (step {store.last_step}) is kept in '{store.root}': rerun with "
                "--resume and safer settings to continue from it")
    return ConfigError(f"{what} became {value} at step {step} (epoch {epoch}); {fix}{kept}")


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])
