"""Experiment: readout variants. SCALE=float (ANCHOR_SCALE); CENTER=1: cosine after subtracting the mean frozen
embedding of the training inputs from both the input embedding and the anchors."""
import os, sys, runpy
from pathlib import Path
import torch, torch.nn.functional as F
import promptlab.methods.readout as ro
import promptlab.methods.adapted as ad, promptlab.methods.soft as soft, promptlab.methods.baselines as bl
if os.environ.get("SCALE"):
    ro.ANCHOR_SCALE = float(os.environ["SCALE"])
_state = {}
if os.environ.get("CENTER") == "1":
    def _anchor_logits(self, emb):
        a = F.normalize(self.anchors, dim=-1) if self.anchors.requires_grad else self.anchors
        mu = _state["mu"]
        return ro.ANCHOR_SCALE * F.normalize(emb.float() - mu, dim=-1) @ F.normalize(a - mu, dim=-1).T
    ro.Readout._anchor_logits = _anchor_logits
    _orig_fit = ad.fit_adapted
    def fit(ctx, method, model):
        texts = [ctx.template.render(ex, ctx.task.verbalizers or None) for ex in ctx.train]
        _state["mu"] = F.normalize(ctx.backbone.embed(texts).float(), dim=-1).mean(0)
        return _orig_fit(ctx, method, model)
    soft.fit_adapted = fit; bl.fit_adapted = fit; ad.fit_adapted = fit
runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
