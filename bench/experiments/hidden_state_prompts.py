"""Experiment: VPT-deep / P-tuning-v2-style hidden-state prompts for encoders. k trainable hidden states replace
the prompt positions' input at every layer; their last-layer outputs pool with the words (like prompt tuning).
DEEP_INIT=text|random, DEEP_POOL=1|0 (pool the prompt outputs or not)."""
import os, sys, runpy
from pathlib import Path
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
import promptlab.methods as M
from promptlab.methods.adapted import AdaptedMethod, fit_adapted
from promptlab.methods.soft import init_token_ids

class DeepModel(nn.Module):
    """The frozen BERT-family encoder run layer by layer: before layer l the first k positions are set to P_l
    (P_0 stands in for the embedding layer's output, so the words keep positions 0..n-1)."""

    def __init__(self, base, prompts, pool):
        super().__init__()
        self.base = base
        self.prompts = nn.Parameter(prompts)  # [L, k, H]
        self.k = prompts.shape[1]
        self.pool = pool

    def forward(self, input_ids, attention_mask, **kw):
        emb = self.base.embeddings(input_ids=input_ids)
        B = emb.shape[0]
        mask = torch.cat([attention_mask.new_ones(B, self.k), attention_mask], 1)
        ext = (1.0 - mask[:, None, None, :].to(emb.dtype)) * torch.finfo(emb.dtype).min
        h = emb
        for l, layer in enumerate(self.base.encoder.layer):
            h = torch.cat([self.prompts[l].to(h.dtype).expand(B, -1, -1), h if l == 0 else h[:, self.k:]], 1)
            h = layer(h, ext)
            h = h[0] if isinstance(h, tuple) else h
        return BaseModelOutput(last_hidden_state=h if self.pool else h[:, self.k:])


@torch.no_grad()
def init_states(backbone, ids):
    m = backbone.model; was = m.training; m.eval()
    x = torch.tensor([ids])
    out = m(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True)
    m.train(was)
    return torch.stack([hs[0] for hs in out.hidden_states[:-1]]).float()  # [L, k, H]: each layer's input

class DeepPrompt(AdaptedMethod):
    name = "deep-prompt"; family = "soft"; summary = "hidden-state prompts at every layer"
    optimizer, default_lr = "adamw", 1e-3
    kinds = ("encoder",)
    def template_for(self, task, config, kind=""):
        return task.plain_template()
    def fit(self, ctx):
        n = ctx.config.train.virtual_tokens
        how = os.environ.get("DEEP_INIT", "text")
        ids = init_token_ids(ctx.backbone, ctx.task, ctx.config, n, how if how != "random" else "vocab")
        P = init_states(ctx.backbone, ids)
        if how == "random":
            P = torch.randn_like(P) * P.std()
        model = DeepModel(ctx.backbone.model, P, os.environ.get("DEEP_POOL", "1") == "1")
        return fit_adapted(ctx, self, model)

M.register(DeepPrompt)
runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
