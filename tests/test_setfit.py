"""`setfit`: the SetFit library as a baseline — fit, save, reload, and the same predictions after reloading.

Kept small (12 examples, 3 optimizer steps on the tiny encoder) so it runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("setfit")

from promptlab.backbones import load_backbone
from promptlab.cli import main
from promptlab.config import RunConfig
from promptlab.methods import FitContext, get_method
from promptlab.methods.setfit_method import PAIRS_PER_EXAMPLE, pair_steps
from promptlab.pipeline import load_data
from promptlab.tasks import get_task


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def setfit_run(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("setfit")
    (root / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    out = root / "run"
    code = main(["train", "--task", "sentiment", "--model", str(tiny_models["encoder"]), "--method", "setfit",
                 "--train-size", "12", "--max-steps", "3", "--limit", "16", "--config", str(root / "fast.yaml"),
                 "--out", str(out)])
    assert code == 0
    return out


def test_setfit_counts_the_whole_encoder_and_head_as_trainable(setfit_run, tiny_models):
    m = json.loads((setfit_run / "metrics.json").read_text())
    assert m["family"] == "baseline" and m["method"] == "setfit"
    head = 3 * 32 + 3  # multinomial logistic regression over 3 labels on 32-d embeddings
    assert m["trainable_params"] == m["total_params"] + head
    assert m["trainable_percent"] > 100
    assert m["train_examples"] == 12 and m["n_examples"] == 16
    assert m["history"][-1]["dev_score"] is not None and m["history"][0]["train_loss"] > 0
    assert max(h["step"] for h in m["history"]) == 3  # --max-steps caps SetFit's pair epoch


def test_setfit_artifact_is_setfits_own_format_and_reloads_to_the_same_predictions(setfit_run, tiny_models, run_cli,
                                                                                   tmp_path):
    art = setfit_run / "artifact"
    assert (art / "setfit" / "config_setfit.json").is_file() and (art / "head.safetensors").is_file()
    code, _, err = run_cli("eval", "--prompt", setfit_run, "--model", tiny_models["encoder"], "--limit", "16",
                           "--out", tmp_path / "again")
    assert code == 0, err
    a, b = records(setfit_run), records(tmp_path / "again")
    assert [r["input"] for r in a] == [r["input"] for r in b]
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)

    # SetFit itself loads the directory and agrees with promptlab's reading of its head
    from setfit import SetFitModel

    labels = get_task("sentiment").labels
    model = SetFitModel.from_pretrained(str(art / "setfit"))
    theirs = [labels[int(i)] for i in model.predict([r["input"] for r in a])]
    assert theirs == [r["prediction"] for r in a]


def test_setfit_leaves_the_shared_backbone_untouched(tiny_models):
    backbone = load_backbone(str(tiny_models["encoder"]))
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    task = get_task("sentiment")
    cfg = RunConfig(model=str(tiny_models["encoder"]), method="setfit")
    cfg.train.train_size, cfg.train.max_steps, cfg.train.dev_size = 9, 2, 8
    data = load_data(task, cfg)
    method = get_method("setfit")
    pred = method.fit(FitContext(backbone, task, data.train, [], cfg, method.template_for(task, cfg, "encoder")))
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())
    assert not any(p.requires_grad for p in backbone.model.parameters())
    texts = [ex.fields["text"] for ex in data.eval[:6]]
    # SetFit trained its own copy: its embeddings moved away from the frozen backbone's (same pooling)
    assert not torch.allclose(pred.embed(texts), backbone.embed(texts), atol=1e-4)


def test_pair_count_matches_setfits_own_sampler():
    from setfit.sampler import ContrastiveDataset

    for labels in ([0] * 8 + [1] * 8, [0] * 5 + [1] * 3 + [2] * 7, [0, 1]):
        ds = ContrastiveDataset([f"s{i}" for i in range(len(labels))], labels, multilabel=False,
                                num_iterations=PAIRS_PER_EXAMPLE)
        assert pair_steps(len(labels), 16) == -(-len(ds) // 16)
    assert pair_steps(16, 16) == 40  # 8 per class on SST-2: 640 pairs, under the CPU cap


def test_setfit_refuses_free_text_tasks_and_generative_models(tiny_models, run_cli, tmp_path):
    code, _, err = run_cli("train", "--task", "sentiment", "--model", tiny_models["seq2seq"], "--method", "setfit",
                           "--out", tmp_path / "x")
    assert code == 2 and "setfit" in err and "encoder" in err
    assert not (tmp_path / "x").exists()


def test_setfit_starts_from_the_backbone_with_its_pooling(tiny_models, tmp_path):
    from promptlab.methods.setfit_method import sentence_transformer

    backbone = load_backbone(str(tiny_models["encoder"]))
    body = sentence_transformer(backbone, tmp_path / "body")
    texts = ["the food was great", "terrible film awful acting boring plot", "the package arrived on tuesday"]
    ours = backbone.embed(texts)
    theirs = body.encode(texts, convert_to_tensor=True).float()
    assert torch.allclose(ours, theirs, atol=1e-5)
