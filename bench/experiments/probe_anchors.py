"""Experiment: probe-fitted label anchors (LP-FT, Kumar et al. 2022). Before a method trains, the anchors — the label
descriptions' frozen embeddings — are fitted as a cosine head (the readout's own temperature) to the training inputs'
frozen embeddings, then frozen; the method then trains against them. PROBE=1 enables; PROBE_STEPS (200), PROBE_LR
(0.01) and PROBE_PULL (0: weight of a squared pull back to the descriptions) tune the fit."""
import os, sys
import torch, torch.nn.functional as F
import promptlab.methods.readout as ro
from anchor_patch import description_anchors, frozen_train, run_with_anchors


def probe(ctx):
    if os.environ.get("PROBE") != "1":
        return None
    emb, gold = frozen_train(ctx)
    desc = description_anchors(ctx.backbone, ctx.task).float()
    a = torch.nn.Parameter(desc.clone())
    opt = torch.optim.Adam([a], lr=float(os.environ.get("PROBE_LR", 0.01)))
    pull = float(os.environ.get("PROBE_PULL", 0))
    for _ in range(int(os.environ.get("PROBE_STEPS", 200))):
        loss = F.cross_entropy(ro.ANCHOR_SCALE * emb @ F.normalize(a, dim=-1).T, gold) + pull * (a - desc).pow(2).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    na = F.normalize(a.detach(), dim=-1)
    acc = (emb @ na.T).argmax(-1).eq(gold).float().mean().item()
    print(f"probe anchors: train loss {loss.item():.3f} train acc {acc:.3f} cos {[[round(x, 3) for x in r] for r in (na @ na.T).tolist()]} "
          f"moved {[round(x, 3) for x in (na * desc).sum(-1).tolist()]}", file=sys.stderr, flush=True)
    return na


run_with_anchors(probe)
