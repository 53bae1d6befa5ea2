"""Soft prompts on PEFT: prompt tuning, prefix tuning, P-tuning, and the hybrid of a hard template with soft tokens.

The backbone stays frozen; PEFT adds the prompt parameters and saves them in its own format
(adapter_config.json + adapter_model.safetensors), so anyone can load them with PEFT alone.
"""

from __future__ import annotations

import inspect
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..artifacts import (
    ADAPTER_CONFIG,
    artifact_dir,
    check_compatible,
    load_anchors,
    read_meta,
    read_prompt_artifact,
)
from ..backbones import Backbone
from ..chat import chat_from_meta
from ..errors import ConfigError, ModelError, first_line
from ..placement import load_prompt_adapter
from ..tasks.base import Example, Task, Template
from .adapted import NO_PREFIX_CHECKPOINTING, AdaptedMethod, AdaptedPredictor, fit_adapted
from .base import FitContext, Predictor, Refusal
from .registry import register

if TYPE_CHECKING:
    from ..config import RunConfig

TASK_TYPES = {"encoder": "FEATURE_EXTRACTION", "seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}
PROMPT_INIT = "prompt:"  # --init prompt:DIR


def load_source_prompt(path: str, method: SoftMethod, backbone: Backbone) -> torch.Tensor:
    """The trained prompt rows of artifact (or run) DIR, checked to fit `method` on `backbone`. [n, W]"""
    adir = artifact_dir(path)
    if not adir.is_dir():
        raise ConfigError(f"--init prompt:{path}: no such directory; pass the run (or artifact) directory of a "
                          "trained soft prompt")
    meta = read_meta(adir)
    if not method.takes_init():
        raise ConfigError(f"--init prompt: cannot start {method.name}: {method.no_init}; use it with prompt-tuning, "
                          "hybrid or prefix-tuning")
    adapter, weights = read_prompt_artifact(adir, meta, f"--init prompt:{path}",
                                            "a prompt-tuning, hybrid or prefix-tuning run")
    peft_type, want = adapter.get("peft_type"), method.peft_type
    if peft_type != want:
        raise ConfigError(f"--init prompt:{path} is a {meta.get('method', peft_type)} prompt ({peft_type}) but "
                          f"{method.name} needs a {want} one; start from a run of the same kind")
    try:
        check_compatible(meta, backbone, None, f"--init prompt:{path}")
    except ModelError as e:
        raise ConfigError(str(e)) from None
    n = adapter.get("num_virtual_tokens")
    if not isinstance(n, int) or n < 1:
        raise ModelError(f"--init prompt:{path}: its adapter_config.json gives no num_virtual_tokens; retrain or "
                         "restore it")
    return weights[:n].float()


def init_text(task: Task, config: RunConfig) -> str:
    """Default init text: the task's chosen template with its fields emptied — the instruction words."""
    if config.train.init_text:
        return config.train.init_text
    t = task.template(config.hard.template)
    return " ".join(t.render(Example("init", {f: "" for f in task.input_fields}), task.verbalizers or None).split())


def init_token_ids(backbone: Backbone, task: Task, config: RunConfig, n: int, how: str | None = None,
                   notes: dict[str, Any] | None = None) -> list[int] | None:
    """Token ids whose embeddings start the soft prompt (None = PEFT's random init); `how` defaults to --init.

    A text start with no --init-text takes the template's words; a template that has none (`{text}`) starts a
    choice task's prompt from its label words instead, said in `notes` (the run's method_info)."""
    how = how or config.train.init or "text"
    tok = backbone.tokenizer
    if how == "random":
        return None
    if how == "vocab":
        special = set(tok.all_special_ids)
        vocab = [i for i in range(min(len(tok), backbone.fingerprint()["vocab_size"])) if i not in special]
        return random.Random(config.seed).sample(vocab, n) if len(vocab) >= n else None
    if how == "labels":
        if task.kind != "choices":
            raise ConfigError(f"--init labels needs a task with labels; '{task.name}' has free-text answers, use text or vocab")
        text = " ".join(task.verbalizers)
    else:
        text = init_text(task, config)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids and how == "text" and not config.train.init_text:
        name = task.template(config.hard.template).name
        if task.kind != "choices":
            raise ConfigError(f"--init text starts the soft prompt from the template's words, but template '{name}' "
                              f"of task '{task.name}' has none besides its fields; pass --init-text with an "
                              "instruction, e.g. --init-text 'Answer the question:', or --init vocab")
        text = " ".join(task.verbalizers)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if notes is not None:
            notes["init"] = {"init": "labels", "asked": "text", "why": f"template '{name}' has no words besides its "
                             "fields, so the label words start the prompt (--init-text sets other words)"}
    if not ids:
        raise ConfigError(f"--init-text {text!r} has no tokens; give a non-empty text")
    return (ids * (n // len(ids) + 1))[:n]  # repeat to fill, as PEFT's TEXT init does


@torch.no_grad()
def word_keys_values(backbone: Backbone, ids: list[int]) -> torch.Tensor | None:
    """Every layer's attention keys and values for the tokens `ids`, in PEFT's prefix layout:
    row t = [K_0(t), V_0(t), K_1(t), V_1(t), ...], each as the projection's [heads * head_dim] output. [n, L*2*d]

    Encoders (BERT family) are read with hooks on the key/value projections, decoder-only models from their
    cache; None for other layouts (seq2seq prefixes feed T5's decoder cache, whose words would have to be
    decoder states, not encoder ones)."""
    model = backbone.model
    x = torch.tensor([ids], device=backbone.device)
    was = model.training
    model.eval()  # the words' activations without dropout noise
    try:
        if backbone.kind == "causal":
            cache = model(input_ids=x, use_cache=True).past_key_values
            per_layer = [(layer.keys, layer.values) for layer in cache.layers]
            flat = [t[0].transpose(0, 1).reshape(len(ids), -1) for kv in per_layer for t in kv]  # [n, heads*hd]
            return torch.cat(flat, dim=-1).float()
        names = ("attention.self.key", "attention.self.value")
        mods = [(name, m) for name, m in model.named_modules() if name.endswith(names)] if backbone.kind == "encoder" else []
        if not mods:
            return None
        seen: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out[0]))
                 for name, m in mods]
        try:
            model(input_ids=x, attention_mask=torch.ones_like(x))
        finally:
            for h in hooks:
                h.remove()
    finally:
        model.train(was)
    return torch.cat([seen[name] for name, _ in mods], dim=-1).float()  # modules come key, value per layer


def input_prompt_shape(backbone: Backbone) -> dict[str, Any]:
    """The sizes PEFT reads off the config for an input-level prompt, read through the config's own attribute names
    (PEFT looks in its dict for hidden_size, n_embd or d_model, and misses DistilBERT's dim): the prompt is as wide
    as the word embeddings."""
    cfg = backbone.model.config
    return {"token_dim": backbone.hidden_size, "num_layers": getattr(cfg, "num_hidden_layers", None),
            "num_attention_heads": getattr(cfg, "num_attention_heads", None)}


class SoftMethod(AdaptedMethod):
    """A PEFT prompt-learning method. Subclasses give the PEFT type and config; the rest is shared."""

    family = "soft"
    peft_type: ClassVar[str]  # PEFT's peft_type, as adapter_config.json records it
    uses_template: ClassVar[bool] = False
    # On a chat model the (templated) input is the user turn of the chat template, and PEFT puts the virtual tokens in
    # front of all of it, BOS included (DESIGN.md, "Soft prompts on a chat model").
    reads_chat = True
    token_init: ClassVar[bool] = False  # prompts that live in the word-embedding space start from words
    activation_init: ClassVar[bool] = False  # per-layer prompts start from words' keys and values
    default_init: ClassVar[str] = "text"
    no_init: ClassVar[str] = ""  # why --init cannot choose this method's start, when it cannot

    def init_of(self, config: RunConfig) -> str:
        # --init-text alone asks for a text start, also where the default is another (prefix-tuning's random)
        return config.train.init or ("text" if config.train.init_text else self.default_init)

    def takes_init(self) -> bool:
        """Whether --init chooses this method's starting prompt (p-tuning's comes from PEFT's MLP encoder)."""
        return self.token_init or self.activation_init

    def peft_config(self, backbone: Backbone, n: int, config: RunConfig | None = None) -> Any:
        raise NotImplementedError

    def virtual_tokens(self, config: RunConfig) -> int:
        return config.train.virtual_tokens

    def template_for(self, task: Task, config: RunConfig, kind: str = "") -> Template:
        return task.template(config.hard.template) if self.uses_template else task.plain_template()

    def fit(self, ctx: FitContext) -> Predictor:
        from peft import get_peft_model

        self.check(ctx.backbone, ctx.task)
        n = ctx.config.train.virtual_tokens
        model = get_peft_model(ctx.backbone.model, self.peft_config(ctx.backbone, n, ctx.config))
        notes: dict[str, Any] = {}
        source = self._init(model, ctx, n, notes)
        # The starting point, as PEFT would save it: `promptlab inspect` measures how far training moved it.
        init = model.get_prompt_embedding_to_save("default").clone()
        pred = fit_adapted(ctx, self, model)
        pred.prompt_init = init
        pred.info.update(notes)
        pred.extras.update({"virtual_tokens": n, "init": notes.get("init", {}).get("init", self.init_of(ctx.config))})
        if source:
            pred.extras["init_from"] = source
            pred.train_info["init_from"] = source
        return pred

    def _init(self, model: Any, ctx: FitContext, n: int, notes: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Initialise input prompts from token embeddings ourselves: PEFT's TEXT init reloads the tokenizer
        by name (fails for local or in-memory models offline) and has no label-word init.
        `--init prompt:DIR` starts from another run's trained prompt (SPoT); returns what it copied. `notes`
        receives what the start was when it is not what --init asked (init_token_ids)."""
        how = self.init_of(ctx.config)
        if how.startswith(PROMPT_INIT):
            return self._init_from_prompt(model, ctx, n, how[len(PROMPT_INIT):])
        if self.activation_init and how != "random":
            return self._init_from_activations(model, ctx, n, how, notes)
        if not self.token_init:
            return None
        ids = init_token_ids(ctx.backbone, ctx.task, ctx.config, n, how, notes)
        if ids is None:
            return
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight[:n] = ctx.backbone.word_embeddings(ids)
        return None

    def _init_from_activations(self, model: Any, ctx: FitContext, n: int, how: str,
                               notes: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Li & Liang report that a prefix starting as real words' keys and values at every layer trains better
        than a random one (on SST-2 with MiniLM it measured no better, so it is opt-in). The words are the --init
        choice's tokens (text, labels or vocab), run through the frozen model; returns what was done, or why not
        (the prefix then keeps PEFT's random start)."""
        if ctx.config.train.prefix_projection:
            return {"init": "random", "why": "--prefix-projection trains an MLP's input, not the prefix itself"}
        ids = init_token_ids(ctx.backbone, ctx.task, ctx.config, n, how, notes)
        rows = word_keys_values(ctx.backbone, ids) if ids else None
        if rows is None:
            return {"init": "random", "why": f"no key/value capture for {ctx.backbone.kind} models"}
        weight = model.prompt_encoder["default"].embedding.weight
        with torch.no_grad():
            weight[:n] = rows.to(weight.dtype)
        return {"init": "activations", "tokens": n}

    def _init_from_prompt(self, model: Any, ctx: FitContext, n: int, path: str) -> dict[str, Any]:
        """SPoT (Vu et al.): the new prompt starts as a copy of a prompt trained on another task."""
        src = load_source_prompt(path, self, ctx.backbone)
        rows = src.shape[0]
        if rows != n:  # repeat or cut whole tokens, as the text init repeats its words
            src = src.repeat((n + rows - 1) // rows, 1)[:n]
        weight = model.prompt_encoder["default"].embedding.weight
        if weight.shape[1] != src.shape[1]:
            raise ConfigError(f"--init prompt:{path} holds {src.shape[1]}-wide prompt rows but this {self.name} "
                              f"prompt needs {weight.shape[1]}; train the source with the same model and method")
        with torch.no_grad():
            weight[:n] = src.to(weight.dtype)
        note = ("copied" if rows == n else
                f"source has {rows} tokens, {'repeated' if rows < n else 'truncated'} to {n}")
        return {"path": path, "source_tokens": rows, "tokens": n, "note": note}

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        from peft import PeftModel

        try:
            self._check_adapter_type(path)
            if getattr(backbone.model, "hf_device_map", None):  # --device-map: keep the placement (placement.py)
                model = load_prompt_adapter(backbone.model, str(path))
            else:
                model = PeftModel.from_pretrained(backbone.model, str(path))
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 — PEFT/safetensors raise many types for missing or corrupt files
            raise ModelError(f"cannot load the soft prompt in '{path}' ({type(e).__name__}: "
                             f"{first_line(e)[:120]}); retrain or restore it") from None
        model.eval()
        t = meta["template"]
        extras = meta.get("extras", {})
        return AdaptedPredictor(self.name, backbone, task, Template(t["name"], t["text"]), model=model,
                                anchors=load_anchors(path), extras=extras,
                                max_new_tokens=extras.get("max_new_tokens", task.max_new_tokens),
                                chat=chat_from_meta(extras.get("chat")))

    def _check_adapter_type(self, path: Path) -> None:
        """PEFT loads whatever adapter_config.json names; a LoRA config here would silently drop the prompt."""
        f = path / ADAPTER_CONFIG
        if not f.is_file():
            raise ModelError(f"{f.name} is missing")
        cfg = json.loads(f.read_text())
        want = self.peft_type
        if cfg.get("peft_type") != want:
            raise ModelError(f"adapter_config.json says peft_type {cfg.get('peft_type')!r} but a {self.name} "
                             f"artifact needs {want!r}")

    def reads(self, cfg: RunConfig) -> set[str]:
        """A soft prompt's own settings; the template too where it is read: around the input (hybrid), or for the
        words a text start takes (--init text without --init-text)."""
        words = self.takes_init() and self.init_of(cfg) == "text" and not cfg.train.init_text
        own = {"virtual_tokens", "init", "init_text"} | ({"template"} if self.uses_template or words else set())
        return (super().reads(cfg) - {"template"}) | own

    def why_unread(self, name: str) -> str:
        if name == "template" and self.takes_init():
            return (f"chooses the hard-prompt template; {self.name} reads the bare input, and the template's words "
                    "start its prompt only under --init text without --init-text")
        return super().why_unread(name)

    def refusals(self, cfg: RunConfig, given: set[str]) -> list[Refusal]:
        """Besides the settings it does not read: --init-text only with a text start; no word start for a prompt
        that PEFT's encoder makes (p-tuning)."""
        out = super().refusals(cfg, given)
        how = self.init_of(cfg)
        if cfg.train.init_text and how != "text":
            out.append(Refusal("init_text", f"--init-text is the text that --init text starts from; this run starts "
                                            f"from {how}, drop one of the two", conflict=True))
        if not self.takes_init() and how != "random" and not how.startswith(PROMPT_INIT):
            flags = [f"--init {cfg.train.init}"] * bool(cfg.train.init) + ["--init-text"] * bool(cfg.train.init_text)
            out.append(Refusal("init" if cfg.train.init else "init_text", f"{self.name}'s prompt comes from its MLP "
                               f"encoder, which PEFT initialises; drop {' and '.join(flags)}"))
        return out


@register
class PromptTuning(SoftMethod):
    name = "prompt-tuning"
    summary = "soft tokens before the input (Lester et al.); init random, vocab, text or labels"
    peft_type = "PROMPT_TUNING"
    token_init = True
    # Input-only soft prompts barely move at the AdamW learning rates used for weights (5e-4 in the seed
    # notebook); Lester et al. train them with Adafactor at 0.3, constant.
    optimizer, default_lr = "adafactor", 0.3

    def peft_config(self, backbone: Backbone, n: int, config: RunConfig | None = None) -> Any:
        from peft import PromptTuningConfig

        # One set of rows: PEFT would allocate 2x for seq2seq and use only the encoder half.
        return PromptTuningConfig(task_type=TASK_TYPES[backbone.kind], num_virtual_tokens=n,
                                  num_transformer_submodules=1, base_model_name_or_path=backbone.name,
                                  **input_prompt_shape(backbone))


@register
class PrefixTuning(SoftMethod):
    name = "prefix-tuning"
    summary = "trainable key/value prefixes at every layer (Li & Liang); --init text/labels: words' keys and values"
    peft_type = "PREFIX_TUNING"
    activation_init = True
    default_init = "random"
    optimizer, default_lr = "adamw", 1e-2

    def peft_config(self, backbone: Backbone, n: int, config: RunConfig | None = None) -> Any:
        from peft import PrefixTuningConfig

        # The MLP exists only while training: PEFT saves its output, and loads the artifact as a plain prefix.
        hidden = config.train.prefix_projection if config else 0
        return PrefixTuningConfig(task_type=TASK_TYPES[backbone.kind], num_virtual_tokens=n,
                                  prefix_projection=hidden > 0, encoder_hidden_size=hidden or None,
                                  base_model_name_or_path=backbone.name)

    def reads(self, cfg: RunConfig) -> set[str]:
        # it reparameterises this method's prefix; checkpointed layers would drop the prefix's cache
        return (super().reads(cfg) | {"prefix_projection"}) - {"gradient_checkpointing"}

    def why_unread(self, name: str) -> str:
        if name == "gradient_checkpointing":
            return NO_PREFIX_CHECKPOINTING.removeprefix("--gradient-checkpointing ").split("; drop")[0]
        return super().why_unread(name)

    def check(self, backbone: Backbone, task: Task) -> None:
        """PEFT hands the prefix to the model as its cache of past keys and values; a model whose forward takes
        none (DeBERTa-v2, ModernBERT) would drop it and fail on the longer attention mask PEFT passes along."""
        super().check(backbone, task)
        if not {"cache", "past_key_values"} & set(inspect.signature(backbone.model.forward).parameters):
            raise ConfigError(f"prefix-tuning cannot run on {backbone.family} models ({type(backbone.model).__name__}): "
                              "their forward takes no past keys and values to hold the prefix; use prompt-tuning or "
                              "p-tuning")


@register
class PTuning(SoftMethod):
    name = "p-tuning"
    summary = "soft tokens produced by a small MLP prompt encoder (Liu et al.)"
    peft_type = "P_TUNING"
    default_init = "random"  # PEFT initialises the encoder; no word start to choose
    no_init = "PEFT saves only P-tuning's output embeddings, not the encoder that makes them"
    optimizer, default_lr = "adafactor", 0.3  # an input-level prompt, trained as prompt tuning's

    def peft_config(self, backbone: Backbone, n: int, config: RunConfig | None = None) -> Any:
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(task_type=TASK_TYPES[backbone.kind], num_virtual_tokens=n,
                                   encoder_hidden_size=backbone.hidden_size, num_transformer_submodules=1,
                                   base_model_name_or_path=backbone.name, **input_prompt_shape(backbone))


@register
class Hybrid(PromptTuning):
    name = "hybrid"
    summary = "the task's hard template around the input plus soft tokens initialised from its text"
    uses_template = True
