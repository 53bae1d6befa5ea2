"""What did a soft prompt learn? Nearest vocabulary tokens, norms against the vocabulary, movement from init.

Input-level prompts (prompt tuning, hybrid, P-tuning — PEFT saves P-tuning's output embeddings) live in
the word-embedding space, so each virtual token can be compared with the vocabulary: its top-k tokens by
cosine, its L2 norm as a percentile of the vocabulary's norms, and how far it moved from the
initialisation saved at train time (`artifact/prompt_init.safetensors`). Prefix tuning trains keys and
values inside every attention layer: there is no word to compare them with, so it reports per-layer norms
and movement only.

The same `analyse` serves `promptlab inspect DIR` (tensors read from the artifact) and the end of a soft
run (tensors from the model in memory, written as the run's inspect.json for the report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .artifacts import (
    META_FILE,
    artifact_dir,
    check_compatible,
    load_prompt_init,
    read_meta,
    read_prompt_artifact,
)
from .backbones import Backbone
from .errors import ConfigError, ModelError
from .model_layout import INPUT_PROMPT_TYPES

if TYPE_CHECKING:
    from .methods.base import Predictor

PREFIX_NOTE = ("prefix tuning trains keys and values inside every attention layer, not input embeddings, so "
               "nearest vocabulary tokens are not defined; per-layer norms and movement instead")
NO_INIT = "init not recorded"


def _r(x: float) -> float:
    return round(float(x), 6)


def analyse(prompt: torch.Tensor, init: torch.Tensor | None, adapter: dict[str, Any], backbone: Backbone,
            top: int = 5, method: str = "") -> dict[str, Any]:
    """prompt / init: PEFT's saved `prompt_embeddings` ([n, H] input-level, [n, layers*2*dim] prefix)."""
    peft_type = str(adapter.get("peft_type", "")).rsplit(".", 1)[-1]
    n = int(adapter.get("num_virtual_tokens") or prompt.shape[0])
    rows = prompt[:n].detach().float()
    base = rows if init is None else init[:n].detach().float()
    if init is not None and base.shape != rows.shape:
        raise ModelError(f"the recorded init has shape {tuple(init.shape)} but the prompt {tuple(prompt.shape)}; "
                         "retrain or restore the artifact")
    out: dict[str, Any] = {"method": method, "peft_type": peft_type, "virtual_tokens": n,
                           "model": backbone.name, "init_recorded": init is not None}
    if peft_type in INPUT_PROMPT_TYPES:
        out.update(_input_level(rows, base if init is not None else None, backbone, top))
    elif peft_type == "PREFIX_TUNING":
        out.update(_prefix(rows, base if init is not None else None, adapter))
    else:
        raise ConfigError(f"{method or peft_type} is not a soft prompt; inspect reads prompt-tuning, hybrid, "
                          "p-tuning and prefix-tuning artifacts")
    return out


def _input_level(rows: torch.Tensor, init: torch.Tensor | None, backbone: Backbone, top: int) -> dict[str, Any]:
    words = backbone.model.get_input_embeddings().weight.detach().float()
    if rows.shape[1] != words.shape[1]:
        raise ModelError(f"the prompt's tokens are {rows.shape[1]} wide but '{backbone.name}' embeds words in "
                         f"{words.shape[1]}; pass the --model it was trained on")
    # Rows beyond the tokenizer are padding some models add to the matrix (T5): no token maps to them.
    vocab = words[: min(len(backbone.tokenizer), words.shape[0])]
    vnorm = vocab.norm(dim=-1)  # [V]
    cos = F.normalize(rows, dim=-1) @ F.normalize(vocab, dim=-1).T  # [n, V]
    best, ids = cos.topk(min(top, vocab.shape[0]), dim=-1)
    names = backbone.tokenizer.convert_ids_to_tokens(ids.flatten().tolist())
    tokens = []
    for i, row in enumerate(rows):
        norm = row.norm()
        entry: dict[str, Any] = {
            "index": i,
            "nearest": [{"token": names[i * ids.shape[1] + j], "id": int(ids[i, j]), "cosine": _r(best[i, j])}
                        for j in range(ids.shape[1])],
            "norm": _r(norm), "norm_percentile": _r(100.0 * (vnorm < norm).float().mean()),
        }
        if init is not None:
            entry["init_distance"] = _r((row - init[i]).norm())
            entry["init_cosine"] = _r(F.cosine_similarity(row, init[i], dim=0))
        tokens.append(entry)
    return {"kind": "input", "vocab": {"size": int(vocab.shape[0]), "norm_median": _r(vnorm.median()),
                                       "norm_mean": _r(vnorm.mean())}, "tokens": tokens}


def _prefix(rows: torch.Tensor, init: torch.Tensor | None, adapter: dict[str, Any]) -> dict[str, Any]:
    layers = int(adapter.get("num_layers") or 0)
    if not layers or rows.shape[1] % (2 * layers):
        raise ModelError(f"prefix of width {rows.shape[1]} does not split into {layers} layers of keys and values; "
                         "retrain or restore the artifact")
    # PEFT's layout (PeftModel.get_prompt): [n, layers * 2, heads, head_dim], key then value per layer.
    kv = rows.view(rows.shape[0], layers, 2, -1)
    base = init.view_as(kv) if init is not None else None
    out = []
    for layer in range(layers):
        entry: dict[str, Any] = {"layer": layer, "key_norm": _r(kv[:, layer, 0].norm(dim=-1).mean()),
                                 "value_norm": _r(kv[:, layer, 1].norm(dim=-1).mean())}
        if base is not None:
            now, then = kv[:, layer].flatten(), base[:, layer].flatten()
            entry["init_relative_distance"] = _r((now - then).norm() / then.norm().clamp(min=1e-12))
            entry["init_cosine"] = _r(F.cosine_similarity(now, then, dim=0))
        out.append(entry)
    return {"kind": "prefix", "note": PREFIX_NOTE, "layers": out}


# -- sources -----------------------------------------------------------------------------------------------
def analyse_predictor(predictor: Predictor, top: int = 5) -> dict[str, Any] | None:
    """A freshly trained soft prompt, from the model in memory (the run's inspect.json); None otherwise."""
    soft = predictor.soft_prompt()
    if soft is None:
        return None
    prompt, init, adapter = soft
    return analyse(prompt, init, adapter, predictor.backbone, top, predictor.method)


def artifact_of(path: str) -> Path:
    """artifacts.artifact_dir, for a path that must exist."""
    if not Path(path).exists():
        raise ConfigError(f"'{path}' does not exist; pass a run directory or its artifact directory")
    return artifact_dir(path)


def recorded_model(path: str) -> str | None:
    """The model a run or artifact says it was trained on: metrics.json's `model`, else promptlab.json's."""
    p = Path(path)
    for f, key in ((p / "metrics.json", ("model",)), (artifact_of(path) / META_FILE, ("backbone", "name"))):
        try:
            value: Any = json.loads(f.read_text())
            for k in key:
                value = value.get(k) if isinstance(value, dict) else None
        except (OSError, ValueError):
            continue
        if isinstance(value, str) and value:
            return value
    return None


def analyse_dir(path: str, backbone: Backbone, top: int = 5) -> dict[str, Any]:
    adir = artifact_of(path)
    meta = read_meta(adir)
    check_compatible(meta, backbone, None, f"artifact '{path}'")
    adapter, prompt = read_prompt_artifact(adir, meta, f"'{path}'", "a prompt-tuning, hybrid, p-tuning or "
                                           "prefix-tuning run (inspect reads soft prompts)")
    init = load_prompt_init(adir, f"'{path}'")  # optional: without it the table shows no movement
    return analyse(prompt, init, adapter, backbone, top, str(meta.get("method", "")))


# -- tables ----------------------------------------------------------------------------------------------
def table_rows(result: dict[str, Any], top: int | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-token (input) or per-layer (prefix) table, for the terminal and the report."""
    moved = result.get("init_recorded")
    if result["kind"] == "prefix":
        header = ["layer", "key norm", "value norm", "moved (rel. L2)", "cos to init"]
        body = [[str(e["layer"]), f"{e['key_norm']:.3f}", f"{e['value_norm']:.3f}",
                 f"{e['init_relative_distance']:.3f}" if moved else NO_INIT,
                 f"{e['init_cosine']:.3f}" if moved else NO_INIT] for e in result["layers"]]
        return header, body
    header = ["#", "nearest tokens (cosine)", "norm", "vocab pct", "moved (L2)", "cos to init"]
    body = []
    for e in result["tokens"]:
        near = ", ".join(f"{show_token(n['token'])} {n['cosine']:.2f}" for n in e["nearest"][:top])
        body.append([str(e["index"]), near, f"{e['norm']:.3f}", f"{e['norm_percentile']:.0f}",
                     f"{e['init_distance']:.3f}" if moved else NO_INIT,
                     f"{e['init_cosine']:.3f}" if moved else NO_INIT])
    return header, body


def show_token(token: str) -> str:
    """Byte-level vocabularies hold tabs, newlines and control bytes: quoted and escaped, a cell stays one line."""
    return token if token.isprintable() and token.strip() == token and token else repr(token)


def summary(result: dict[str, Any]) -> str:
    """One line under the table: what the numbers are measured against."""
    if result["kind"] == "prefix":
        return result["note"]
    v = result["vocab"]
    return (f"{result['virtual_tokens']} soft tokens of {result['method'] or result['peft_type']} against "
            f"{v['size']:,} vocabulary embeddings (norm median {v['norm_median']:.3f}, mean {v['norm_mean']:.3f})"
            + ("" if result["init_recorded"] else f"; {NO_INIT} (trained before promptlab saved it)"))
