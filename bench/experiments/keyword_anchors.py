"""Experiment: label descriptions extended with each class's most distinctive words in the training data (weighted
log-odds with an informative Dirichlet prior, Monroe et al. 2008) — an automatic verbalizer search, so the frozen
anchors carry what the data says each label sounds like instead of its name alone. KEYWORDS=k (0 disables)."""
import os, re, sys, math
from collections import Counter
import torch.nn.functional as F
from anchor_patch import description_anchors, frozen_train, run_with_anchors
K = int(os.environ.get("KEYWORDS", 5))
WORD = re.compile(r"[a-z][a-z']{2,}")
def words(text):
    return WORD.findall(re.sub(r"@\w+|https?://\S+", " ", text.lower()))
def distinctive(train, n_classes, k, prior=500.0, min_count=3):
    per = [Counter() for _ in range(n_classes)]
    for ex in train:
        per[ex.label].update(set(words(ex.fields["text"])))
    total = sum(per, Counter()); n_all = sum(total.values())
    out = []
    for c in range(n_classes):
        rest = total - per[c]; nc, nr = sum(per[c].values()), sum(rest.values())
        z = {}
        for w, t in total.items():
            if t < min_count:
                continue
            a = prior * t / n_all; a0 = prior
            yc, yr = per[c][w], rest[w]
            d = math.log((yc + a) / (nc + a0 - yc - a)) - math.log((yr + a) / (nr + a0 - yr - a))
            z[w] = d / math.sqrt(1 / (yc + a) + 1 / (yr + a))
        out.append([w for w, _ in sorted(z.items(), key=lambda kv: -kv[1])[:k]])
    return out
def keyword_anchors(ctx):
    if not K:
        return None
    kw = distinctive(ctx.train, len(ctx.task.labels), K)
    desc = [f"{d} Words like {', '.join(ws)}." for d, ws in zip(ctx.task.descriptions, kw)]
    print("keyword descriptions:", desc, file=sys.stderr, flush=True)
    anchors = F.normalize(ctx.backbone.embed(desc), dim=-1)
    emb, gold = frozen_train(ctx)
    for name, a in (("generic", description_anchors(ctx.backbone, ctx.task)), ("keywords", anchors)):
        print(f"frozen train acc, {name} anchors: {(emb @ a.float().T).argmax(-1).eq(gold).float().mean():.3f}; "
              f"cos {[[round(x, 3) for x in r] for r in (a @ a.T).tolist()]}", file=sys.stderr, flush=True)
    return anchors


run_with_anchors(keyword_anchors)
