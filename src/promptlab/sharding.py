"""Training a soft prompt on a model bigger than one device: the frozen blocks sharded with FSDP, the prompt replicated.

Asked for by the launcher, as data parallelism is: `accelerate launch --config_file docs/accelerate_fsdp.yaml`
sets ACCELERATE_USE_FSDP=true (torchrun with that variable does the same). Each transformer block (the model's
_no_split_modules, as accelerate's transformer_based_wrap picks them) goes through torch's FSDP2 `fully_shard`:
every process keeps 1/N of each block's weights and gathers a block's weights only for its forward and backward.
What trains (the PEFT prompt, trained anchors) stays outside the sharded blocks, a full copy on every process, its
gradients averaged here as DDP would, so the saved prompt is whole and the same on every rank, and the rank-0-only
work after training (saving, inspecting the prompt against the vocabulary) never meets a sharded weight.

Why promptlab calls fully_shard itself rather than letting accelerator.prepare do it: accelerate 1.x turns FSDP on
only for GPU-type processes (AcceleratorState: MULTI_GPU/NPU/XPU/..., not MULTI_CPU; on CPU it quietly falls back
to DDP), so its own FSDP path cannot run on this project's CPU tests; torch's fully_shard runs on gloo, and it is
what accelerate's FSDP2 path calls on GPUs. One code path, tested on CPU, for both.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import ConfigError


def requested() -> bool:
    """The launcher asked for FSDP (accelerate launch with an FSDP config, or ACCELERATE_USE_FSDP=true)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def load_device(where: torch.device) -> torch.device:
    """Where load_backbone puts a model: on the CPU when FSDP will shard it over several GPU processes, so that no
    GPU ever holds the whole model; shard_frozen_blocks then moves each block's shard, and the rest, to `where`
    (recorded on the model as `promptlab_target_device`)."""
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return torch.device("cpu") if requested() and multi and where.type == "cuda" else where


def target_device(model: torch.nn.Module) -> torch.device:
    """The device the model is meant for: load_device's `where`, else where its parameters are."""
    target = getattr(model, "promptlab_target_device", None)
    return torch.device(target) if target else next(model.parameters()).device


def shard_frozen_blocks(model: torch.nn.Module, label: str) -> list[torch.nn.Module]:
    """fully_shard every frozen transformer block of `model` (bare or PEFT-wrapped) over all processes; return
    them. Blocks that hold the input embeddings (BERT lists BertEmbeddings among its blocks) stay whole: the
    embeddings are read outside a forward (initialising and inspecting prompts)."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    embeddings = base.get_input_embeddings()
    blocks = [m for m in base.modules()
              if type(m).__name__ in names and not any(x is embeddings for x in m.modules())]
    if not blocks:
        raise ConfigError(f"FSDP: {type(base).__name__} names no transformer blocks to shard (_no_split_modules); "
                          "train it without the FSDP config (plain accelerate launch: data-parallel)")
    inside = [n for b in blocks for n, p in b.named_parameters() if p.requires_grad]
    if inside:
        raise ConfigError(f"FSDP here shards frozen blocks only, but {label} trains weights inside them ({inside[0]}); "
                          "train it data-parallel (accelerate launch without the FSDP config) or pick a soft-prompt "
                          "method")
    target = target_device(model)
    for block in blocks:  # FSDP2 moves a CPU block to the mesh's device one block at a time, then shards it
        fully_shard(block)
    sharded = {id(t) for b in blocks for t in [*b.parameters(), *b.buffers()]}
    with torch.no_grad():  # the rest (embeddings, head, the prompt): whole on every process, in place for the optimizer
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in sharded and t.device != target:
                t.data = t.data.to(target)
    return blocks


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """What DDP does for the replicated trainable parameters: every process ends with the mean gradient."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if len(grads) != len(params):  # a parameter the loss did not reach still joins the sum, as zeros
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def describe(blocks: list[torch.nn.Module], world: int) -> dict[str, Any]:
    """What metrics.json records: the blocks' weight bytes in all, and what this process holds of them."""
    whole = held = 0
    for block in blocks:
        for p in block.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p  # a DTensor's shard on this process
            whole += p.numel() * p.element_size()
            held += local.numel() * local.element_size()
    return {"kind": "fsdp2", "sharded_blocks": len(blocks), "processes": world, "trainable": "replicated",
            "block_bytes": whole, "block_bytes_this_process": held}
