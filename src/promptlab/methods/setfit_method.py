"""`setfit`: the SetFit library as a baseline, in the same harness as hard and soft prompts.

SetFit (Tunstall et al., 2022) is what a practitioner reaches for to classify with a sentence encoder and a
handful of labels: it fine-tunes the *whole* encoder contrastively on pairs built from the labelled
examples (same label -> similar, different label -> dissimilar), then fits a logistic-regression head on
the new embeddings. It is the few-shot rival the hard prompts have to beat, so it runs through the
library itself (setfit 1.x, its default recipe), not a re-implementation:

- body: a copy of the backbone as a SentenceTransformer with the backbone's own pooling (and Normalize
  when the backbone has it), so SetFit starts from exactly the model every other method uses;
- pairs: the paper's recipe, R = 20 positive and 20 negative pairs per example (`num_iterations=20`,
  also the default of SetFit's original trainer), one epoch, batch `--train-batch-size` (16), body lr 2e-5
  (`--lr` overrides). Why not setfit 1.x's newer default (`oversampling`, every unique pair once): at 8
  examples per class it makes 144 pairs, 9 steps, which barely moves the encoder: on SST-2 with MiniLM the
  default head then predicts one class for every input (bench/quality.md);
- a CPU budget: 40 x N pairs is 5,000 steps at N = 2,000, so training stops after `--max-steps` optimizer
  steps, by default `DEFAULT_MAX_STEPS` (250 steps = 4,000 pairs). Up to N = 100 (e.g. 8 or 32 per class
  on SST-2) the cap never binds; above it SetFit runs on that budget, not its full recipe;
- head: SetFit's default `LogisticRegression()`.

Artifact: SetFit's own `save_pretrained` directory (`setfit/`: load it with `SetFitModel.from_pretrained`)
plus the head as `head.safetensors`. promptlab reloads the encoder with sentence-transformers and the
head from safetensors, so `eval --prompt` never unpickles anything (SetFit keeps its head as a pickle).
Trainable parameters: every weight of the encoder plus the head — that is what SetFit trains.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..backbones import Backbone
from ..errors import ConfigError, ModelError
from ..tasks.base import Task, Template
from .base import FitContext, Predictor
from .linear_head import HEAD_FILE, HeadMethod, HeadPredictor, head_as_logits
from .registry import register

if TYPE_CHECKING:
    from ..config import RunConfig

SETFIT_DIR = "setfit"
PAIRS_PER_EXAMPLE = 20  # SetFit's R (num_iterations): positive pairs per example, and as many negative
DEFAULT_MAX_STEPS = 250  # x batch 16 = 4,000 pairs: ~0.6 s a step for MiniLM on 2 idle CPU cores, ~2.5 min
DEFAULT_BODY_LR = 2e-5  # SetFit's default body learning rate


def _st_modules() -> tuple[Any, Any, Any]:
    try:  # sentence-transformers >= 6 moved the modules; the old path still works with a warning
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # pragma: no cover - older sentence-transformers
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return Transformer, Pooling, Normalize


def sentence_transformer(backbone: Backbone, workdir: Path) -> Any:
    """A trainable copy of the backbone as a SentenceTransformer that pools the way the backbone does.

    Built from a save_pretrained copy rather than the hub name, so in-memory and local models work
    offline, and the shared frozen backbone is never touched by SetFit's optimizer.
    """
    from sentence_transformers import SentenceTransformer

    Transformer, Pooling, Normalize = _st_modules()
    backbone.model.save_pretrained(workdir)
    backbone.tokenizer.padding_side = "right"
    backbone.tokenizer.save_pretrained(workdir)
    word = Transformer(str(workdir), max_seq_length=backbone.max_length)
    modules = [word, Pooling(backbone.hidden_size, pooling_mode=backbone.pooling)]
    if backbone.normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu")


@dataclass
class SetFitPredictor(HeadPredictor):
    body: Any = None  # SentenceTransformer, fine-tuned
    setfit_model: Any = None  # the SetFitModel after fit (saved with SetFit's own save_pretrained)
    head_params: int = 0

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        if not texts:
            return torch.empty(0, self.weight.shape[1])
        x = self.body.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        return x.float().cpu()

    def n_trainable(self) -> int:
        return int(sum(p.numel() for p in self.body.parameters())) + self.head_params

    def _save_files(self, out: Path) -> None:
        if self.setfit_model is not None:
            self.setfit_model.save_pretrained(str(out / SETFIT_DIR))
        else:  # a reloaded predictor saved again: the encoder is all SetFit's directory needs besides the head
            self.body.save(str(out / SETFIT_DIR))
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous(),
                   "head_params": torch.tensor([self.head_params])}, str(out / HEAD_FILE))


@register
class SetFit(HeadMethod):
    name = "setfit"
    summary = "SetFit library: contrastive fine-tuning of the whole encoder on pairs + logistic head"

    def check(self, backbone: Backbone, task: Task) -> None:
        super().check(backbone, task)  # an encoder and a task with labels
        try:
            import setfit  # noqa: F401
        except ImportError:
            raise ConfigError("method 'setfit' needs the setfit package; run `make demo` or "
                              "`pip install -c constraints.txt setfit`") from None

    def plan(self, config: RunConfig, n_train: int) -> dict[str, int] | None:
        tc = config.train  # one pass over the pairs, capped as fit caps it
        return {"epochs": 1, "steps": min(pair_steps(n_train, tc.batch_size), tc.max_steps or DEFAULT_MAX_STEPS),
                "batch_size": tc.batch_size, "grad_accum": 1}

    def fit(self, ctx: FitContext) -> Predictor:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments
        from sklearn.linear_model import LogisticRegression
        from transformers import TrainerCallback

        self.check(ctx.backbone, ctx.task)
        texts = [ctx.template.render(e) for e in ctx.train]
        labels = [int(e.label) for e in ctx.train]
        if len(set(labels)) < 2:
            raise ConfigError("setfit needs training examples of at least two labels (it learns from pairs of "
                              "different labels); raise --train-size")
        tc = ctx.config.train
        work = Path(tempfile.mkdtemp(prefix="promptlab-setfit-"))
        history: list[dict[str, Any]] = []
        t0 = time.perf_counter()

        class _Losses(TrainerCallback):  # SetFit logs the contrastive loss; keep it as the training curve
            def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
                loss = (logs or {}).get("embedding_loss", (logs or {}).get("loss"))
                if loss is not None:
                    history.append({"epoch": round(float(state.epoch or 0), 4), "step": int(state.global_step),
                                    "train_loss": float(loss), "seconds": round(time.perf_counter() - t0, 3)})

        steps = pair_steps(len(labels), tc.batch_size)
        cap = tc.max_steps or DEFAULT_MAX_STEPS
        try:
            body = sentence_transformer(ctx.backbone, work / "body")
            model = SetFitModel(model_body=body, model_head=LogisticRegression(), labels=None)
            args = TrainingArguments(
                output_dir=str(work / "checkpoints"), batch_size=tc.batch_size, num_epochs=1,
                num_iterations=PAIRS_PER_EXAMPLE,
                body_learning_rate=tc.lr if tc.lr is not None else DEFAULT_BODY_LR,
                # max_steps is a target, not a cap, in SetFit (it loops the pairs to reach it): set it only
                # when the full pass over the pairs is longer
                max_steps=cap if steps > cap else -1, seed=ctx.config.seed, report_to="none",
                save_strategy="no", logging_steps=max(1, min(steps, cap) // 20), show_progress_bar=True,
            )
            trainer = Trainer(model=model, args=args,
                              train_dataset=Dataset.from_dict({"text": texts, "label": labels}),
                              callbacks=[_Losses()])
            _quiet(trainer)
            ctx.started()
            with warnings.catch_warnings():  # CPU runs: the pair loader's pin_memory notice is noise
                warnings.filterwarnings("ignore", message=".*pin_memory.*")
                trainer.train()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        body.eval()
        weight, bias, head_params = head_as_logits(model.model_head, len(ctx.task.labels))
        pred = SetFitPredictor(self.name, ctx.backbone, ctx.task, ctx.template, body=body, weight=weight, bias=bias,
                               setfit_model=model, head_params=head_params)
        if ctx.dev:
            dev_pred = pred.predict(ctx.dev, batch_size=ctx.config.batch_size)
            dev_acc = float(np.mean([p.label == e.label for p, e in zip(dev_pred, ctx.dev)]))
            last = history[-1] if history else {"epoch": 1.0, "step": 0}
            history.append({**last, "epoch": max(1.0, float(last["epoch"])), "dev_score": dev_acc,
                            "seconds": round(time.perf_counter() - t0, 3)})
        pred.history = history
        pred.extras = {"pairs_per_example": 2 * PAIRS_PER_EXAMPLE, "pairs": 2 * PAIRS_PER_EXAMPLE * len(labels),
                       "steps": min(steps, cap), "body_lr": args.body_learning_rate}
        return pred

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        from sentence_transformers import SentenceTransformer

        try:
            head = load_file(str(path / HEAD_FILE))
            body = SentenceTransformer(str(path / SETFIT_DIR), device="cpu")
        except Exception as e:  # noqa: BLE001  (safetensors and sentence-transformers raise many types)
            raise ModelError(f"cannot read the SetFit model in '{path}' ({type(e).__name__}); retrain or restore it") from None
        body.eval()
        t = meta["template"]
        return SetFitPredictor(self.name, backbone, task, Template(t["name"], t["text"]), body=body,
                               weight=head["weight"], bias=head["bias"], head_params=int(head["head_params"][0]),
                               extras=meta.get("extras", {}))


def pair_steps(n_examples: int, batch_size: int) -> int:
    """Optimizer steps of one epoch over SetFit's pairs: R positive and R negative pairs per example."""
    return -(-2 * PAIRS_PER_EXAMPLE * n_examples // batch_size)


def _quiet(trainer: Any) -> None:
    """Keep SetFit's progress bar, drop its per-log dict printing and INFO banner (the table is the output)."""
    from setfit import logging as sf_logging
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class _BarOnly(ProgressCallback):
        def on_log(self, *args: Any, **kwargs: Any) -> None:
            pass

    sf_logging.set_verbosity_warning()
    st = trainer.st_trainer
    if st.pop_callback(ProgressCallback) is not None:
        st.add_callback(_BarOnly())
    st.pop_callback(PrinterCallback)
