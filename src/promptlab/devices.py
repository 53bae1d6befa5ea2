"""One device policy: where the frozen model lives, in which dtype, and what a run records about it.

`--device auto` is CUDA when torch sees a GPU, else the CPU; `cpu`, `cuda` and `cuda:N` name one. Every tensor a
batch is made of is created where the model lives (Backbone.device). `--dtype auto` keeps the frozen weights in
bf16 on CUDA (half the memory, the tensor cores' format) and in float32 on the CPU; whatever trains (soft prompts,
LoRA, anchors) and the optimizer's state stay float32, and full fine-tuning trains a float32 copy.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .config import DEVICE_RE
from .errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16")


def resolve_device(spec: str | None) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> a torch device that exists here (one line when it does not)."""
    spec = spec or "auto"
    if not DEVICE_RE.match(spec):
        raise ConfigError(f"--device '{spec}' is not a device; use auto, cpu, cuda or cuda:N")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(f"--device {spec} asks for a GPU, but this machine has none ({why}); use --device cpu "
                          "(or auto, which picks CUDA when there is one)")
    # Under accelerate launch / torchrun each process takes the GPU of its local rank, not all of them cuda:0.
    local = os.environ.get("LOCAL_RANK")
    device = torch.device(f"cuda:{local}" if spec in ("auto", "cuda") and local is not None else spec)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {spec}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; pick one "
                          "of them (under a launcher, one process per GPU)")
    return device


def resolve_dtype(spec: str | None, device: torch.device) -> torch.dtype:
    """The frozen weights' dtype: `auto` is bf16 on CUDA, float32 elsewhere."""
    spec = spec or "auto"
    if spec not in DTYPES:
        raise ConfigError(f"--dtype '{spec}' is not supported; use {', '.join(DTYPES)}")
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def describe(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What metrics.json records: the device, its name, the frozen weights' dtype and, on a GPU, the peak memory
    the run allocated there (since reset_peak)."""
    out: dict[str, Any] = {"device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    if device.type == "cuda":
        out["name"] = torch.cuda.get_device_name(device)
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        out["name"] = "cpu"
    return out
