"""Training a soft prompt on a model bigger than one device: the frozen blocks sharded with FSDP, the prompt replicated.

Asked for by the launcher, as data parallelism is: `accelerate launch --config_file docs/accelerate_fsdp.yaml`
sets ACCELERATE_USE_FSDP=true (torchrun with that variable does the same). When load_backbone places the model,
each transformer block (the model's _no_split_modules, as accelerate's transformer_based_wrap picks them) goes
through torch's FSDP2 `fully_shard`:
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


def place(model: torch.nn.Module, where: torch.device) -> torch.nn.Module:
    """load_backbone's last step: the model onto `where`, or, when the launcher asked for FSDP over several
    processes, its frozen blocks sharded onto `where` straight from the CPU (no device ever holds the whole model)
    and the rest moved there. Sharded at load, not at training: every method of a run (hard ones in a compare,
    the evaluations) then runs on the same sharded model, every process in step."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not (requested() and world > 1):
        return model.to(where)
    from accelerate import PartialState
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    PartialState(cpu=where.type == "cpu")  # the launcher's process group (gloo on CPUs), as the Accelerator's
    if where.type == "cuda":
        torch.cuda.set_device(where)
    mesh = init_device_mesh(where.type, (world,))
    blocks = frozen_blocks(model)
    for block in blocks:  # fully_shard moves a CPU block to the mesh's device, then keeps this process's shard
        # reshard_after_forward given, not left to FSDP2's default: each block is its own root here (the model
        # around them is not sharded), and a root left to the default keeps its weights gathered after a forward.
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
        # FSDP2 allocates a block's gathered weights at its first gather and reuses them; a first gather under
        # torch.inference_mode (promptlab scores and embeds in it) would make them inference tensors, which
        # training's backward then refuses. Gather once here, outside it.
        block.unshard()
        block.reshard()
    sharded = {id(t) for b in blocks for t in [*b.parameters(), *b.buffers()]}
    return model.to(where) if not sharded else _move_rest(model, sharded, where)


def _move_rest(model: torch.nn.Module, sharded: set[int], where: torch.device) -> torch.nn.Module:
    with torch.no_grad():  # embeddings, head, norms: whole on every process
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in sharded and t.device != where:
                t.data = t.data.to(where)
    return model


def frozen_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks FSDP shards: the model's _no_split_modules (what accelerate's transformer_based_wrap
    picks), except one holding the input embeddings (BERT lists BertEmbeddings): those are read outside a forward
    (initialising and inspecting prompts) and stay whole."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    embeddings = model.get_input_embeddings()
    blocks = [m for m in model.modules() if type(m).__name__ in names and not any(x is embeddings for x in m.modules())]
    if not blocks:
        raise ConfigError(f"FSDP: {type(model).__name__} names no transformer blocks to shard (_no_split_modules); "
                          "run it without the FSDP config (plain accelerate launch: data-parallel)")
    return blocks


def sharded_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def check_trainable(blocks: list[torch.nn.Module], label: str) -> None:
    """What trains must sit outside the sharded blocks (it is replicated, its gradients averaged here)."""
    inside = [n for b in blocks for n, p in b.named_parameters() if p.requires_grad]
    if inside:
        raise ConfigError(f"FSDP here shards frozen blocks only, but {label} trains weights inside them ({inside[0]}); "
                          "train it data-parallel (accelerate launch without the FSDP config) or pick a soft-prompt "
                          "method")


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
