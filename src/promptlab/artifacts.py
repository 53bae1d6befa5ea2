"""The artifact format: what a run's `artifact/` directory holds and how every reader opens it.

`eval --prompt`, `serve`, `predict`, `inspect`, `transfer` and `--init prompt:DIR` all read artifacts; they
find them, check them against the backbone and task, and read PEFT's prompt rows through this module, so a
damaged or mismatched artifact fails the same one-line way wherever it is opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from .backbones import Backbone
from .errors import ConfigError, ModelError
from .scoring import SCORINGS
from .tasks.base import Task

META_FILE = "promptlab.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ANCHORS_FILE = "anchors.safetensors"
# A soft prompt's starting point, beside the artifact (not needed to use it: artifact_bytes leaves it out).
PROMPT_INIT_FILE = "prompt_init.safetensors"
INSPECT_FILE = "inspect.json"  # a trained soft run's `inspect_prompt.analyse`, beside its artifact
FIX = "retrain or restore the artifact"


def artifact_dir(path: str | Path) -> Path:
    """Accept a run directory or the artifact directory inside it."""
    p = Path(path)
    return p / "artifact" if (p / "artifact").is_dir() else p


# Diagnostics kept beside an artifact that using it never reads: not part of what a prompt costs to ship.
NOT_SHIPPED = (PROMPT_INIT_FILE,)


def artifact_bytes(path: Path) -> int:
    """What an artifact costs to ship: its files, less the diagnostics no reader needs. The one definition, so
    metrics.json's `artifact_bytes` and the server's `bytes` agree."""
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name not in NOT_SHIPPED)


def artifact_meta(path: str | Path) -> dict[str, Any]:
    """An artifact's promptlab.json, checked for what loading it needs: a damaged file fails in one line."""
    return read_meta(artifact_dir(path))


# What a run that made an artifact used and `eval --prompt` repeats unless told otherwise (RunConfig fields).
RUN_SETTINGS = ("model", "data", "max_input_tokens", "scoring", "split", "eval_size", "seed")
# Settings that pick the examples: repeated only on the artifact's own task (another task has other data).
DATA_SETTINGS = ("data", "split", "eval_size", "seed")


def run_record(cfg: Any) -> dict[str, Any]:
    """The settings of `cfg` (a RunConfig) that promptlab.json records under extras.run."""
    return {key: getattr(cfg, key) for key in RUN_SETTINGS}


def recorded_run(path: str | Path) -> dict[str, Any]:
    """The model, data, evaluation sample and input budget of the run that made the artifact at `path`: its
    promptlab.json's extras.run, else (artifacts made before it was recorded) the run directory's config.yaml, else
    the model the backbone fingerprint names. Only keys with a value of the right type are returned."""
    adir = artifact_dir(path)
    meta = read_meta(adir)
    found = (meta.get("extras") or {}).get("run")
    if not isinstance(found, dict) and adir.name == "artifact" and (adir.parent / "config.yaml").is_file():
        try:
            found = yaml.safe_load((adir.parent / "config.yaml").read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            found = None
    found = found if isinstance(found, dict) else {"model": (meta.get("backbone") or {}).get("name")}
    kinds = {"model": str, "data": str, "max_input_tokens": int, "scoring": str, "split": str, "eval_size": int,
             "seed": int}

    def usable(key: str, value: Any) -> bool:  # a hand-edited record is skipped, not trusted
        if value is None:
            return key not in ("model", "seed")
        return isinstance(value, kinds[key]) and not isinstance(value, bool) and (
            key != "scoring" or value in SCORINGS)

    # An artifact made before --scoring existed was trained and scored with EOS after the verbalizer.
    return {"scoring": "eos", **{k: found[k] for k in RUN_SETTINGS if k in found and usable(k, found[k])}}


# What loaders read from promptlab.json, and its JSON type: required keys, then optional ones (null allowed).
_META_REQUIRED = {"method": str, "task": str, "template": dict}
_META_OPTIONAL = {"backbone": dict, "labels": list, "extras": dict, "trainable_params": int, "task_spec": str}
_META_INTS = ("max_new_tokens", "virtual_tokens")  # extras that become tensor sizes


def read_meta(path: Path) -> dict[str, Any]:
    """An artifact's promptlab.json, checked key by key: a damaged file fails here in one line naming the key,
    not later as a KeyError or TypeError inside a loader."""
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ModelError(f"'{path}' is not a promptlab artifact (no {META_FILE}); pass the artifact directory of a run")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"'{meta_file}' is corrupted (not JSON); {FIX}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"'{meta_file}' lacks the method, task or template it must record (it holds a JSON "
                         f"{_json_type(meta)}, not an object); {FIX}")
    for key, kind in _META_REQUIRED.items():
        if key not in meta:
            raise ModelError(f"'{meta_file}' lacks the method, task or template it must record (no '{key}'); {FIX}")
        _check_type(meta_file, key, meta[key], kind)
    for key in ("name", "text"):
        _check_type(meta_file, f"template.{key}", meta["template"].get(key), str)
    for key, kind in _META_OPTIONAL.items():
        if meta.get(key) is not None:
            _check_type(meta_file, key, meta[key], kind)
    for key in _META_INTS:
        if (meta.get("extras") or {}).get(key) is not None:
            _check_type(meta_file, f"extras.{key}", meta["extras"][key], int)
    return meta


def _check_type(meta_file: Path, key: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelError(f"'{meta_file}' has a bad '{key}': {_json_type(kind())} expected, got "
                         f"{'nothing' if value is None else _json_type(value)}; {FIX}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_compatible(meta: dict[str, Any], backbone: Backbone, task: Task | None, where: str) -> None:
    """An artifact belongs to one model (its kind, sizes and architecture family) and, for choice tasks, to one
    label set: anything else would load and answer wrongly. `where` opens the message ("artifact 'runs/x'")."""
    theirs = meta.get("backbone") or {}
    backbone.check_fingerprint(theirs, where)
    mine = backbone.fingerprint()
    if theirs.get("model_type") and theirs["model_type"] != mine["model_type"]:
        raise ModelError(f"{where} was built for model '{theirs.get('name')}' (model_type={theirs['model_type']}) "
                         f"but '{backbone.name}' is model_type={mine['model_type']}; load it with the model it was "
                         "trained on")
    if task is not None and task.kind == "choices" and meta.get("labels") and meta["labels"] != task.labels:
        raise ConfigError(f"{where} predicts labels {meta['labels']} but task '{task.name}' has {task.labels}; use "
                          "it on the task it was trained for")


def read_adapter_config(adir: Path) -> dict[str, Any] | None:
    """PEFT's adapter_config.json (None when the artifact has none: hard prompts, heads, full fine-tuning)."""
    f = adir / ADAPTER_CONFIG
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"'{f}' is corrupted (not JSON); {FIX}") from None
    if not isinstance(data, dict):
        raise ModelError(f"'{f}' is not a JSON object; {FIX}")
    if not (adir / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"'{adir}' has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; promptlab serves safetensors only, "
                         "re-save the adapter with save_pretrained(safe_serialization=True)")
    return data


def read_prompt_rows(adir: Path, adapter: dict[str, Any]) -> torch.Tensor:
    """The `[n, W]` trained rows PEFT saved for a prompt-learning artifact, checked against its adapter config:
    the first `num_virtual_tokens` rows (seq2seq saves one set per transformer submodule; promptlab saves one)."""
    weights = adir / ADAPTER_WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            if "prompt_embeddings" not in f.keys():  # noqa: SIM118 — safe_open has no __contains__
                raise ModelError(f"'{weights}' holds no prompt_embeddings ({', '.join(f.keys())}); retrain or restore it")
            prompt = f.get_tensor("prompt_embeddings")
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 — safetensors raises several types for truncated or corrupt files
        raise ModelError(f"'{weights}' is corrupted ({type(e).__name__}); {FIX}") from None
    n = int(adapter.get("num_virtual_tokens") or 0)
    if prompt.ndim != 2 or n < 1 or prompt.shape[0] < n:
        raise ModelError(f"'{weights}' has prompt shape {tuple(prompt.shape)} but {ADAPTER_CONFIG} says "
                         f"{n} virtual tokens; {FIX}")
    return prompt[:n]


def read_prompt_artifact(adir: Path, meta: dict[str, Any], who: str, accepts: str) -> tuple[dict[str, Any], torch.Tensor]:
    """PEFT's config and saved prompt rows of the soft-prompt artifact in `adir` — read here for `inspect` and for
    `--init prompt:DIR` alike. `who` opens the error messages; `accepts` names the runs the caller takes."""
    cfg_file, weights = adir / ADAPTER_CONFIG, adir / ADAPTER_WEIGHTS
    not_soft = f"{who} holds a {meta.get('method', 'non-soft')} artifact, not a soft prompt; pass {accepts}"
    if not cfg_file.is_file() or not weights.is_file():
        raise ConfigError(not_soft)
    try:
        adapter = json.loads(cfg_file.read_text())
        prompt = load_file(str(weights))["prompt_embeddings"]
    except KeyError:  # a LoRA artifact: PEFT's files without prompt rows
        raise ConfigError(not_soft) from None
    except Exception as e:  # noqa: BLE001 — safetensors and json raise several types for truncated or corrupt files
        raise ModelError(f"{who}: cannot read the soft prompt in '{adir}' ({type(e).__name__}); retrain or restore "
                         "it") from None
    return adapter, prompt


def load_anchors(path: Path) -> torch.Tensor | None:
    f = path / ANCHORS_FILE
    if not f.is_file():
        return None
    try:
        return load_file(str(f))["anchors"]
    except Exception as e:  # noqa: BLE001 — safetensors raises several types for truncated/corrupt files
        raise ModelError(f"'{f}' is corrupted ({type(e).__name__}); {FIX}") from None


def load_prompt_init(adir: Path, who: str) -> torch.Tensor | None:
    """The soft prompt's starting point saved at train time, or None when the artifact predates it."""
    f = adir / PROMPT_INIT_FILE
    if not f.is_file():
        return None
    try:
        return load_file(str(f))["prompt_embeddings"]
    except Exception as e:  # noqa: BLE001 — as above
        raise ModelError(f"{who}: cannot read the prompt's starting point {f} ({type(e).__name__}); "
                         "delete it to inspect without movement, or retrain") from None
