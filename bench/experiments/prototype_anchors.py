"""Experiment: label anchors = class prototypes of the training inputs under the frozen model (desc + examples,
averaged on the unit sphere), instead of the label descriptions alone. PROTO=1 enables."""
import os, sys, runpy
from pathlib import Path
import torch, torch.nn.functional as F
import promptlab.methods.readout as ro
import promptlab.methods.adapted as ad
import promptlab.methods.soft as soft
import promptlab.methods.baselines as bl
_state = {}
_orig_la = ro.label_anchors
def label_anchors(backbone, task):
    if "protos" in _state:
        return _state["protos"]
    return _orig_la(backbone, task)
ro.label_anchors = label_anchors
_orig_fit = ad.fit_adapted
def fit(ctx, method, model):
    if os.environ.get("PROTO") == "1" and ctx.task.kind == "choices" and ctx.backbone.kind == "encoder":
        texts = [ctx.template.render(ex, ctx.task.verbalizers or None) for ex in ctx.train]
        emb = F.normalize(ctx.backbone.embed(texts).float(), dim=-1)
        labels = torch.tensor([ex.label for ex in ctx.train])
        desc = _orig_la(ctx.backbone, ctx.task)
        protos = [F.normalize(torch.cat([desc[c:c+1], emb[labels == c]]).mean(0), dim=-1) for c in range(len(desc))]
        _state["protos"] = torch.stack(protos)
        a = _state["protos"]; print("proto cos", (a @ a.T).tolist(), file=sys.stderr)
    try:
        return _orig_fit(ctx, method, model)
    finally:
        _state.pop("protos", None)
soft.fit_adapted = fit; bl.fit_adapted = fit; ad.fit_adapted = fit
runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
