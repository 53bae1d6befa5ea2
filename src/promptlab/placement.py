"""A model bigger than one device, for inference: its layers placed across GPUs, the CPU and disk.

`--device-map auto|balanced|balanced_low_0|sequential|FILE.json` with `--max-memory 0=20GiB,1=20GiB,cpu=60GiB` and
`--offload-dir DIR` hand transformers' from_pretrained its `device_map`, `max_memory` and `offload_folder`:
accelerate places whole blocks (the model's _no_split_modules) and moves activations between them with hooks.
Nothing is hand-written here beyond parsing the flags and reading the placement back, so the placement is exactly
accelerate's. Training a placed model is refused: the frozen weights of a big model train sharded with FSDP
(docs/accelerate_fsdp.yaml), not layer by layer.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICES = re.compile(r"^(cpu|disk|mps|\d+|cuda:\d+)$")
SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)?$", re.IGNORECASE)


def parse_max_memory(spec: str | None) -> dict[int | str, str] | None:
    """`0=20GiB,1=20GiB,cpu=60GiB` -> accelerate's {0: "20GiB", 1: "20GiB", "cpu": "60GiB"} (a GPU by its index)."""
    if not spec:
        return None
    out: dict[int | str, str] = {}
    for part in spec.split(","):
        key, sep, size = (s.strip() for s in part.partition("="))
        key = key.removeprefix("cuda:")
        if not sep or not DEVICES.match(key) or key == "disk" or not SIZE.match(size):
            raise ConfigError(f"--max-memory '{part.strip()}' is not DEVICE=SIZE; use e.g. 0=20GiB,1=20GiB,cpu=60GiB "
                              "(a GPU by its index, sizes in B, KiB, MiB, GiB or bytes)")
        out[int(key) if key.isdigit() else key] = size.replace(" ", "")
    return out


def read_device_map(spec: str) -> str | dict[str, int | str]:
    """A strategy name, or a JSON file {module name: device} (devices: a GPU index, "cuda:N", "cpu" or "disk")."""
    if spec in STRATEGIES:
        return spec
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"--device-map '{spec}' is neither a strategy ({', '.join(STRATEGIES)}) nor a JSON file; "
                          "use --device-map auto, or a file mapping module names to devices")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--device-map file '{spec}' is not JSON ({e}); write {{\"module.name\": \"cpu\", ...}}") from None
    bad = [k for k, v in data.items() if not DEVICES.match(str(v))] if isinstance(data, dict) else ["(not a mapping)"]
    if bad or not data:
        raise ConfigError(f"--device-map file '{spec}': {bad[0] if bad else 'empty'} has no device; map each module "
                          "name to a GPU index, \"cuda:N\", \"cpu\" or \"disk\"")
    return {k: int(v) if isinstance(v, int) or str(v).isdigit() else str(v) for k, v in data.items()}


def load_kwargs(device_map: str | None, max_memory: str | None, offload_dir: str | None) -> dict[str, Any]:
    """from_pretrained's placement arguments for these settings; {} when the model goes whole onto one device."""
    if device_map is None:
        if max_memory or offload_dir:
            flag = "--max-memory" if max_memory else "--offload-dir"
            raise ConfigError(f"{flag} sizes a placement across devices, but no --device-map is given; add "
                              "--device-map auto (or drop the flag)")
        return {}
    kw: dict[str, Any] = {"device_map": read_device_map(device_map)}
    memory = parse_max_memory(max_memory)
    if memory:
        kw["max_memory"] = memory
    if offload_dir:
        kw["offload_folder"] = str(Path(offload_dir).expanduser())
    elif _may_offload(kw["device_map"], memory):
        raise ConfigError("this placement may put layers on disk, which needs a folder for them; add --offload-dir "
                          "DIR (or give the GPUs and cpu enough --max-memory)")
    return kw


def _may_offload(device_map: str | dict[str, int | str], memory: dict[int | str, str] | None) -> bool:
    if isinstance(device_map, dict):
        return "disk" in device_map.values()
    return memory is not None  # a strategy under a memory cap spills what does not fit to disk


def execution_device(model: Any) -> torch.device | None:
    """Where a placed model takes its inputs, when its input embeddings sit on disk or in CPU offload (meta
    tensors): accelerate's main device, the first GPU of the map, else the CPU. None for an unplaced model."""
    placed = getattr(model, "hf_device_map", None)
    if not placed:
        return None
    gpus = [d for d in placed.values() if d not in ("cpu", "disk")]
    if not gpus:
        return torch.device("cpu")
    return torch.device(f"cuda:{gpus[0]}" if isinstance(gpus[0], int) else gpus[0])


def describe(model: Any) -> dict[str, Any] | None:
    """What metrics.json records of a placement: the map (module -> device) and how many modules and parameters
    each device holds. None for a model on one device."""
    placed = getattr(model, "hf_device_map", None)
    if not placed:
        return None
    params: Counter[str] = Counter()
    for name, p in model.named_parameters():
        params[str(_owner(placed, name))] += p.numel()
    return {"device_map": {k: str(v) for k, v in placed.items()},
            "modules": dict(Counter(str(v) for v in placed.values())), "params": dict(params)}


def _owner(placed: dict[str, Any], name: str) -> Any:
    """The device of the longest module prefix of parameter `name` in the map ("" is the whole model)."""
    owners = [m for m in placed if m == "" or name == m or name.startswith(m + ".")]
    return placed[max(owners, key=len)] if owners else "unplaced"


def load_prompt_adapter(model: Any, path: str) -> Any:
    """A saved prompt-learning adapter (prompt, prefix or p-tuning) on a placed model.

    PeftModel.from_pretrained strips accelerate's hooks from a model placed on the CPU or disk and dispatches it
    again from an offload index it rebuilds; with transformers 5's offload that index misses the weights
    (KeyError 'base_model.model.transformer.h.1.ln_1' on a GPT-2 split between cpu and disk, PEFT 0.21). A prompt
    adapter wraps the model without touching its layers, so the model keeps its placement and only the small prompt
    is built, beside the input embeddings' execution device, and loaded."""
    from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PeftConfig, PeftModel, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    config = PeftConfig.from_pretrained(path)
    if not config.is_prompt_learning:
        raise ConfigError(f"'{path}' holds a {config.peft_type} adapter; on a model placed with --device-map only "
                          "soft prompts load (drop --device-map for LoRA)")
    if config.peft_type == "PREFIX_TUNING" and execution_device(model) == torch.device("cpu"):
        # PEFT moves each layer's prefix to that layer's device by the first GPU in the map (utils/integrations.py,
        # get_layer_device_map): a map of only cpu and disk raises StopIteration there.
        raise ConfigError("a prefix-tuning prompt needs a GPU in the --device-map (PEFT 0.21 cannot place a prefix on "
                          "a model split only between cpu and disk); drop --device-map to run it on the CPU")
    config.inference_mode = True
    if hasattr(config, "prompt_tuning_init"):  # the saved rows replace the init: do not read offloaded embeddings
        config.prompt_tuning_init = "RANDOM"
    # the task type's class, as from_pretrained picks it: PeftModelForCausalLM's forward is what injects a prefix
    peft_model = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)(model, config)
    # PEFT copies the saved rows into the prompt encoder itself (its load_state_dict result lists them as unexpected)
    set_peft_model_state_dict(peft_model, load_peft_weights(path, device="cpu"))
    return peft_model.eval()
