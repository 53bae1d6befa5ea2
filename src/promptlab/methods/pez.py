"""pez: a discrete (hard) prompt found by gradient descent — Wen et al. 2023, "Hard Prompts Made Easy".

Training is PEFT prompt tuning with one change: every forward pass sees each prompt vector replaced by
its nearest vocabulary embedding (cosine, non-special tokens), while the gradient updates the
continuous copy (straight-through). The result is a sequence of real tokens: the artifact is their ids
and decoded text (`pez.json`), readable and usable in any other tool. Its predictor prepends exactly
those ids (their embedding rows in front of the input, as PEFT prompt tuning places a prompt), so
`eval --prompt` reproduces it even when the decoded text would tokenise differently. The continuous
prompt it came from is scored on the same evaluation examples (metrics.json `variants.continuous`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..errors import ModelError
from ..tasks.base import Task, Template
from .adapted import AdaptedPredictor, fit_adapted
from .base import FitContext, Predictor
from .registry import register
from .soft import PromptTuning

PEZ_FILE = "pez.json"


class VocabProjection:
    """Nearest vocabulary embedding by cosine similarity, among the tokenizer's non-special tokens."""

    def __init__(self, backbone: Backbone) -> None:
        tok = backbone.tokenizer
        weight = backbone.model.get_input_embeddings().weight.detach()  # [V, H], frozen
        special = set(tok.all_special_ids)
        self.allowed = torch.tensor([i for i in range(min(len(tok), weight.shape[0])) if i not in special],
                                    device=weight.device)
        # projected rows are read by token id through the embedding module (no second copy of the vocabulary),
        # which is what the model reads for them: Gemma scales its table inside that module
        self.embed = backbone.model.get_input_embeddings()
        self.unit = F.normalize(weight[self.allowed].float(), dim=-1)  # [A, H]

    def nearest_ids(self, prompt: torch.Tensor) -> torch.Tensor:
        """Token ids nearest to each row of `prompt` [..., H] -> [...]."""
        sims = F.normalize(prompt.detach().float(), dim=-1) @ self.unit.T  # [..., A]
        return self.allowed[sims.argmax(dim=-1)]

    def straight_through(self, prompt: torch.Tensor) -> torch.Tensor:
        """Forward value: exactly the nearest vocabulary rows; gradient: the identity onto `prompt`.

        Written as v + (w - w.detach()) rather than w + (v - w).detach(): the two have the same gradient, but
        only this one is bit-exact in the forward (x - x is exactly 0; w + (v - w) can round off v).
        """
        proj = self.embed(self.nearest_ids(prompt)).detach().to(prompt.dtype)
        return proj + (prompt - prompt.detach())


def project_hook(projection: VocabProjection) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return projection.straight_through(output)

    return hook


def prompt_model(backbone: Backbone, method: PromptTuning, ids: list[int]) -> Any:
    """A frozen PEFT prompt whose rows are the embeddings of `ids`: the same as prepending those tokens."""
    from peft import get_peft_model

    model = get_peft_model(backbone.model, method.peft_config(backbone, len(ids)))
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(backbone.word_embeddings(ids))
    model.requires_grad_(False)
    return model.eval()


def describe_ids(backbone: Backbone, ids: list[int]) -> dict[str, Any]:
    tok = backbone.tokenizer
    text = tok.decode(ids)
    again = tok(text, add_special_tokens=False)["input_ids"]
    return {"ids": ids, "text": text, "tokens": tok.convert_ids_to_tokens(ids), "retokenizes": list(again) == ids}


@dataclass
class PezPredictor(AdaptedPredictor):
    """The discrete prompt: token ids in front of the bare input; the artifact is pez.json alone."""

    ids: list[int] = field(default_factory=list)
    continuous: AdaptedPredictor | None = None  # the soft prompt it was projected from (at fit time only)

    def _save_files(self, out: Path) -> None:
        (out / PEZ_FILE).write_text(json.dumps(describe_ids(self.backbone, self.ids), indent=2, ensure_ascii=False))

    def run_info(self) -> dict[str, Any]:
        d = describe_ids(self.backbone, self.ids)
        return {**self.info, "hard_prompt": d["text"], "ids": d["ids"], "tokens": d["tokens"], "retokenizes": d["retokenizes"]}

    def variants(self) -> dict[str, Predictor]:
        return {"continuous": self.continuous} if self.continuous is not None else {}


@register
class Pez(PromptTuning):
    name, family = "pez", "hard"
    summary = "a hard prompt learnt by projected gradients (Wen et al. 2023): real vocabulary tokens any tool can take"
    optimizer, default_lr = "adamw", 0.1  # as Wen et al. train the continuous copy of a PEZ prompt
    reads_chat = False  # its prompt is projected onto words to be read as raw text before the input

    def fit(self, ctx: FitContext) -> Predictor:
        from peft import get_peft_model

        self.check(ctx.backbone, ctx.task)
        n = ctx.config.train.virtual_tokens
        model = get_peft_model(ctx.backbone.model, self.peft_config(ctx.backbone, n))
        notes: dict[str, Any] = {}
        source = self._init(model, ctx, n, notes)
        projection = VocabProjection(ctx.backbone)
        embedding = model.prompt_encoder["default"].embedding
        handle = embedding.register_forward_hook(project_hook(projection))
        try:
            soft = fit_adapted(ctx, self, model)  # dev selection sees the projected prompt, as the hook is on
        finally:
            handle.remove()
        # The continuous copy, scored without projection beside the hard prompt it yields.
        soft.model.requires_grad_(False)
        ids = projection.nearest_ids(embedding.weight).tolist()
        extras = {**soft.extras, "virtual_tokens": n, "ids": ids,
                  "init": notes.get("init", {}).get("init", self.init_of(ctx.config)),
                  "text": describe_ids(ctx.backbone, ids)["text"]}
        if source:  # --init prompt:DIR, recorded as SoftMethod.fit records it
            extras["init_from"] = soft.train_info["init_from"] = source
        return PezPredictor(self.name, ctx.backbone, ctx.task, ctx.template, history=soft.history, extras=extras,
                            model=prompt_model(ctx.backbone, self, ids), anchors=soft.anchors,
                            max_new_tokens=soft.max_new_tokens, train_info=soft.train_info, info=notes, ids=ids,
                            continuous=soft, scoring=ctx.config.scoring)

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        f = path / PEZ_FILE
        try:
            ids = json.loads(f.read_text())["ids"]
            ok = isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ModelError(f"'{f}' is missing or damaged (it must hold the prompt's token ids); retrain or restore it")
        vocab = backbone.model.get_input_embeddings().weight.shape[0]
        if not all(0 <= i < vocab for i in ids):
            raise ModelError(f"'{f}' has token ids outside the vocabulary of '{backbone.name}' ({vocab}); load it "
                             "with the model it was trained on")
        t = meta["template"]
        extras = meta.get("extras", {})
        return PezPredictor(self.name, backbone, task, Template(t["name"], t["text"]), extras=extras,
                            model=prompt_model(backbone, self, ids),
                            max_new_tokens=extras.get("max_new_tokens", task.max_new_tokens), ids=ids)
