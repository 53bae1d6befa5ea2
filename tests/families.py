"""Tiny random models of each model family, built from the family's real transformers config class.

Shared by tests/test_families.py (the family x method matrix) and bench/family_table.py (the README table).
No download: generative models read bytes (ByT5's ids, as a `tokenizers` file: a ByT5Tokenizer saved beside a
Qwen2, Mistral, Phi-3 or OLMo 2 config is loaded by AutoTokenizer as that family's own tokenizer class, which
fails or encodes every word to nothing), encoders a WordPiece trained on a few sentences (conftest.py). Every model is 2 layers of width 32-64 and a vocabulary of about 400.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# ByT5: pad 0, eos 1, unk 2, bytes 3..258, extra ids to 383
BYTE_VOCAB = 384
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
DECODER = {**TINY, "vocab_size": BYTE_VOCAB, "num_key_value_heads": 1, "max_position_embeddings": 1024,
           "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}


@dataclass(frozen=True)
class Family:
    name: str  # as the README table names it
    kind: str  # encoder | seq2seq | causal, what promptlab should detect
    build: Callable[[], Any]  # () -> the model, random weights


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**DECODER))


def _mistral() -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**DECODER, head_dim=16, sliding_window=64))


def _qwen2() -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**DECODER, tie_word_embeddings=True))


def _qwen3() -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(Qwen3Config(**DECODER, head_dim=16, tie_word_embeddings=True))


def _gemma2() -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return Gemma2ForCausalLM(Gemma2Config(**DECODER, head_dim=16, query_pre_attn_scalar=16, sliding_window=64))


def _gemma3() -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM(Gemma3TextConfig(**DECODER, head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                                              layer_types=["sliding_attention", "full_attention"]))


def _phi3() -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(**{**DECODER, "num_key_value_heads": 2}, original_max_position_embeddings=1024))


def _olmo2() -> Any:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    return Olmo2ForCausalLM(Olmo2Config(**DECODER))


def _gpt_neox() -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = {k: v for k, v in DECODER.items() if k != "num_key_value_heads"}
    return GPTNeoXForCausalLM(GPTNeoXConfig(**cfg))


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=BYTE_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=1024,
                                      bos_token_id=1, eos_token_id=1, pad_token_id=0))


def _t5() -> Any:
    """T5 v1.1 (the Flan-T5 shape): gated-GELU feed-forward, lm head not tied to the embeddings."""
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(
        vocab_size=BYTE_VOCAB, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1))


def _bart() -> Any:
    """With facebook/bart-base's generation settings (beams, no repeated trigram, forced EOS), which promptlab's
    greedy readout must set aside."""
    from transformers import BartConfig, BartForConditionalGeneration

    model = BartForConditionalGeneration(BartConfig(
        vocab_size=BYTE_VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1024,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=1))
    model.generation_config.update(num_beams=4, no_repeat_ngram_size=3, early_stopping=True)
    return model


ENCODER = {**TINY, "vocab_size": 400, "max_position_embeddings": 130, "pad_token_id": 0}


def _bert() -> Any:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**ENCODER))


def _roberta() -> Any:
    from transformers import RobertaConfig, RobertaModel

    return RobertaModel(RobertaConfig(**ENCODER, bos_token_id=2, eos_token_id=3))


def _deberta_v2() -> Any:
    """The DeBERTa-v3 shape: relative attention, no absolute positions added to the input."""
    from transformers import DebertaV2Config, DebertaV2Model

    return DebertaV2Model(DebertaV2Config(**ENCODER, relative_attention=True, position_biased_input=False,
                                          pos_att_type=["p2c", "c2p"], position_buckets=32, max_relative_positions=-1,
                                          type_vocab_size=0))


def _distilbert() -> Any:
    """Its config names the sizes dim, n_layers and n_heads (hidden_size etc. only through attribute_map)."""
    from transformers import DistilBertConfig, DistilBertModel

    return DistilBertModel(DistilBertConfig(vocab_size=400, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                            max_position_embeddings=128, pad_token_id=0))


def _modernbert() -> Any:
    from transformers import ModernBertConfig, ModernBertModel

    return ModernBertModel(ModernBertConfig(**{**ENCODER, "max_position_embeddings": 128}, local_attention=16,
                                            global_attn_every_n_layers=2, cls_token_id=2, sep_token_id=3,
                                            bos_token_id=2, eos_token_id=3))


FAMILIES = {f.name: f for f in [
    Family("llama", "causal", _llama),
    Family("mistral", "causal", _mistral),
    Family("qwen2", "causal", _qwen2),
    Family("qwen3", "causal", _qwen3),
    Family("gemma2", "causal", _gemma2),
    Family("gemma3", "causal", _gemma3),
    Family("phi3", "causal", _phi3),
    Family("olmo2", "causal", _olmo2),
    Family("gpt-neox", "causal", _gpt_neox),
    Family("gpt2", "causal", _gpt2),
    Family("t5-v1.1", "seq2seq", _t5),
    Family("bart", "seq2seq", _bart),
    Family("bert", "encoder", _bert),
    Family("roberta", "encoder", _roberta),
    Family("distilbert", "encoder", _distilbert),
    Family("deberta-v2", "encoder", _deberta_v2),
    Family("modernbert", "encoder", _modernbert),
]}


def save_byte_tokenizer(out: Path) -> None:
    """ByT5's byte vocabulary (pad 0, eos 1, unk 2, byte b at 3 + b, 125 extra ids; eos after every text) as a
    byte-level `tokenizers` file, which AutoTokenizer loads for any model type."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    char = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}  # GPT-2's byte alphabet
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {char[b]: 3 + b for b in range(256)}
    vocab |= {f"<extra_id_{i}>": 259 + i for i in range(BYTE_VOCAB - 259)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=1024).save_pretrained(out)


def build_family(name: str, out: Path, seed: int = 0) -> Path:
    """The family's tiny model with its tokenizer, saved like a hub checkpoint in `out`."""
    from conftest import _save_wordpiece

    fam = FAMILIES[name]
    torch.manual_seed(seed)
    model = fam.build()
    out.mkdir(parents=True, exist_ok=True)
    if fam.kind == "encoder":
        _save_wordpiece(out)
    else:
        ascii_only(model)
        save_byte_tokenizer(out)
    model.save_pretrained(out)
    return out


@torch.no_grad()
def ascii_only(model: Any) -> None:
    """Zero the output rows of every token but the printable ASCII bytes other than space (logit 0 where the
    others' are random), so greedy decoding writes visible text and never stops early: a generation test then
    compares real text."""
    out = model.get_output_embeddings()
    keep = torch.zeros(out.weight.shape[0], dtype=torch.bool)
    keep[3 + ord("!") : 3 + ord("~") + 1] = True
    out.weight[~keep] = 0
    if getattr(out, "bias", None) is not None:
        out.bias.zero_()
