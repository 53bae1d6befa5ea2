"""Experiment: probe-fitted label anchors (LP-FT, Kumar et al. 2022). Before a method trains, the anchors — the label
descriptions' frozen embeddings — are fitted as a cosine head (the readout's own temperature) to the training inputs'
frozen embeddings, then frozen; the method then trains against them. PROBE=1 enables; PROBE_STEPS (200), PROBE_LR
(0.01) and PROBE_PULL (0: weight of a squared pull back to the descriptions) tune the fit."""
import os, sys, runpy
from pathlib import Path
import torch, torch.nn.functional as F
import promptlab.methods.readout as ro
import promptlab.methods.adapted as ad, promptlab.methods.soft as soft, promptlab.methods.baselines as bl
_state = {}
_orig_la = ro.label_anchors
def label_anchors(backbone, task):
    return _state["anchors"] if "anchors" in _state else _orig_la(backbone, task)
ro.label_anchors = label_anchors
_orig_fit = ad.fit_adapted
def fit(ctx, method, model):
    if os.environ.get("PROBE") == "1" and ctx.task.kind == "choices" and ctx.backbone.kind == "encoder":
        texts = [ctx.template.render(ex, ctx.task.verbalizers or None) for ex in ctx.train]
        emb = F.normalize(ctx.backbone.embed(texts).float(), dim=-1)
        gold = torch.tensor([ex.label for ex in ctx.train])
        desc = _orig_la(ctx.backbone, ctx.task).float()
        a = torch.nn.Parameter(desc.clone())
        opt = torch.optim.Adam([a], lr=float(os.environ.get("PROBE_LR", 0.01)))
        pull = float(os.environ.get("PROBE_PULL", 0))
        for _ in range(int(os.environ.get("PROBE_STEPS", 200))):
            loss = F.cross_entropy(ro.ANCHOR_SCALE * emb @ F.normalize(a, dim=-1).T, gold) + pull * (a - desc).pow(2).sum()
            opt.zero_grad(); loss.backward(); opt.step()
        _state["anchors"] = F.normalize(a.detach(), dim=-1)
        acc = (emb @ _state["anchors"].T).argmax(-1).eq(gold).float().mean().item()
        na = _state["anchors"]
        print(f"probe anchors: train loss {loss.item():.3f} train acc {acc:.3f} cos {[[round(x, 3) for x in r] for r in (na @ na.T).tolist()]} "
              f"moved {[round(x, 3) for x in (na * desc).sum(-1).tolist()]}", file=sys.stderr, flush=True)
    try:
        return _orig_fit(ctx, method, model)
    finally:
        _state.pop("anchors", None)
soft.fit_adapted = fit; bl.fit_adapted = fit; ad.fit_adapted = fit
runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
