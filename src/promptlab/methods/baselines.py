"""Baselines in the same harness: a linear probe on frozen embeddings, LoRA, and full fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..backbones import Backbone
from ..config import RunConfig
from ..errors import ConfigError, ModelError
from ..tasks.base import Example, Task, Template
from .adapted import AdaptedPredictor, fit_adapted, load_anchors, unfrozen_copy
from .base import FitContext, Method, Prediction, Predictor
from .readout import predictions_from_scores
from .soft import TASK_TYPES

HEAD_FILE = "head.safetensors"


@dataclass
class ProbePredictor(Predictor):
    weight: torch.Tensor | None = None  # [C, H]
    bias: torch.Tensor | None = None  # [C]

    def predict(self, examples: list[Example], batch_size: int = 32) -> list[Prediction]:
        inputs = [self.template.render(ex) for ex in examples]
        x = self.backbone.embed(inputs, batch_size=batch_size)
        return predictions_from_scores(self.task, inputs, x @ self.weight.T + self.bias)

    def n_trainable(self) -> int:
        return int(self.weight.numel() + self.bias.numel())

    def _save_files(self, out: Path) -> None:
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(out / HEAD_FILE))


class LinearProbe(Method):
    name, family = "linear-probe", "baseline"
    summary = "logistic-regression head on frozen sentence embeddings (C chosen on dev)"
    kinds = ("encoder",)
    trains = True

    def template_for(self, task: Task, config: RunConfig, kind: str = "") -> Template:
        return task.plain_template()

    def check(self, backbone: Backbone, task: Task) -> None:
        super().check(backbone, task)
        if task.kind != "choices":
            raise ConfigError(f"linear-probe needs a task with labels; '{task.name}' has free-text answers")

    def fit(self, ctx: FitContext) -> Predictor:
        from sklearn.linear_model import LogisticRegression

        self.check(ctx.backbone, ctx.task)
        emb = lambda exs: ctx.backbone.embed([ctx.template.render(e) for e in exs]).numpy()
        x, y = emb(ctx.train), np.array([e.label for e in ctx.train])
        xd, yd = emb(ctx.dev), np.array([e.label for e in ctx.dev])
        if len(set(y.tolist())) < 2:
            raise ConfigError("linear-probe needs training examples of at least two labels; raise --train-size")
        best = None
        for c in (0.1, 1.0, 10.0, 100.0):
            clf = LogisticRegression(C=c, max_iter=2000, random_state=ctx.config.seed).fit(x, y)
            acc = float((clf.predict(xd) == yd).mean()) if len(yd) else 0.0
            if best is None or acc > best[0]:
                best = (acc, c, clf)
        acc, c, clf = best
        n_labels = len(ctx.task.labels)
        w = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
        b = np.full(n_labels, -1e4, dtype=np.float32)  # labels never seen in training are never predicted
        coef, inter = (clf.coef_, clf.intercept_) if len(clf.classes_) > 2 else (
            np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2]), np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2]))
        for row, cls in enumerate(clf.classes_):
            w[cls], b[cls] = coef[row], inter[row]
        return ProbePredictor(self.name, ctx.backbone, ctx.task, ctx.template, weight=torch.from_numpy(w),
                              bias=torch.from_numpy(b), history=[{"C": c, "dev_score": acc}])

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        try:
            head = load_file(str(path / HEAD_FILE))
        except Exception as e:
            raise ModelError(f"cannot read '{path / HEAD_FILE}' ({type(e).__name__}); retrain or restore it") from None
        t = meta["template"]
        return ProbePredictor(self.name, backbone, task, Template(t["name"], t["text"]), weight=head["weight"],
                              bias=head["bias"])


class LoRA(Method):
    name, family = "lora", "baseline"
    summary = "low-rank updates to the attention weights (PEFT LoRA, r=8)"
    trains = True

    def template_for(self, task: Task, config: RunConfig, kind: str = "") -> Template:
        return task.plain_template()

    def fit(self, ctx: FitContext) -> Predictor:
        from peft import LoraConfig, get_peft_model

        self.check(ctx.backbone, ctx.task)
        base = unfrozen_copy(ctx.backbone.model)  # LoRA injects layers in place: keep the shared backbone clean
        base.requires_grad_(False)
        cfg = LoraConfig(task_type=TASK_TYPES[ctx.backbone.kind], r=8, lora_alpha=16, lora_dropout=0.0,
                         target_modules=_lora_targets(base), base_model_name_or_path=ctx.backbone.name)
        return fit_adapted(ctx, self.name, get_peft_model(base, cfg))

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        import copy

        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(copy.deepcopy(backbone.model), str(path))
        except Exception as e:
            raise ModelError(f"cannot load the LoRA adapter in '{path}' ({type(e).__name__}); retrain or restore it") from None
        return _adapted(self.name, backbone, task, meta, model, path)


def _lora_targets(model: torch.nn.Module) -> list[str]:
    """Attention projections by name, so tiny test models and unknown architectures work too."""
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for pair in (("query", "value"), ("q", "v"), ("q_proj", "v_proj")):
        if set(pair) <= names:
            return list(pair)
    names |= {n.split(".")[-1] for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    if "c_attn" in names:
        return ["c_attn"]
    raise ConfigError("lora cannot find attention projections in this model; use prompt-tuning or full-finetune")


class FullFinetune(Method):
    name, family = "full-finetune", "baseline"
    summary = "every weight trained (AdamW 3e-5) on a copy of the model"
    trains = True

    def template_for(self, task: Task, config: RunConfig, kind: str = "") -> Template:
        return task.plain_template()

    def fit(self, ctx: FitContext) -> Predictor:
        self.check(ctx.backbone, ctx.task)
        return fit_adapted(ctx, self.name, unfrozen_copy(ctx.backbone.model))

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        try:
            model = type(backbone.model).from_pretrained(str(path / "model"))
        except Exception as e:
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
