"""Experiment: prefix tuning with input-dependent gates (after Zhang et al. 2023, "Towards Adaptive Prefix Tuning"):
at every layer a token gate alpha = 2 sigmoid(U tanh(D h_cls)) (one weight per prefix token, from the layer's input at
[CLS]; rank GATE_RANK, zero-initialised so it starts at 1) and a layer gate lambda (starts at 1) scale the prefix's
values. The encoder is run layer by layer with our own attention over [prefix; words] (BERT-family only), so the
gates can sit between the prefix and the softmax's output; GATE=0 gives plain prefix tuning through the same code
(checked equal to PEFT's prefix at start)."""
import os, runpy
from pathlib import Path
import torch, torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
import promptlab.methods as M
from promptlab.methods.adapted import AdaptedMethod, fit_adapted

GATE, RANK = os.environ.get("GATE", "1") == "1", int(os.environ.get("GATE_RANK", 8))


class GatedPrefixModel(nn.Module):
    def __init__(self, base, n):
        super().__init__()
        self.base, self.n = base, n
        cfg = base.config
        L, H = cfg.num_hidden_layers, cfg.hidden_size
        self.prefix = nn.Parameter(torch.randn(L, 2, n, H))  # PEFT's prefix init: nn.Embedding's N(0, 1)
        if GATE:
            self.down = nn.Parameter(torch.randn(L, H, RANK) * H ** -0.5)
            self.up = nn.Parameter(torch.zeros(L, RANK, n))
            self.layer_gate = nn.Parameter(torch.ones(L))

    def forward(self, input_ids, attention_mask, **kw):
        n = self.n
        h = self.base.embeddings(input_ids=input_ids, cache_length=n)  # as under PEFT: the words' positions follow the prefix
        B, T, H = h.shape
        mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], 1)
        ext = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for l, layer in enumerate(self.base.encoder.layer):
            sa = layer.attention.self
            nh, hd = sa.num_attention_heads, sa.attention_head_size
            split = lambda x: x.view(B, -1, nh, hd).transpose(1, 2)
            pk, pv = self.prefix[l, 0].expand(B, n, H), self.prefix[l, 1].expand(B, n, H)
            if GATE:
                g = 2 * torch.sigmoid(torch.tanh(h[:, 0] @ self.down[l]) @ self.up[l]) * self.layer_gate[l]  # [B, n]
                pv = pv * g[..., None]
            q = split(sa.query(h))
            k = torch.cat([split(pk), split(sa.key(h))], 2)
            v = torch.cat([split(pv), split(sa.value(h))], 2)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=ext, dropout_p=sa.dropout.p if self.training else 0.0)
            a = layer.attention.output(ctx.transpose(1, 2).reshape(B, T, H), h)
            h = layer.output(layer.intermediate(a), a)
        return BaseModelOutput(last_hidden_state=h)


class GatedPrefix(AdaptedMethod):
    name = "gated-prefix"; family = "soft"; summary = "prefix tuning with input-dependent gates"
    optimizer, default_lr = "adamw", 1e-3
    kinds = ("encoder",)

    def template_for(self, task, config, kind=""):
        return task.plain_template()

    def fit(self, ctx):
        torch.manual_seed(ctx.config.seed)
        return fit_adapted(ctx, self, GatedPrefixModel(ctx.backbone.model, ctx.config.train.virtual_tokens))


M.register(GatedPrefix)
if os.environ.get("CHECK") == "1":  # GATE=0 must equal PEFT's prefix with the same rows
    from peft import PrefixTuningConfig, get_peft_model
    from promptlab.backbones import load_backbone
    bb = load_backbone("minilm"); bb.model.eval()
    ours = GatedPrefixModel(bb.model, 4).eval()
    peft = get_peft_model(bb.model, PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=4)).eval()
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight[:] = ours.prefix.permute(2, 0, 1, 3).reshape(4, -1)
        x = bb.tokenizer(["a fine film", "an awful, awful film that nobody should see"], padding=True, return_tensors="pt")
        a = ours(x["input_ids"], x["attention_mask"]).last_hidden_state
        b = peft(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
    m = x["attention_mask"][..., None].bool()
    print("max |ours - peft| over real tokens:", (a - b).abs().masked_select(m).max().item())
else:
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
