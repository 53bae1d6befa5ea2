"""The echoed logprobs' text_offset read off the tokenizer's offset mapping equals decoding every prefix (OpenAI's
definition: the characters before each token), for byte-level and BPE tokenizers, specials and non-ASCII text."""

from __future__ import annotations

import pytest
from lmeval_tiny import save_tokenizer
from transformers import AutoTokenizer, ByT5Tokenizer

from promptlab.serving.openai_api import prefix_lengths

TEXTS = ["a gorgeous, witty film. It was great", "  two  spaces\nand a line", "café — naïve 東京 ok", "x"]


def quadratic(tok, ids: list[int], start: int = 0) -> list[int]:
    return [len(tok.decode(ids[:k], skip_special_tokens=True)) if k >= start else 0 for k in range(len(ids))]


@pytest.fixture(scope="module", params=["byt5", "bpe-gpt2", "bpe-llama"])
def tok(request, tmp_path_factory):
    if request.param == "byt5":
        return ByT5Tokenizer()
    out = tmp_path_factory.mktemp(request.param)
    save_tokenizer(out, request.param.split("-")[1])
    return AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize("text", TEXTS)
def test_offsets_equal_decoding_every_prefix(tok, text):
    ids = tok(text)["input_ids"]  # with the tokenizer's own specials (ByT5 appends EOS)
    ids = ids + tok(" and more", add_special_tokens=False)["input_ids"]  # a completion after the prompt
    assert prefix_lengths(tok, ids) == quadratic(tok, ids)
    assert prefix_lengths(tok, ids, start=len(ids) // 2)[len(ids) // 2 :] == quadratic(tok, ids)[len(ids) // 2 :]
