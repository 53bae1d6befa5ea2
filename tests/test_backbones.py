import torch

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
