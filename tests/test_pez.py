"""pez on tiny models: the forward sees exactly vocabulary rows, the continuous copy learns, the saved token ids
decode to the recorded text, the predictor is the ids prepended, and eval --prompt reproduces the run."""

import json

import pytest
import torch
from peft import get_peft_model

from promptlab.backbones import load_backbone
from promptlab.methods import get_method
from promptlab.methods.pez import VocabProjection, project_hook, prompt_model
from promptlab.methods.readout import Readout
from promptlab.tasks import get_task


def test_forward_sees_vocabulary_rows_and_the_gradient_moves_the_continuous_copy(tiny_models):
    bb = load_backbone(str(tiny_models["encoder"]))
    task = get_task("sentiment")
    model = get_peft_model(bb.model, get_method("pez").peft_config(bb, 4))
    emb = model.prompt_encoder["default"].embedding
    proj = VocabProjection(bb)
    emb.register_forward_hook(project_hook(proj))
    seen = {}
    bb.model.register_forward_pre_hook(  # what the frozen model receives from PEFT: [prompt rows, input embeddings]
        lambda m, a, kw: seen.update(embeds=kw["inputs_embeds"].detach().clone()) if "inputs_embeds" in kw else None,
        with_kwargs=True)
    before = emb.weight.detach().clone()
    ex = task.splits()["train"][:4]
    loss = Readout(bb, task).loss(model, [e.fields["text"] for e in ex], ex)
    loss.backward()

    words = bb.model.get_input_embeddings().weight
    ids = proj.nearest_ids(before)
    special = set(bb.tokenizer.all_special_ids)
    assert not special & set(ids.tolist())
    assert torch.equal(seen["embeds"][0, :4], words[ids])  # bit-exact vocabulary rows, not the continuous ones
    assert not torch.equal(before, words[ids])  # (the continuous rows are elsewhere)
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.model.parameters())
    torch.optim.AdamW([emb.weight], lr=0.1).step()
    assert not torch.equal(emb.weight.detach(), before)


def test_nearest_is_by_cosine():
    class Tok:
        all_special_ids = (0,)

        def __len__(self):
            return 4

    class BB:
        tokenizer = Tok()
        model = torch.nn.Module()

    BB.model.get_input_embeddings = lambda: torch.nn.Embedding.from_pretrained(
        torch.tensor([[9.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]]))
    proj = VocabProjection(BB())
    # [5, 0.1] is nearest row 0 (special, excluded) and in L2 to row 1; by cosine it is row 1 too.
    # [3, 3] is nearest row 1 in L2 but points exactly along row 3.
    assert proj.nearest_ids(torch.tensor([[5.0, 0.1], [3.0, 3.0]])).tolist() == [1, 3]


def test_prompt_model_is_the_same_as_prepending_the_token_ids(tiny_models):
    bb = load_backbone(str(tiny_models["causal"]))
    ids = [70, 80, 90]
    model = prompt_model(bb, get_method("pez"), ids)
    x = torch.tensor([[100, 101, 102, 103]])
    with torch.no_grad():
        ours = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        direct = bb.model(input_ids=torch.cat([torch.tensor([ids]), x], dim=1)).logits
    assert torch.allclose(ours, direct, atol=1e-5)


@pytest.mark.parametrize("kind", ["encoder", "seq2seq", "causal"])
def test_pez_run_records_both_prompts_and_eval_reproduces_it(tiny_models, run_cli, tmp_path, kind):
    model = str(tiny_models[kind])
    (tmp_path / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    common = ["--task", "sentiment", "--model", model, "--limit", "12"]
    code, _, err = run_cli("train", *common, "--method", "pez", "--train-size", "16", "--epochs", "2",
                           "--virtual-tokens", "4", "--config", tmp_path / "fast.yaml", "--out", tmp_path / "pez")
    assert code == 0, err
    metrics = json.loads((tmp_path / "pez" / "metrics.json").read_text())
    saved = json.loads((tmp_path / "pez" / "artifact" / "pez.json").read_text())
    bb = load_backbone(model)
    assert len(saved["ids"]) == 4 and bb.tokenizer.decode(saved["ids"]) == saved["text"]
    assert saved["retokenizes"] == (bb.tokenizer(saved["text"], add_special_tokens=False)["input_ids"] == saved["ids"])
    assert metrics["method_info"]["hard_prompt"] == saved["text"] and metrics["method_info"]["ids"] == saved["ids"]
    assert set(metrics["variants"]["continuous"]) == set(metrics["metrics"])
    assert not (tmp_path / "pez" / "artifact" / "adapter_model.safetensors").exists()  # the artifact is the tokens

    if kind == "causal":  # the report shows the hard prompt beside the soft prompt it came from
        code, _, err = run_cli("report", tmp_path / "pez", "--out", tmp_path / "report")
        assert code == 0, err
        md = (tmp_path / "report" / "report.md").read_text()
        acc, cont = (100 * x["accuracy"] for x in (metrics["metrics"], metrics["variants"]["continuous"]))
        assert f"learnt the hard prompt {json.dumps(saved['text'])}: accuracy {acc:.1f}" in md
        assert f"continuous soft prompt it was projected from: {cont:.1f}" in md

    code, _, err = run_cli("eval", *common, "--prompt", tmp_path / "pez", "--out", tmp_path / "again")
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["metrics"] == metrics["metrics"]
    first = [json.loads(line) for line in (tmp_path / "pez" / "predictions.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (tmp_path / "again" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in first] == [r["prediction"] for r in second]
    assert [r["score"] for r in first] == pytest.approx([r["score"] for r in second], abs=1e-5)


def test_a_damaged_pez_artifact_fails_in_one_line(tiny_models, run_cli, tmp_path):
    model = str(tiny_models["encoder"])
    (tmp_path / "fast.yaml").write_text("train:\n  dev_size: 8\n")
    code, _, err = run_cli("train", "--task", "sentiment", "--model", model, "--method", "pez", "--train-size", "8",
                           "--epochs", "1", "--virtual-tokens", "2", "--limit", "4", "--config", tmp_path / "fast.yaml",
                           "--out", tmp_path / "pez")
    assert code == 0, err
    f = tmp_path / "pez" / "artifact" / "pez.json"
    for bad in ("not json", json.dumps({"ids": ["a"]}), json.dumps({"ids": [10**9]})):
        f.write_text(bad)
        code, _, err = run_cli("eval", "--model", model, "--prompt", tmp_path / "pez", "--limit", "4")
        assert code == 2 and err.count("\n") == 1 and "pez.json" in err, err
