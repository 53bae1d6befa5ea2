"""Shared by the label-anchor experiments: for each fit of an encoder choice task, the anchors the readout compares
with are what `make(ctx)` returns (None keeps the label descriptions'); promptlab's modules are patched for the one
process, then bench/quality_exp.py runs as usual."""
import runpy
from pathlib import Path
import torch, torch.nn.functional as F
import promptlab.methods.readout as ro
import promptlab.methods.adapted as ad, promptlab.methods.soft as soft, promptlab.methods.baselines as bl

description_anchors = ro.label_anchors


def frozen_train(ctx):
    """The training inputs' unit-norm embeddings under the frozen model, and their labels."""
    texts = [ctx.template.render(ex, ctx.task.verbalizers or None) for ex in ctx.train]
    return F.normalize(ctx.backbone.embed(texts).float(), dim=-1), torch.tensor([ex.label for ex in ctx.train])


def run_with_anchors(make):
    state = {}
    ro.label_anchors = lambda backbone, task: state["anchors"] if "anchors" in state else description_anchors(backbone, task)
    orig_fit = ad.fit_adapted

    def fit(ctx, method, model):
        if ctx.task.kind == "choices" and ctx.backbone.kind == "encoder" and (a := make(ctx)) is not None:
            state["anchors"] = a
        try:
            return orig_fit(ctx, method, model)
        finally:
            state.pop("anchors", None)

    soft.fit_adapted = bl.fit_adapted = ad.fit_adapted = fit
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
