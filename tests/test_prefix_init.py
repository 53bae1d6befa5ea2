"""Prefix tuning starts from real words' keys and values (Li & Liang), laid out the way PEFT reads a prefix."""

from __future__ import annotations

import json

import torch
from peft import get_peft_model

from promptlab.backbones import load_backbone
from promptlab.config import RunConfig
from promptlab.methods import get_method
from promptlab.methods.soft import word_keys_values

WORDS = [5, 9, 13, 17]
TEXT = [21, 25, 29, 33, 37]


def _with_prefix(bb, rows):
    model = get_peft_model(bb.model, get_method("prefix-tuning").peft_config(bb, len(WORDS), RunConfig()))
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight[:] = rows
    return model.eval()


def test_causal_prefix_of_words_equals_reading_the_words_first(tiny_models):
    bb = load_backbone(str(tiny_models["causal"]))
    bb.model.eval()
    rows = word_keys_values(bb, WORDS)
    assert rows.shape == (len(WORDS), bb.model.config.n_layer * 2 * bb.model.config.n_embd)
    with torch.no_grad():
        joint = bb.model(input_ids=torch.tensor([WORDS + TEXT])).logits[0, len(WORDS):]
        model = _with_prefix(bb, rows)
        prefixed = model(input_ids=torch.tensor([TEXT]), attention_mask=torch.ones(1, len(TEXT), dtype=torch.long)).logits[0]
    assert torch.allclose(prefixed, joint, atol=1e-4)


def test_encoder_prefix_puts_keys_and_values_in_peft_order(tiny_models):
    """Layer 0 sees only embeddings, so the text's first-layer states with the words' prefix equal those of a joint
    pass over words + text (bidirectional layers after it differ: the words would also see the text)."""
    bb = load_backbone(str(tiny_models["encoder"]))
    bb.model.eval()
    rows = word_keys_values(bb, WORDS)
    with torch.no_grad():
        x = torch.tensor([WORDS + TEXT])
        joint = bb.model(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states[1]
        model = _with_prefix(bb, rows)
        t = torch.tensor([TEXT])
        out = model(input_ids=t, attention_mask=torch.ones_like(t), output_hidden_states=True).hidden_states[1]
        swapped = _with_prefix(bb, rows.view(len(WORDS), -1, 2, rows.shape[1] // (2 * bb.model.config.num_hidden_layers)).flip(2).reshape(len(WORDS), -1))
        wrong = swapped(input_ids=t, attention_mask=torch.ones_like(t), output_hidden_states=True).hidden_states[1]
    assert torch.allclose(out[0], joint[0, len(WORDS):], atol=1e-4)
    assert not torch.allclose(wrong[0], joint[0, len(WORDS):], atol=1e-2)  # keys and values swapped: caught


def test_runs_record_how_the_prefix_started(tiny_models, run_cli, tmp_path):
    fast = ["--task", "sentiment", "--method", "prefix-tuning", "--train-size", "16", "--epochs", "1",
            "--virtual-tokens", "4", "--limit", "8"]
    for kind, init, want in [("encoder", "text", "activations"), ("causal", "labels", "activations"),
                             ("seq2seq", "text", "random"), ("encoder", "random", None), ("encoder", None, None)]:
        out = tmp_path / f"{kind}-{init}"
        flags = ["--init", init] if init else []  # prefix tuning's default start is random (measured no worse)
        code, _, err = run_cli("train", "--model", str(tiny_models[kind]), *flags, "--out", str(out), *fast)
        assert code == 0, err
        info = json.loads((out / "metrics.json").read_text()).get("training", {}).get("init_from")
        assert (info or {}).get("init") == want, (kind, init, info)


def test_init_text_alone_asks_for_a_text_start():
    """--init-text without --init starts from that text, also for prefix tuning (whose default is random); p-tuning,
    whose prompt PEFT's encoder makes, records the random start it gets."""
    prefix, ptuning = get_method("prefix-tuning"), get_method("p-tuning")
    with_text = RunConfig()
    with_text.train.init_text = "a great movie"
    assert (prefix.init_of(RunConfig()), prefix.init_of(with_text)) == ("random", "text")
    assert get_method("prompt-tuning").init_of(RunConfig()) == "text"
    assert (ptuning.init_of(RunConfig()), ptuning.takes_init(), prefix.takes_init()) == ("random", False, True)
