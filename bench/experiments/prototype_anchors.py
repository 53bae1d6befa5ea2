"""Experiment: label anchors = class prototypes of the training inputs under the frozen model (desc + examples,
averaged on the unit sphere), instead of the label descriptions alone. PROTO=1 enables."""
import os, sys
import torch, torch.nn.functional as F
from anchor_patch import description_anchors, frozen_train, run_with_anchors


def prototypes(ctx):
    if os.environ.get("PROTO") != "1":
        return None
    emb, labels = frozen_train(ctx)
    desc = description_anchors(ctx.backbone, ctx.task)
    a = torch.stack([F.normalize(torch.cat([desc[c:c+1], emb[labels == c]]).mean(0), dim=-1) for c in range(len(desc))])
    print("proto cos", (a @ a.T).tolist(), file=sys.stderr)
    return a


run_with_anchors(prototypes)
