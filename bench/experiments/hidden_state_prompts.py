"""Experiment: VPT-deep / P-tuning-v2-style hidden-state prompts for encoders. k trainable hidden states replace
the prompt positions' input at every layer; their last-layer outputs pool with the words (like prompt tuning).
DEEP_INIT=text|random, DEEP_POOL=1|0 (pool the prompt outputs or not)."""
import os, sys, runpy
from pathlib import Path
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
import promptlab.methods as M
from promptlab.methods.base import Method
from promptlab.methods.adapted import fit_adapted
from promptlab.methods.soft import init_token_ids

class DeepModel(nn.Module):
    def __init__(self, base, prompts, pool):
        super().__init__()
        self.base = base
        self.prompts = nn.Parameter(prompts)
        self.k = prompts.shape[1]
        self.pool = pool
        self._on = False
        for l, layer in enumerate(base.encoder.layer):
            if l:
                layer.register_forward_pre_hook(self._hook(l), with_kwargs=True)
    def _hook(self, l):
        def hook(mod, args, kwargs):
            if not self._on:
                return None
            if args:
                h = args[0]; rest = args[1:]
            else:
                h = kwargs["hidden_states"]
            h = torch.cat([self.prompts[l].to(h.dtype).expand(h.shape[0], -1, -1), h[:, self.k:]], 1)
            if args:
                return (h,) + tuple(rest), kwargs
            kwargs["hidden_states"] = h
            return args, kwargs
        return hook
    def forward(self, input_ids, attention_mask, **kw):
        word = self.base.embeddings.word_embeddings(input_ids)
        B = word.shape[0]
        # prompts skip the embedding layer's position/LayerNorm: replace after embeddings via a hook-free trick:
        emb = self.base.embeddings(input_ids=input_ids)
        h0 = torch.cat([self.prompts[0].to(emb.dtype).expand(B, -1, -1), emb], 1)
        mask = torch.cat([attention_mask.new_ones(B, self.k), attention_mask], 1)
        ext = (1.0 - mask[:, None, None, :].to(emb.dtype)) * torch.finfo(emb.dtype).min
        self._on = True
        try:
            h = h0
            for l, layer in enumerate(self.base.encoder.layer):
                h = layer(h, ext)
                if isinstance(h, tuple): h = h[0]
        finally:
            self._on = False
        if not self.pool:
            return BaseModelOutput(last_hidden_state=h[:, self.k:])
        return BaseModelOutput(last_hidden_state=h)

@torch.no_grad()
def init_states(backbone, ids):
    m = backbone.model; was = m.training; m.eval()
    x = torch.tensor([ids])
    out = m(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True)
    m.train(was)
    return torch.stack([hs[0] for hs in out.hidden_states[:-1]]).float()  # [L, k, H]: each layer's input

class DeepPrompt(Method):
    name = "deep-prompt"; family = "soft"; summary = "hidden-state prompts at every layer"; trains = True
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
        return fit_adapted(ctx, self.name, model)

M._load_builtin(); M.register(DeepPrompt)
runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
