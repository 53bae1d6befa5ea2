"""Tiny models built in-process from a config and saved like hub checkpoints; no download anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models gain nothing from a second thread, and on a shared 2-core machine thread contention made
# them 10-50x slower; one thread keeps the suite fast and its timing stable.
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CORPUS = [
    "the food was great and the staff were lovely",
    "service was slow but the food was great",
    "terrible film awful acting boring plot",
    "the hotel room was clean and quiet",
    "the package arrived on tuesday",
    "i would not recommend this product",
    "a negative neutral positive review",
    "question context answer who what where when which born city country",
]


def _save_wordpiece(out: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(
        CORPUS * 5,
        trainers.WordPieceTrainer(
            vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        ),
    )
    cls, sep = wp.token_to_id("[CLS]"), wp.token_to_id("[SEP]")
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=wp,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    ).save_pretrained(out)


def build_tiny(kind: str, out: Path, seed: int = 0, hidden: int = 32) -> Path:
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        ByT5Tokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "encoder":
        _save_wordpiece(out)
        cfg = BertConfig(
            vocab_size=400,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        BertModel(cfg).save_pretrained(out)
    elif kind == "seq2seq":
        ByT5Tokenizer().save_pretrained(out)
        cfg = T5Config(
            vocab_size=384,
            d_model=hidden,
            d_ff=64,
            d_kv=16,
            num_layers=2,
            num_heads=2,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
        T5ForConditionalGeneration(cfg).save_pretrained(out)
    else:
        ByT5Tokenizer().save_pretrained(out)
        cfg = GPT2Config(
            vocab_size=384,
            n_embd=hidden,
            n_layer=2,
            n_head=2,
            n_positions=1024,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
        GPT2LMHeadModel(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {k: build_tiny(k, root / k) for k in ("encoder", "seq2seq", "causal")}


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from promptlab.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run
