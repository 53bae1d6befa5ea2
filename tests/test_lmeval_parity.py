"""promptlab's default choice scores equal lm-evaluation-harness's log-likelihoods.

`lmeval_parity.json` holds lm-eval 0.4.13's `HFLM.loglikelihood` for the requests below on three tiny models that
tests/lmeval_tiny.py rebuilds bit for bit (seed 0): recorded once by `PYTHONPATH=src:tests python
tests/test_lmeval_parity.py` (needs lm-eval); the fast tests need no lm-eval. The live test recomputes them when
lm-eval is importable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lmeval_tiny import build

from promptlab.backbones import load_backbone
from promptlab.scoring import encode_pairs

FIXTURE = Path(__file__).with_name("lmeval_parity.json")
KINDS = ("gpt2", "llama", "t5")
# Contexts as a task renders them: trailing spaces and newlines (moved to the continuation), few-shot text, words
# the BPE merges with the delimiter, an empty context (lm-eval's prefix token); multi-token and one-token choices.
CONTEXTS = [
    "Review: great movie\nSentiment:",
    "Review: terrible acting\nSentiment: ",
    "Review: good\nSentiment: positive\n\nReview: bad plot\nSentiment: negative\n\nReview: funny story\nSentiment:",
    "premise: the film was boring\nQuestion: Is it true that this was good? Yes or no?\nAnswer:",
    "Question: is the story very funny?\nAnswer:\n",
    "",
    "the movie",
]
CHOICES = [["positive", "negative"], ["yes", "no"], ["not sure", "very good", "bad"]]


def requests() -> list[tuple[str, list[str]]]:
    return [(c, ch) for c in CONTEXTS for ch in CHOICES][:20]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lmeval-models")
    return {k: build(k, root / k) for k in KINDS}


def promptlab_scores(path: Path) -> list[list[float]]:
    bb = load_backbone(str(path), dtype="float32", device="cpu")
    return [bb.score_choices([c], ch)[0].tolist() for c, ch in requests()]


@pytest.mark.parametrize("kind", KINDS)
def test_scores_match_recorded_lmeval(models, kind):
    recorded = json.loads(FIXTURE.read_text())
    assert recorded["requests"] == [list(r) for r in requests()], "the fixture was recorded for other requests"
    got = promptlab_scores(models[kind])
    want = recorded["loglikelihoods"][kind]
    for (ctx, _), g, w in zip(requests(), got, want):
        assert g == pytest.approx(w, abs=1e-3), repr(ctx)


def test_continuation_is_split_as_lmeval_splits_it(models):
    """The context's trailing whitespace goes to the continuation; a causal pair is the whole text cut at the
    context's length; Llama's BOS is in the context; an empty context is the BOS token."""
    bb = load_backbone(str(models["llama"]), dtype="float32", device="cpu")
    tok = bb.tokenizer
    ((ctx, cont),) = encode_pairs(tok, "causal", ["Sentiment: "], ["positive"])
    assert ctx == tok("Sentiment:")["input_ids"] and ctx[0] == tok.bos_token_id
    assert ctx + cont == tok("Sentiment:  positive")["input_ids"]  # its trailing space, then the delimiter
    assert tok.eos_token_id not in cont
    ((ctx, cont),) = encode_pairs(tok, "causal", [""], ["positive"])
    assert ctx == [tok.bos_token_id] and cont == tok(" positive", add_special_tokens=False)["input_ids"]
    t5 = load_backbone(str(models["t5"]), dtype="float32", device="cpu").tokenizer
    ((ctx, cont),) = encode_pairs(t5, "seq2seq", ["Sentiment:"], ["positive"])
    assert ctx[-1] == t5.eos_token_id and cont == t5(" positive", add_special_tokens=False)["input_ids"]


def test_eos_scoring_is_the_earlier_convention(models):
    """`--scoring eos` scores " choice" + EOS: lower than the continuation alone by log p(EOS | ...)."""
    bb = load_backbone(str(models["gpt2"]), dtype="float32", device="cpu")
    prompts = ["Review: great movie\nSentiment:", "the movie"]
    lm = bb.score_choices(prompts, ["positive", "negative"])
    eos = bb.score_choices(prompts, ["positive", "negative"], scoring="eos")
    assert (eos < lm).all()
    batch = bb.lm_batch(prompts[:1], ["positive"], scoring="eos")
    assert batch["labels"][0][batch["labels"][0] != -100].tolist()[-1] == bb.tokenizer.eos_token_id


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
@pytest.mark.parametrize("choices", [("yes", "no"), ("not sure", "very good", "bad")])
@pytest.mark.parametrize("tail", ["", " "])
def test_one_forward_per_prompt_equals_a_row_per_choice(models, kind, choices, tail):
    """One-token choices are read from one forward of the context (lm-eval's one-token cache does the same); T5's
    one-token choices from one encoder + first decoder step per prompt, the others (multi-token, or two tokens
    after a trailing space) from encoder states shared across choices: all equal to one plain row per choice.
    The batch size is small so that prompts span several batches."""
    bb = load_backbone(str(models[kind]), dtype="float32", device="cpu")
    prompts = [c.rstrip() + tail for c in CONTEXTS if c.strip()]
    if kind == "t5":  # the path under test is the one taken
        one = all(len(t) == 1 for _, t in encode_pairs(bb.tokenizer, "seq2seq", prompts[:1] * len(choices), choices))
        assert one == (len(choices) == 2 and not tail)
    fast = bb.score_choices(prompts, list(choices), batch_size=4)
    rows = torch.tensor([[float(bb.sequence_logprob(bb.lm_batch([p], [ch]))) for ch in choices] for p in prompts])
    assert torch.allclose(fast, rows, atol=1e-5)


def test_scoring_is_recorded_in_the_run_and_reloaded(tiny_models, run_cli, tmp_path):
    """--scoring shapes training and scoring, lands in config.yaml and promptlab.json, and `eval --prompt` scores
    under the artifact's; the default run reports lm-eval's acc_norm beside accuracy."""
    common = ["--task", "sentiment", "--model", tiny_models["causal"], "--limit", "8", "--seed", "1"]
    code, _, err = run_cli("train", *common, "--method", "prompt-tuning", "--train-size", "8", "--epochs", "1",
                           "--virtual-tokens", "2", "--scoring", "eos", "--out", tmp_path / "pt")
    assert code == 0, err
    meta = json.loads((tmp_path / "pt" / "artifact" / "promptlab.json").read_text())
    assert meta["extras"]["run"]["scoring"] == "eos"
    code, _, err = run_cli("eval", *common, "--prompt", tmp_path / "pt", "--out", tmp_path / "again")
    assert code == 0, err
    first, again = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("pt", "again"))
    assert again["config"]["scoring"] == "eos"
    assert again["metrics"] == pytest.approx(first["metrics"])
    code, _, err = run_cli("eval", *common, "--method", "zero-shot", "--out", tmp_path / "zs")
    assert code == 0, err
    zs = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert zs["config"]["scoring"] == "lmeval" and 0.0 <= zs["metrics"]["acc_norm"] <= 1.0


def lmeval_scores(path: Path, kind: str) -> list[list[float]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(path), backend="seq2seq" if kind == "t5" else "causal", batch_size=8, device="cpu",
              dtype="float32")
    reqs = [(c, " " + x) for c, ch in requests() for x in ch]
    out = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)], disable_tqdm=True)
    flat = iter(ll for ll, _ in out)
    return [[next(flat) for _ in ch] for _, ch in requests()]


@pytest.mark.parametrize("kind", KINDS)
def test_scores_match_live_lmeval(models, kind):
    pytest.importorskip("lm_eval")
    got = promptlab_scores(models[kind])
    want = lmeval_scores(models[kind], kind)
    for (ctx, _), g, w in zip(requests(), got, want):
        assert g == pytest.approx(w, abs=1e-3), repr(ctx)


if __name__ == "__main__":  # record the fixture (needs lm-eval)
    import tempfile

    root = Path(tempfile.mkdtemp())
    data = {"lm_eval": __import__("lm_eval").__version__, "requests": [list(r) for r in requests()],
            "loglikelihoods": {k: lmeval_scores(build(k, root / k), k) for k in KINDS}}
    FIXTURE.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
