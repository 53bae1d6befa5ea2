import copy

import pytest
import torch
import torch.nn.functional as F

from promptlab.attention import BIAS_ATTENTION, position_bias_attention
from promptlab.backbones import load_backbone


def test_kind_detected_from_config(tiny_models):
    for kind, path in tiny_models.items():
        assert load_backbone(str(path)).kind == kind


def test_choice_scores_do_not_depend_on_batching(tiny_models):
    prompts = ["short", "a much longer prompt than the first one", "mid length text"]
    for kind in ("seq2seq", "causal"):
        bb = load_backbone(str(tiny_models[kind]))
        together = bb.score_choices(prompts, ["yes", "no"], batch_size=6)
        alone = torch.cat([bb.score_choices([p], ["yes", "no"]) for p in prompts])
        assert torch.allclose(together, alone, atol=1e-4), kind


def test_generation_with_left_padding_matches_one_at_a_time(tiny_models):
    bb = load_backbone(str(tiny_models["causal"]))
    prompts = ["hello there", "a longer prompt that needs padding on the left side"]
    together = bb.generate(prompts, max_new_tokens=5, batch_size=2)
    alone = [bb.generate([p], max_new_tokens=5)[0] for p in prompts]
    assert together == alone


def test_encoder_embeddings_are_order_independent(tiny_models):
    bb = load_backbone(str(tiny_models["encoder"]))
    texts = ["the food was great", "terrible film", "the package arrived on tuesday"]
    a = bb.embed(texts)
    b = bb.embed(texts[::-1]).flip(0)
    assert a.shape == (3, 32) and torch.allclose(a, b, atol=1e-5)


def test_minilm_alias_is_the_real_pretrained_encoder():
    bb = load_backbone("minilm")
    assert bb.kind == "encoder" and bb.normalize and bb.pooling == "mean"
    e = bb.embed(["The food was great.", "The meal was delicious.", "The train was late."])
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # a pretrained encoder, not random weights


# -- position_bias_attention (T5 family): same outputs as transformers' sdpa, bitwise-equal training -----------

PROMPTS = ["short", "a much longer prompt than the first one, with padding for the others", "mid length text"]


def _stock_and_fast(path):
    stock, fast = load_backbone(str(path), attention="sdpa"), load_backbone(str(path))
    assert stock.model.config._attn_implementation == "sdpa"
    assert fast.model.config._attn_implementation == BIAS_ATTENTION
    assert fast.model.encoder.config._attn_implementation == BIAS_ATTENTION
    return stock, fast


def test_fast_attention_only_for_position_bias_models(tiny_models):
    for kind in ("encoder", "causal"):
        assert load_backbone(str(tiny_models[kind])).model.config._attn_implementation != BIAS_ATTENTION


def test_fast_attention_matches_sdpa_at_inference(tiny_models):
    stock, fast = _stock_and_fast(tiny_models["seq2seq"])
    enc = stock._tok([*PROMPTS, PROMPTS[2]])
    lengths = enc["attention_mask"].sum(-1).tolist()
    # right padding, and two adjacent rows of one length: the per-length path runs groups of one and of two rows
    assert (enc["attention_mask"] == 0).any() and lengths[2] == lengths[3] != lengths[1]
    dec = torch.tensor([[0, 5, 9, 12], [0, 7, 1, 0], [0, 3, 3, 3], [0, 3, 3, 3]])
    with torch.inference_mode():
        a = stock.model(**enc, decoder_input_ids=dec)
        b = fast.model(**enc, decoder_input_ids=dec)
    assert torch.allclose(a.encoder_last_hidden_state, b.encoder_last_hidden_state, atol=1e-5)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(stock.score_choices(PROMPTS, ["yes", "no"]), fast.score_choices(PROMPTS, ["yes", "no"]),
                          atol=1e-4)
    assert stock.generate(PROMPTS, max_new_tokens=12) == fast.generate(PROMPTS, max_new_tokens=12)
    assert torch.allclose(stock.embed(PROMPTS), fast.embed(PROMPTS), atol=1e-5)


def test_fast_attention_in_bf16_decodes_through_sdpa_like_transformers(tiny_models, monkeypatch):
    """In bf16 a decoding step's attention goes to SDPA (the fused kernel), and agrees with transformers' path."""
    path = str(tiny_models["seq2seq"])
    stock = load_backbone(path, attention="sdpa", dtype="bfloat16")
    fast = load_backbone(path, dtype="bfloat16")
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, *a, **k: calls.append(q.shape[2]) or real(q, *a, **k))
    enc = stock._tok(PROMPTS)
    dec = torch.tensor([[0, 5, 9, 12], [0, 7, 1, 0], [0, 3, 3, 3]])
    with torch.inference_mode():
        a = stock.model(**enc, decoder_input_ids=dec).logits.float()
        calls.clear()
        b = fast.model(**enc, decoder_input_ids=dec).logits.float()
        assert 4 in calls  # the decoder's 4 query rows went to SDPA
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert stock.generate(PROMPTS, max_new_tokens=12) == fast.generate(PROMPTS, max_new_tokens=12)


def test_fast_attention_matches_sdpa_under_prompt_tuning(tiny_models):
    from peft import PromptTuningConfig, get_peft_model

    stock, fast = _stock_and_fast(tiny_models["seq2seq"])
    cfg = {"task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 4, "num_transformer_submodules": 1}
    torch.manual_seed(0)
    ps = get_peft_model(stock.model, PromptTuningConfig(**cfg)).eval()
    torch.manual_seed(0)
    pf = get_peft_model(fast.model, PromptTuningConfig(**cfg)).eval()
    assert stock.generate(PROMPTS, 10, model=ps) == fast.generate(PROMPTS, 10, model=pf)
    assert torch.allclose(stock.score_choices(PROMPTS, ["yes", "no"], ps),
                          fast.score_choices(PROMPTS, ["yes", "no"], pf), atol=1e-4)


@pytest.mark.parametrize("prompt_only", [True, False])
def test_fast_attention_training_is_bitwise_identical(tiny_models, prompt_only):
    """Dropout on, padding on: same loss and same gradients, bit for bit, as transformers' sdpa path."""
    from transformers import T5ForConditionalGeneration

    results = []
    for attention in ("sdpa", None):
        bb = load_backbone(str(tiny_models["seq2seq"]), attention=attention)
        model = bb.model if prompt_only else T5ForConditionalGeneration.from_pretrained(
            str(tiny_models["seq2seq"]), attn_implementation=bb.model.config._attn_implementation)
        model.requires_grad_(not prompt_only)
        model.train()
        batch = bb.lm_batch(PROMPTS, ["yes", "no idea", "maybe so"])
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        torch.manual_seed(123)  # the same dropout draws on both sides
        loss = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        grads = [embeds.grad] + ([] if prompt_only else [p.grad for p in model.parameters()])
        results.append((loss.detach(), grads))
    (la, ga), (lb, gb) = results
    assert model.config.dropout_rate > 0
    assert torch.equal(la, lb)
    assert len(ga) == len(gb) and all(torch.equal(x, y) for x, y in zip(ga, gb))


@pytest.mark.parametrize("adapter", [None, "prompt-tuning", "lora", "prefix-tuning"])
def test_seq2seq_choice_scores_share_the_encoder_without_changing_scores(tiny_models, adapter):
    """score_choices encodes each prompt once for all its choices; the scores equal scoring every row alone."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    bb = load_backbone(str(tiny_models["seq2seq"]))
    model = bb.model
    torch.manual_seed(0)
    if adapter == "prompt-tuning":
        model = get_peft_model(model, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3,
                                                         num_transformer_submodules=1))
    elif adapter == "lora":
        model = get_peft_model(copy.deepcopy(model), LoraConfig(task_type="SEQ_2_SEQ_LM", r=2, target_modules=["q", "v"],
                                                                 init_lora_weights=False))
    elif adapter == "prefix-tuning":
        model = get_peft_model(model, PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3))
    model.eval()
    choices = ["yes", "no", "maybe not"]
    got = bb.score_choices(PROMPTS, choices, model, batch_size=6)
    with torch.inference_mode():
        alone = torch.tensor([[float(bb.sequence_logprob(bb.lm_batch([p], [ch]), model)) for ch in choices]
                              for p in PROMPTS])
    assert torch.allclose(got, alone, atol=1e-4), (got, alone)


def test_fast_attention_trains_under_bf16_autocast(tiny_models):
    """Mixed precision (accelerate's bf16) keeps transformers' path: same loss as with stock sdpa."""
    losses = []
    for attention in ("sdpa", None):
        bb = load_backbone(str(tiny_models["seq2seq"]), attention=attention)
        bb.model.train()
        batch = bb.lm_batch(PROMPTS, ["yes", "no idea", "maybe so"])
        embeds = bb.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = bb.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        losses.append((loss.detach(), embeds.grad))
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])


# -- soft prompts: generation and the positions they take ----------------------------------------------------
def _visible(bb):
    """Zero the special and non-ASCII byte embeddings (tied to the output layer): greedy decoding writes text."""
    w = bb.model.get_input_embeddings().weight
    with torch.no_grad():
        w[:3] = 0
        w[3 + 128 :] = 0
    return bb


def _random_prompt(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.prompt_encoder["default"].parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


@torch.inference_mode()
def _greedy_by_recomputing(bb, model, text, k):
    """Greedy decoding after a soft prompt by definition: one full forward of [P, x, y<t] per new token, through
    the PEFT model's own forward (what training ran)."""
    x = bb.tokenizer(text)["input_ids"]
    out: list[int] = []
    for _ in range(k):
        if bb.kind == "causal":
            logits = model(input_ids=torch.tensor([x + out]), attention_mask=torch.ones(1, len(x + out), dtype=torch.long)).logits
        else:
            start = [int(bb.model.config.decoder_start_token_id)]
            logits = model(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                           decoder_input_ids=torch.tensor([start + out])).logits
        out.append(int(logits[0, -1].argmax()))
        if out[-1] == bb.tokenizer.eos_token_id:
            break
    return bb.tokenizer.decode(out, skip_special_tokens=True).strip()


@pytest.mark.parametrize(("kind", "method"), [
    ("causal", "prompt-tuning"), ("causal", "p-tuning"), ("causal", "prefix-tuning"),
    ("seq2seq", "prompt-tuning"), ("seq2seq", "p-tuning"), ("seq2seq", "prefix-tuning"),
])
def test_soft_prompt_generation_equals_greedy_by_recomputing(tiny_models, kind, method):
    """The prompt goes in once: PEFT's own causal generate() re-inserted it at every step under transformers 5
    (and lost prefix tuning's keys/values after the first); its seq2seq generate() put a prefix's decoder steps at
    other positions than its forward does."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    from promptlab.model_layout import input_prompt

    bb = _visible(load_backbone(str(tiny_models[kind])))
    task_type = "CAUSAL_LM" if kind == "causal" else "SEQ_2_SEQ_LM"
    cfg = {"prompt-tuning": PromptTuningConfig(task_type=task_type, num_virtual_tokens=5, num_transformer_submodules=1),
           "p-tuning": PromptEncoderConfig(task_type=task_type, num_virtual_tokens=3, encoder_hidden_size=32,
                                           num_transformer_submodules=1),
           "prefix-tuning": PrefixTuningConfig(task_type=task_type, num_virtual_tokens=4)}[method]
    model = _random_prompt(get_peft_model(bb.model, cfg), seed=5)
    texts = ["who was born in the city?", "a", "which country is the package from, and when did it arrive?"]
    got = bb.generate(texts, max_new_tokens=8, model=model, batch_size=3)  # left padding inside one batch
    prompt = input_prompt(model)
    if method == "prefix-tuning":
        assert prompt is None
    else:
        assert prompt is not None and prompt.shape == (cfg.num_virtual_tokens, bb.hidden_size)
    want = [_greedy_by_recomputing(bb, model, t, 8) for t in texts]
    assert got == want
    assert any(got) and got != bb.generate(texts, max_new_tokens=8)  # visible text, and the prompt steers it


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_long_input_leaves_room_for_virtual_tokens(tiny_models, kind):
    """Truncation keeps positions for the prompt: max_length input tokens + virtual tokens would overflow."""
    from peft import PromptTuningConfig, get_peft_model

    bb = load_backbone(str(tiny_models[kind]))
    positions = 128 if kind == "encoder" else 1024
    assert bb.max_length == positions
    task_type = "FEATURE_EXTRACTION" if kind == "encoder" else "CAUSAL_LM"
    model = get_peft_model(bb.model, PromptTuningConfig(task_type=task_type, num_virtual_tokens=4)).eval()
    long = "word " * 3000
    assert bb.input_budget() == positions and bb.input_budget(model) == positions - 4
    if kind == "encoder":
        assert bb.encode([long, "short"], model).shape == (2, bb.hidden_size)
        return
    batch = bb.lm_batch([long, "short"], ["positive", "negative"], model)
    assert batch["input_ids"].shape[1] == positions - 4
    assert batch["labels"][0, -1] != -100  # the target survives; the input's tail gives way
    assert torch.isfinite(model(**batch).loss)
    assert bb.score_choices([long], ["yes", "no"], model).shape == (1, 2)
    assert bb.input_budget(model, new_tokens=5) == positions - 9
    assert len(bb.generate([long], max_new_tokens=5, model=model)) == 1


@pytest.mark.parametrize("damage", ["safetensors-truncated", "safetensors-empty", "bin-truncated", "bin-garbage"])
def test_damaged_weights_give_one_line_model_error(tiny_models, tmp_path, damage):
    import shutil

    from transformers import AutoModelForCausalLM

    from promptlab.errors import ModelError

    d = tmp_path / "model"
    shutil.copytree(tiny_models["causal"], d)
    weights = d / "model.safetensors"
    if damage.startswith("bin"):
        torch.save(AutoModelForCausalLM.from_pretrained(d).state_dict(), d / "pytorch_model.bin")
        weights.unlink()
        weights = d / "pytorch_model.bin"
    data = weights.read_bytes()
    weights.write_bytes({"safetensors-truncated": data[: len(data) // 2], "safetensors-empty": b"",
                         "bin-truncated": data[: len(data) // 2], "bin-garbage": b"\x00" * 64}[damage])
    with pytest.raises(ModelError) as e:
        load_backbone(str(d))
    msg = str(e.value)
    assert "\n" not in msg and "weights are damaged" in msg and "re-download or re-save" in msg, msg


def test_encoder_attention_rows_grouped_by_length_keep_the_bits_of_one_call_per_row():
    """The inference path groups equal-length rows and hands SDPA a float32 copy of the bias: same bits as one
    call per row with the model's own bf16 bias slice."""

    torch.manual_seed(0)
    L = 24  # more queries than the decoding branch takes (<= 16)
    q, k, v = (torch.randn(4, 2, L, 8).bfloat16() for _ in range(3))
    bias = torch.randn(1, 2, L, L).bfloat16()
    lengths = [L, 20, 20, 17]
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :].expand(4, 1, L, L)
    module = torch.nn.Module()
    module.is_causal = False
    with torch.inference_mode():
        out, _ = position_bias_attention(module, q, k, v, mask, scaling=1.0, position_bias=bias)
        for b, n in enumerate(lengths):
            row = F.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                                 attn_mask=bias[..., :n], scale=1.0)
            assert torch.equal(out[b], row[0].transpose(0, 1))
        copy = bias._promptlab_float[1]  # T5 passes one bias to every layer: its float32 copy is made once
        again, _ = position_bias_attention(module, q, k, v, mask, scaling=1.0, position_bias=bias)
        assert bias._promptlab_float[1] is copy and torch.equal(again, out)


def test_encoder_attention_bias_copy_follows_an_edited_bias():
    """The float32 copy is tied to the bias's version: an in-place edit (outside inference mode) makes a new one."""

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 20, 8) for _ in range(3))
    bias = torch.randn(1, 2, 20, 20).bfloat16()
    mask = torch.ones(2, 1, 20, 20, dtype=torch.bool)
    module = torch.nn.Module()
    module.is_causal = False
    with torch.no_grad():
        first, _ = position_bias_attention(module, q, k, v, mask, scaling=1.0, position_bias=bias)
        bias.mul_(2)
        second, _ = position_bias_attention(module, q, k, v, mask, scaling=1.0, position_bias=bias)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.float(), scale=1.0)
    assert torch.equal(second, want.transpose(1, 2)) and not torch.equal(first, second)
