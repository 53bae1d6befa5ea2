"""Experiment: label descriptions extended with each class's most distinctive words in the training data (weighted
log-odds with an informative Dirichlet prior, Monroe et al. 2008) — an automatic verbalizer search, so the frozen
anchors carry what the data says each label sounds like instead of its name alone. KEYWORDS=k (0 disables)."""
import os, re, sys, math, runpy
from collections import Counter
from pathlib import Path
import torch, torch.nn.functional as F
import promptlab.methods.readout as ro
import promptlab.methods.adapted as ad, promptlab.methods.soft as soft, promptlab.methods.baselines as bl
K = int(os.environ.get("KEYWORDS", 5))
_state = {}
_orig_la = ro.label_anchors
def label_anchors(backbone, task):
    return _state["anchors"] if "anchors" in _state else _orig_la(backbone, task)
ro.label_anchors = label_anchors
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
_orig_fit = ad.fit_adapted
def fit(ctx, method, model):
    if K and ctx.task.kind == "choices" and ctx.backbone.kind == "encoder":
        kw = distinctive(ctx.train, len(ctx.task.labels), K)
        desc = [f"{d} Words like {', '.join(ws)}." for d, ws in zip(ctx.task.descriptions, kw)]
        print("keyword descriptions:", desc, file=sys.stderr, flush=True)
        _state["anchors"] = F.normalize(ctx.backbone.embed(desc), dim=-1)
        texts = [ctx.template.render(ex, ctx.task.verbalizers or None) for ex in ctx.train]
        emb = F.normalize(ctx.backbone.embed(texts).float(), dim=-1); gold = torch.tensor([ex.label for ex in ctx.train])
        for name, a in (("generic", _orig_la(ctx.backbone, ctx.task)), ("keywords", _state["anchors"])):
            print(f"frozen train acc, {name} anchors: {(emb @ a.float().T).argmax(-1).eq(gold).float().mean():.3f}; "
                  f"cos {[[round(x, 3) for x in r] for r in (a @ a.T).tolist()]}", file=sys.stderr, flush=True)
    try:
        return _orig_fit(ctx, method, model)
    finally:
        _state.pop("anchors", None)
soft.fit_adapted = fit; bl.fit_adapted = fit; ad.fit_adapted = fit
runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
