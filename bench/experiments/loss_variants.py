"""Experiment: the training loss of encoder choice tasks. SMOOTH=eps (label smoothing); RDROP=alpha (R-Drop, Liang et
al. 2021: each batch goes through the model twice with dropout on, cross-entropy on both plus alpha x the symmetric KL
between the two predictive distributions; twice the forward cost)."""
import os, runpy
from pathlib import Path
import torch, torch.nn.functional as F
import promptlab.methods.readout as ro
SMOOTH, RDROP = float(os.environ.get("SMOOTH", 0)), float(os.environ.get("RDROP", 0))
_orig_loss = ro.Readout.loss
def loss(self, model, inputs, examples):
    if not (self.task.kind == "choices" and self.backbone.kind == "encoder"):
        return _orig_loss(self, model, inputs, examples)
    gold = torch.tensor([ex.label for ex in examples])
    a = self.choice_logits(model, inputs)
    ce = F.cross_entropy(a, gold, label_smoothing=SMOOTH)
    if not RDROP:
        return ce
    b = self.choice_logits(model, inputs)
    la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
    kl = 0.5 * (F.kl_div(la, lb, log_target=True, reduction="batchmean") + F.kl_div(lb, la, log_target=True, reduction="batchmean"))
    return 0.5 * (ce + F.cross_entropy(b, gold, label_smoothing=SMOOTH)) + RDROP * kl
ro.Readout.loss = loss
runpy.run_path(str(Path(__file__).resolve().parents[1] / "quality_exp.py"), run_name="__main__")
