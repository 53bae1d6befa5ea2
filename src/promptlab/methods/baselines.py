"""Baselines in the same harness: a linear probe on frozen embeddings, LoRA, and full fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..artifacts import load_anchors
from ..backbones import Backbone
from ..errors import ConfigError, ModelError
from ..tasks.base import Task, Template
from .adapted import AdaptedMethod, AdaptedPredictor, fit_adapted, unfrozen_copy
from .base import FitContext, Predictor
from .linear_head import HEAD_FILE, HeadMethod, HeadPredictor, head_as_logits
from .registry import register
from .soft import TASK_TYPES

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class ProbePredictor(HeadPredictor):
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        return self.backbone.embed(texts, batch_size=batch_size)

    def n_trainable(self) -> int:
        return int(self.weight.numel() + self.bias.numel())

    def _save_files(self, out: Path) -> None:
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(out / HEAD_FILE))


@register
class LinearProbe(HeadMethod):
    name = "linear-probe"
    summary = "logistic-regression head on frozen sentence embeddings (C chosen on dev)"

    def fit(self, ctx: FitContext) -> Predictor:
        from sklearn.linear_model import LogisticRegression

        self.check(ctx.backbone, ctx.task)
        emb = lambda exs: ctx.backbone.embed([ctx.template.render(e) for e in exs]).numpy()
        y, yd = np.array([e.label for e in ctx.train]), np.array([e.label for e in ctx.dev])
        if len(set(y.tolist())) < 2:
            raise ConfigError("linear-probe needs training examples of at least two labels; raise --train-size")
        ctx.started()
        x, xd = emb(ctx.train), emb(ctx.dev)
        best = None
        for c in (0.1, 1.0, 10.0, 100.0):
            clf = LogisticRegression(C=c, max_iter=2000, random_state=ctx.config.seed).fit(x, y)
            acc = float((clf.predict(xd) == yd).mean()) if len(yd) else 0.0
            if best is None or acc > best[0]:
                best = (acc, c, clf)
        acc, c, clf = best
        w, b, _ = head_as_logits(clf, len(ctx.task.labels))
        return ProbePredictor(self.name, ctx.backbone, ctx.task, ctx.template, weight=w, bias=b,
                              history=[{"C": c, "dev_score": acc}])

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        try:
            head = load_file(str(path / HEAD_FILE))
        except Exception as e:  # noqa: BLE001 — safetensors/transformers/PEFT raise many types for damaged files
            raise ModelError(f"cannot read '{path / HEAD_FILE}' ({type(e).__name__}); retrain or restore it") from None
        t = meta["template"]
        return ProbePredictor(self.name, backbone, task, Template(t["name"], t["text"]), weight=head["weight"],
                              bias=head["bias"])


class WeightBaseline(AdaptedMethod):
    """A baseline that changes the model's weights (on a copy), trained by the shared loop on the bare input."""

    family = "baseline"
    bare_input = True


@register
class LoRA(WeightBaseline):
    name = "lora"
    summary = "low-rank updates to the attention weights (PEFT LoRA; --lora-r 8, --lora-alpha 16, --lora-targets)"
    optimizer, default_lr = "adamw", 1e-3

    def reads(self, cfg: RunConfig) -> set[str]:
        return super().reads(cfg) | {"lora_r", "lora_alpha", "lora_targets"}

    def fit(self, ctx: FitContext) -> Predictor:
        from peft import LoraConfig, get_peft_model

        self.check(ctx.backbone, ctx.task)
        base = unfrozen_copy(ctx.backbone.model)  # LoRA injects layers in place: keep the shared backbone clean
        base.requires_grad_(False)
        tc = ctx.config.train
        targets = _lora_targets(base, tc.lora_targets, ctx.backbone.name)
        cfg = LoraConfig(task_type=TASK_TYPES[ctx.backbone.kind], r=tc.lora_r, lora_alpha=tc.lora_alpha,
                         lora_dropout=0.0, target_modules=targets, base_model_name_or_path=ctx.backbone.name)
        pred = fit_adapted(ctx, self, get_peft_model(base, cfg))
        pred.extras["lora"] = {"r": tc.lora_r, "alpha": tc.lora_alpha, "targets": targets}
        return pred

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        import copy

        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(path))
        except Exception as e:  # noqa: BLE001 — safetensors/transformers/PEFT raise many types for damaged files
            raise ModelError(f"cannot load the LoRA adapter in '{path}' ({type(e).__name__}); retrain or restore it") from None
        return _adapted(self.name, backbone, task, meta, model, path)


# Attention projections by the names architectures give them: query and value apart, else the fused projection.
LORA_PAIRS = (("query", "value"), ("q", "v"), ("q_proj", "v_proj"), ("query_proj", "value_proj"), ("q_lin", "v_lin"))
LORA_FUSED = ("c_attn", "query_key_value", "qkv_proj", "Wqkv", "qkv")


def _lora_targets(model: torch.nn.Module, asked: str | None = None, model_name: str = "") -> list[str]:
    """The modules --lora-targets names (each must be a linear layer of the model), else the attention's
    projections: PEFT's own table for the model's type where its names are in the model, else by name, so tiny
    test models and families PEFT does not list work too."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    # GPT-2's attention is a Conv1D, a Linear with its weight transposed: LoRA takes both
    names = {n.split(".")[-1] for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    if asked is not None:
        targets = list(dict.fromkeys(t.strip() for t in asked.split(",") if t.strip()))
        missing = [t for t in targets if t not in names]
        if not targets or missing:
            raise ConfigError(f"--lora-targets '{asked}' names {'nothing' if not targets else repr(missing[0])}, "
                              f"not a linear module of '{model_name}'; name some of {', '.join(sorted(names))}")
        return targets
    family = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    known = PEFT_TARGETS.get(family)
    if known and set(known) <= names:
        return list(known)
    for pair in LORA_PAIRS:
        if set(pair) <= names:
            return list(pair)
    for fused in LORA_FUSED:
        if fused in names:
            return [fused]
    raise ConfigError(f"lora cannot find attention projections in {family} models ({type(model).__name__}); name "
                      "them with --lora-targets, or use "
                      "prompt-tuning or full-finetune")


@register
class FullFinetune(WeightBaseline):
    name = "full-finetune"
    summary = "every weight trained (AdamW 3e-5) on a copy of the model"
    optimizer, default_lr = "adamw", 3e-5

    def fit(self, ctx: FitContext) -> Predictor:
        self.check(ctx.backbone, ctx.task)
        # --dtype auto (bf16 frozen weights on a GPU) trains a float32 copy; an explicit bfloat16 is refused
        return fit_adapted(ctx, self, unfrozen_copy(ctx.backbone.model, float32=ctx.config.dtype == "auto"))

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        try:
            model = type(backbone.model).from_pretrained(str(path / "model"))
        except Exception as e:  # noqa: BLE001 — safetensors/transformers/PEFT raise many types for damaged files
            raise ModelError(f"cannot load the fine-tuned model in '{path / 'model'}' ({type(e).__name__}); "
                             "retrain or restore it") from None
        model.eval()
        return _adapted(self.name, backbone, task, meta, model, path)


def _adapted(name: str, backbone: Backbone, task: Task, meta: dict[str, Any], model: Any, path: Path) -> AdaptedPredictor:
    t = meta["template"]
    extras = meta.get("extras", {})
    return AdaptedPredictor(name, backbone, task, Template(t["name"], t["text"]), model=model,
                            anchors=load_anchors(path), extras=extras,
                            max_new_tokens=extras.get("max_new_tokens", task.max_new_tokens))
