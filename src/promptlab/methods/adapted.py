"""A backbone adapted by trained parameters — soft prompts, LoRA or full fine-tuning — and how it trains.

Soft and baseline methods differ only in which parameters they add or unfreeze; they share the
readout (readout.py), the loop (training.py) and this predictor, so their numbers are comparable.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors.torch import save_file

from .. import metrics
from ..artifacts import ANCHORS_FILE, PROMPT_INIT_FILE
from ..errors import ConfigError
from ..model_layout import input_prompt, virtual_tokens
from ..tasks.base import Example, Task
from ..training import OPTIMIZERS, planned_steps, train_loop
from .base import FitContext, Method, Prediction, Predictor
from .readout import Readout

if TYPE_CHECKING:
    from ..config import RunConfig

# transformers' checkpointed layers drop the cache they are given (its update would run twice on the replay), and
# prefix tuning's keys and values arrive as that cache.
NO_PREFIX_CHECKPOINTING = ("--gradient-checkpointing cannot run prefix-tuning: transformers' checkpointed layers drop "
                           "the cache its prefix is passed in; drop the flag (prompt tuning and LoRA take it)")


class AdaptedMethod(Method):
    """A method trained by the shared loop (training.py): soft prompts, LoRA, full fine-tuning. Each declares the
    optimizer it trains with and its default learning rate; a registered one that lacks them fails at import."""

    trains = True
    optimizer: ClassVar[str] = ""  # one of training.OPTIMIZERS
    default_lr: ClassVar[float] = 0.0  # used when --lr is not given

    def reads(self, cfg: RunConfig) -> set[str]:
        return super().reads(cfg) | {"grad_accum", "gradient_checkpointing"}

    def plan(self, config: RunConfig, n_train: int) -> dict[str, int] | None:
        tc = config.train
        return {"epochs": tc.epochs, "steps": planned_steps(n_train, tc), "batch_size": tc.batch_size,
                "grad_accum": tc.grad_accum}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and (cls.optimizer not in OPTIMIZERS or not cls.default_lr > 0):
            raise TypeError(f"method {cls.__name__} trains through the shared loop: declare optimizer (one of "
                            f"{OPTIMIZERS}) and a positive default_lr")


@dataclass
class AdaptedPredictor(Predictor):
    anchors: torch.Tensor | None = None
    prompt_init: torch.Tensor | None = None  # what a soft prompt started from, as PEFT saves the trained one

    def __post_init__(self) -> None:
        self.retarget(self.task, self.anchors)
        self.extras.setdefault("max_new_tokens", self.max_new_tokens)

    def retarget(self, task: Task, anchors: torch.Tensor | None) -> None:
        """Read out `task`'s labels (with these anchors, for encoders) through the same model and prompt."""
        # eval's --max-new-tokens may have set the readout's length past the artifact's
        new_tokens = self.readout.max_new_tokens if self.readout is not None else self.max_new_tokens
        self.task, self.anchors = task, anchors
        self.readout = Readout(self.backbone, task, anchors=anchors, max_new_tokens=new_tokens, scoring=self.scoring)
        self.anchors = self.readout.anchors

    def soft_prompt(self) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]] | None:
        """A PEFT prompt-learning model's trained rows as PEFT saves them, the rows it started from, and PEFT's
        config; None for other adapted models (LoRA, full fine-tuning)."""
        cfg = getattr(self.model, "peft_config", {}).get("default") if hasattr(self.model, "peft_config") else None
        if cfg is None or not cfg.is_prompt_learning:
            return None
        return self.model.get_prompt_embedding_to_save("default"), self.prompt_init, cfg.to_dict()

    def predict(self, examples: list[Example], batch_size: int = 32) -> list[Prediction]:
        self.model.eval()
        return self.readout.predict(self.model, self.inputs(examples), batch_size)

    def n_trainable(self) -> int:
        return int(self.extras.get("trainable_params", 0))

    def _save_files(self, out: Path) -> None:
        if hasattr(self.model, "peft_config"):
            self.model.save_pretrained(str(out))
        else:
            self.model.save_pretrained(str(out / "model"))
        if self.anchors is not None:
            save_file({"anchors": self.anchors.contiguous()}, str(out / ANCHORS_FILE))
        if self.prompt_init is not None:
            save_file({"prompt_embeddings": self.prompt_init.contiguous()}, str(out / PROMPT_INIT_FILE))


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_fingerprint(inputs: list[str], examples: list[Example]) -> str:
    """Hash of what the loop trains on: a checkpoint is only resumed on the same examples in the same order."""
    h = hashlib.sha256()
    for text, ex in zip(inputs, examples):
        h.update(repr((text, ex.label, ex.answers)).encode())
    return h.hexdigest()


def fit_adapted(ctx: FitContext, method: AdaptedMethod, model: torch.nn.Module) -> AdaptedPredictor:
    """Train `model` (the backbone with an adapter, or an unfrozen copy) on ctx.train; select on ctx.dev."""
    cfg = ctx.config
    _check_room(ctx, model)
    # A soft prompt on a chat model trains on the very text it is evaluated on: the same chat rendering (inputs()).
    pred = AdaptedPredictor(method.name, ctx.backbone, ctx.task, ctx.template, model=model,
                            max_new_tokens=cfg.max_new_tokens or ctx.task.max_new_tokens, chat=method.chat_format(ctx), scoring=cfg.scoring)
    if any(p.requires_grad and p.dtype != torch.float32 for p in model.parameters()):
        # bf16 weights cannot take small updates (8 mantissa bits): training them needs float32 master copies
        raise ConfigError(f"{method.name} trains the model's own weights, which are {cfg.dtype} here; use --dtype "
                          "float32 (bfloat16 suits methods that keep the model frozen)")
    anchors = _trainable_anchors(model, pred) if cfg.train.train_anchors else None
    pred.extras["trainable_params"] = count_trainable(model)
    inputs = pred.inputs(ctx.train)
    lengths = [len(s) for s in inputs]

    def loss_fn(m: torch.nn.Module, idx: list[int]) -> torch.Tensor:
        return pred.readout.loss(m, [inputs[i] for i in idx], [ctx.train[i] for i in idx])

    def dev_fn(m: torch.nn.Module) -> float:
        pred.model = m
        return dev_score(ctx.task, ctx.dev, pred.predict(ctx.dev, cfg.batch_size))

    ctx.started()
    with recomputed_activations(model, cfg.train.gradient_checkpointing, ctx.backbone.name):
        result = train_loop(model, lengths, cfg.train, loss_fn=loss_fn, dev_fn=dev_fn, seed=cfg.seed,
                            optimizer=method.optimizer, default_lr=method.default_lr, label=method.name,
                            checkpoint=ctx.checkpoint, data_fingerprint=training_fingerprint(inputs, ctx.train))
    if anchors is not None:  # the trained anchors go in anchors.safetensors like frozen ones; the model stays clean
        del model.promptlab_anchors
        pred.anchors = pred.readout.anchors = torch.nn.functional.normalize(anchors.detach(), dim=-1).clone()
        pred.extras["trained_anchors"] = True
    pred.model = _unwrap(model)
    pred.history = result.history
    # No wall-clock time here: the artifact of a repeated run must be byte-identical (metrics.json has it).
    pred.extras.update({"best_epoch": result.best_epoch, "steps": result.steps, "lr": result.lr,
                        "optimizer": result.optimizer})
    pred.train_info = {"processes": result.processes, "examples_per_process": result.local_examples,
                       "resumed_from_step": result.resumed_from,
                       **({"sharding": result.sharding} if result.sharding else {})}
    return pred


@contextmanager
def recomputed_activations(model: Any, on: bool, name: str) -> Iterator[None]:
    """--gradient-checkpointing for the length of a fit: transformers' own, non-reentrant (torch.utils.checkpoint
    with use_reentrant=False), which needs no `enable_input_require_grads` for a frozen embedding layer and keeps
    dropout's draws; switched off after, since soft prompts train the shared backbone that later methods use."""
    if not on:
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if virtual_tokens(model) and input_prompt(model) is None:
        raise ConfigError(NO_PREFIX_CHECKPOINTING)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"--gradient-checkpointing: transformers has no gradient checkpointing for '{name}' "
                          f"({type(base).__name__}); drop the flag")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        base.gradient_checkpointing_disable()


def _trainable_anchors(model: torch.nn.Module, pred: AdaptedPredictor) -> torch.nn.Parameter | None:
    """--train-anchors: the label anchors (C x H, from the label descriptions) become parameters of `model` for
    the loop's sake — so the best-epoch copy, checkpoints and DDP all cover them — and are taken off after."""
    if pred.anchors is None:
        raise ConfigError("--train-anchors applies to encoders on choice tasks (the label anchors); this run has "
                          "none: drop the flag")
    p = torch.nn.Parameter(pred.anchors.clone())
    model.register_parameter("promptlab_anchors", p)
    pred.readout.anchors = p
    return p


def _check_room(ctx: FitContext, model: torch.nn.Module) -> None:
    """Virtual tokens take positions: as many as the model has leave none for the input (a shape crash)."""
    peft = getattr(model, "peft_config", {}).get("default")
    n = int(getattr(peft, "num_virtual_tokens", 0) or 0)
    positions = ctx.backbone.positions
    if n and positions and n >= positions:
        raise ConfigError(f"--virtual-tokens {n} leaves no room for the input: '{ctx.backbone.name}' has "
                          f"{positions} positions; use fewer virtual tokens, e.g. 20")


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)  # accelerate may wrap in DDP under `accelerate launch`


def dev_score(task: Task, dev: list[Example], preds: list[Prediction]) -> float:
    """Model selection score: accuracy for choices, token F1 for text."""
    if task.kind == "choices":
        return metrics.accuracy([p.label for p in preds], [ex.label for ex in dev])
    return sum(metrics.f1(p.prediction, list(ex.answers)) for p, ex in zip(preds, dev)) / max(len(dev), 1)


def unfrozen_copy(model: torch.nn.Module, float32: bool = False) -> torch.nn.Module:
    """Weight-changing baselines work on a copy: the shared backbone must stay frozen for other methods.
    `float32`: the copy trains in float32 whatever the frozen weights' dtype (--dtype auto on a GPU)."""
    clone = copy.deepcopy(model)
    if float32:
        clone.float()
    clone.requires_grad_(True)
    return clone

