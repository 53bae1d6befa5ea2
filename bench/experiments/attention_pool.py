"""Experiment: attention pooling for trained encoder methods. A query vector q (hidden-size parameters, zero at start so
the pooling starts as the model's own mean) weights the output tokens by softmax(q . h) instead of averaging them
equally: the prompt could then let the words that carry the label count more, as fine-tuning can. POOL=1 enables; the
frozen label anchors keep the mean pooling."""
import os, runpy
from pathlib import Path
import torch, torch.nn.functional as F
import promptlab.backbones as bbm
import promptlab.methods.adapted as ad, promptlab.methods.soft as soft, promptlab.methods.baselines as bl

_orig_encode = bbm.Backbone.encode


def encode(self, texts, model=None):
    q = getattr(model, "promptlab_pool", None) if model is not None else None
    if q is None:
        return _orig_encode(self, texts, model)
    enc = self._tok(texts, max_length=self.input_budget(model))
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    mask = enc["attention_mask"]
    if hidden.shape[1] > mask.shape[1]:
        mask = torch.cat([mask.new_ones(mask.shape[0], hidden.shape[1] - mask.shape[1]), mask], dim=1)
    w = torch.softmax((hidden.float() @ q).masked_fill(mask == 0, float("-inf")), dim=1)  # [B, T]
    pooled = (w.unsqueeze(-1) * hidden.float()).sum(1)
    return F.normalize(pooled, dim=-1) if self.normalize else pooled


bbm.Backbone.encode = encode
_orig_fit = ad.fit_adapted


def fit(ctx, method, model):
    if os.environ.get("POOL") == "1" and ctx.backbone.kind == "encoder":
        model.register_parameter("promptlab_pool", torch.nn.Parameter(torch.zeros(ctx.backbone.hidden_size)))
    return _orig_fit(ctx, method, model)


soft.fit_adapted = fit; bl.fit_adapted = fit; ad.fit_adapted = fit
runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
