"""Tiny random models with a real BPE tokenizer, rebuilt bit for bit from a seed: what promptlab's scores are
compared with lm-evaluation-harness's on (tests/test_lmeval_parity.py, bench/lmeval_parity.py).

A byte tokenizer would hide the one thing that differs between conventions (where a word boundary splits
the context from the continuation), so the tokenizer is a byte-level BPE trained in-process on a fixed text,
with merges across " positive", " no", ...; the Llama-shaped one adds BOS and the T5 one appends EOS, as theirs do.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["the", "a", "movie", "film", "review", "sentiment", "positive", "negative", "yes", "no", "question", "answer", "is", "it", "true", "that", "this", "was", "great", "terrible", "good", "bad", "not", "very", "funny", "boring", "story", "acting", "plot", "and", "of", "to", "in", "premise", "hypothesis", "passage", "based", "on", "previous", "does", "entail", "Review", "Sentiment", "Question", "Answer", "Premise", "Hypothesis", "Yes", "No"]


def corpus() -> list[str]:
    """A fixed training text: every word, and sentences made of them in a fixed order."""
    lines = [" ".join(WORDS)]
    for i in range(200):
        lines.append(" ".join(WORDS[(i * k + 3 * k) % len(WORDS)] for k in range(1, 12)) + ".")
        lines.append(f"Review: {WORDS[i % len(WORDS)]} {WORDS[(7 * i) % len(WORDS)]}\nSentiment: "
                     f"{'positive' if i % 2 else 'negative'}")
    return lines


def save_tokenizer(out: Path, kind: str, texts: list[str] | None = None, vocab: int = 420,
                   positions: int = 512) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts or corpus(), trainer)
    if kind == "llama":  # Llama's tokenizer puts BOS in front of every text
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    elif kind == "t5":  # T5's appends EOS
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    extra = {"bos_token": "<s>"} if kind == "llama" else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=positions, **extra).save_pretrained(out)


def build(kind: str, out: Path, seed: int = 0, texts: list[str] | None = None, vocab: int = 420,
          positions: int = 512) -> Path:
    """`kind`: gpt2 | llama | t5; random weights from `seed`, saved with save_pretrained beside a BPE tokenizer
    trained on `texts` (default `corpus()`) to `vocab` entries; `positions`: the longest input."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(out, kind, texts, vocab, positions)
    torch.manual_seed(seed)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=positions,
                                           bos_token_id=1, eos_token_id=1, pad_token_id=0))
    elif kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions,
                                             bos_token_id=3, eos_token_id=1, pad_token_id=0))
    else:
        model = T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_ff=64, d_kv=16, num_layers=2,
                                                    num_heads=2, decoder_start_token_id=0, pad_token_id=0,
                                                    eos_token_id=1))
    model.save_pretrained(out)
    return out
