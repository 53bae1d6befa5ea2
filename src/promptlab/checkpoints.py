"""Training checkpoints: what a killed run needs to continue exactly where it stopped.

A checkpoint is one directory, built under a temporary name and renamed into place, so any directory
named `step-*` is complete; the newest K are kept. It holds one safetensors file (trainable parameters,
the best-so-far parameters, optimizer tensors, RNG states) and one `state.json` (loop position, history,
best score, optimizer structure, Python/numpy RNG state). No pickle: a checkpoint can be inspected
with any safetensors or JSON reader and loading one never runs code.

Checkpoints live in a hidden working directory beside the run (`runs/.x.work` for `--out runs/x`);
the run directory itself still appears only when the run is complete (runs.write_run).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import replacing, temp_siblings
from .config import RunConfig
from .errors import ConfigError, DiskFullError, disk_full

FORMAT = 1
STATE_FILE = "state.json"
TENSOR_FILE = "tensors.safetensors"
CONFIG_FILE = "config.yaml"
PREFIX = "step-"

# Settings that define what is trained and on which examples: a checkpoint made under other values
# describes another run, so resuming across a change in these is refused outright.
IDENTITY_KEYS = ("task", "model", "method", "data", "seed", "max_input_tokens", "hard.template",
                 "train.train_size", "train.dev_size", "train.virtual_tokens", "train.init", "train.init_text",
                 "train.batch_size", "train.grad_accum", "train.lora_r", "train.lora_alpha", "train.lora_targets")
# Settings that only say how checkpoints are taken: never a reason to refuse a resume.
IGNORED_KEYS = ("train.checkpoint_every", "train.keep_checkpoints")


@dataclass
class CheckpointPlan:
    """Where one training loop checkpoints, and the run config recorded beside it for `--resume`."""

    dir: Path
    config_file: Path | None = None
    config_text: str | None = None


@dataclass
class Checkpoint:
    """One loaded checkpoint, fully read and checked before anything is applied to a model."""

    path: Path
    state: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.state["loop"]["steps"])


def work_dir(out: Path) -> Path:
    """The hidden sibling that holds a run's checkpoints until the run directory is written."""
    return out.parent / f".{out.name}.work"


def plan_for(out: Path, config: RunConfig, resume: bool, compare: bool = False) -> CheckpointPlan:
    """Checkpoints go to a hidden sibling of --out; a rerun with the same settings continues from them
    (`compare`: one folder per method, so the method is not a difference)."""
    work = work_dir(out)
    if check_resumable(work, config.to_dict(), explicit=resume, ignore=("method",) if compare else ()):
        clear_stale_staging(out)
    return CheckpointPlan(dir=work, config_file=work / CONFIG_FILE, config_text=config.to_yaml())


def discard(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def clear_stale_staging(out: Path) -> None:
    """Remove the staging directories (runs.write_run / runs.staged) a killed run left beside `out`.

    Called only when that run is being resumed: its process is gone, so nothing else owns them.
    """
    for stale in temp_siblings(out):
        shutil.rmtree(stale, ignore_errors=True)


def saved_config(work: Path) -> Path | None:
    f = work / CONFIG_FILE
    return f if f.is_file() and has_checkpoints(work) else None


def has_checkpoints(work: Path) -> bool:
    """Any complete checkpoint under `work` (a compare keeps one folder per method)."""
    return work.is_dir() and any(p.is_dir() for p in work.rglob(f"{PREFIX}*"))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_resumable(work: Path, config: dict[str, Any], explicit: bool, ignore: tuple[str, ...] = ()) -> bool:
    """Whether a run should continue from the checkpoints in `work`; raise when it must not guess.

    Same settings: resume (rerunning the same command continues). Changed identity settings: refuse,
    since the checkpoints belong to another run. Other changes (lr, epochs, patience, ...): resume
    only when asked with --resume, e.g. to continue with a lower lr after a non-finite loss.
    """
    saved = saved_config(work)
    if saved is None:
        if explicit:
            raise ConfigError(f"--resume: no checkpoint to resume in '{work}'; run the command without --resume")
        return False
    import yaml

    try:
        before = _flat(yaml.safe_load(saved.read_text()) or {})
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        raise ConfigError(f"'{saved}' is unreadable; delete '{work}' to start the run over") from None
    now = _flat(config)
    skip = set(IGNORED_KEYS) | set(ignore)
    changed = sorted((k for k in set(before) | set(now) if k not in skip and before.get(k) != now.get(k)),
                     key=lambda k: (k not in IDENTITY_KEYS, k))  # the decisive differences first
    if not changed:
        return True
    what = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
    identity = [k for k in changed if k in IDENTITY_KEYS]
    if identity:
        raise ConfigError(f"'{work}' holds checkpoints of a different run ({what}); rerun with the same "
                          f"settings to resume it, or delete '{work}' to start over")
    if not explicit:
        raise ConfigError(f"'{work}' holds checkpoints of this run made with other settings ({what}); pass "
                          f"--resume to continue with the new values, or delete '{work}' to start over")
    return True


# -- (de)serialising nested state: tensors to safetensors, the rest to JSON ---------------------------
def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().clone().contiguous()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # Pairs, not a JSON object: optimizer state is keyed by int parameter index.
        return {"__dict__": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {key}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"unexpected mapping {sorted(obj)} in checkpoint state")
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def capture_rng(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Every RNG the loop can touch: torch (dropout), CUDA, Python's random, numpy."""
    import numpy as np

    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    return {"python": _encode(random.getstate(), "rng.python", tensors),
            "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
            "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0}


def restore_rng(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    import numpy as np

    random.setstate(_decode(meta["python"], tensors))
    torch.set_rng_state(tensors["rng.torch"])
    if meta.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(meta["cuda"])])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))


# -- the store -----------------------------------------------------------------------------------------
class CheckpointStore:
    """Numbered checkpoint directories under `root`; only the writer process (rank 0) writes."""

    def __init__(self, plan: CheckpointPlan, keep: int, writer: bool = True) -> None:
        self.plan = plan
        self.root = plan.dir
        self.keep = max(1, keep)
        self.writer = writer
        self.last_step: int | None = None
        self._wrote_config = False

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first. Names sort in order: 'step-00000040' < 'step-00000040-epoch'."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    def save(self, name: str, state: dict[str, Any], trainable: dict[str, torch.Tensor],
             best: dict[str, torch.Tensor], optimizer: dict[str, Any]) -> Path | None:
        self.last_step = int(state["loop"]["steps"])
        if not self.writer:
            return None
        try:
            return self._save(name, state, trainable, best, optimizer)
        except BaseException as e:
            if not disk_full(e):
                raise
            # earlier checkpoints stay (a rerun resumes from them); a work dir with none would only be litter
            work = self.plan.config_file.parent if self.plan.config_file else self.root
            if not has_checkpoints(work):
                discard(work)
            if isinstance(e, DiskFullError):
                raise
            raise DiskFullError.writing(f"a checkpoint in '{work}'", e) from None

    def _save(self, name: str, state: dict[str, Any], trainable: dict[str, torch.Tensor],
              best: dict[str, torch.Tensor], optimizer: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_config()
        tensors: dict[str, torch.Tensor] = {}
        for k, v in trainable.items():
            tensors[f"trainable.{k}"] = v.detach().cpu().clone().contiguous()
        for k, v in best.items():
            tensors[f"best.{k}"] = v.detach().cpu().clone().contiguous()
        doc = {"format": FORMAT, **state, "optimizer": _encode(optimizer, "optim", tensors),
               "rng": capture_rng(tensors), "trainable": sorted(trainable), "best": sorted(best)}
        final = self.root / name
        with replacing(final, Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root)), f"checkpoint '{final}'") as tmp:
            save_file(tensors, str(tmp / TENSOR_FILE))
            # state.json last, then fsync and rename: a directory named step-* is always whole.
            with open(tmp / STATE_FILE, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
        for old in self.complete()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp-*"):  # left by a process killed while writing
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def _write_config(self) -> None:
        p = self.plan
        if self._wrote_config or p.config_file is None or p.config_text is None:
            return
        p.config_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.config_file.with_name(f".{p.config_file.name}.tmp")
        try:
            tmp.write_text(p.config_text)
            os.replace(tmp, p.config_file)
        finally:
            tmp.unlink(missing_ok=True)
        self._wrote_config = True

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads; an unreadable one (disk trouble) is skipped with a note."""
        for path in reversed(self.complete()):
            try:
                ck = load_checkpoint(path)
            except Exception as e:  # noqa: BLE001 -- safetensors/json raise many types for damaged files
                print(f"promptlab: note: skipping unreadable checkpoint '{path}' ({type(e).__name__})",
                      file=sys.stderr)
                continue
            self.last_step = ck.step
            return ck
        return None


def load_checkpoint(path: Path) -> Checkpoint:
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {state.get('format')} (this promptlab reads {FORMAT})")
    try:  # a hand-edited or damaged state.json is unreadable like a damaged tensor file: latest() skips it
        int(state["loop"]["steps"]), float(state["loop"]["seconds"]), list(state["history"])
        int(state["best_epoch"]), float(state["best_score"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{STATE_FILE} lacks or garbles {e}") from None
    tensors = load_file(str(path / TENSOR_FILE))
    trainable = {k: tensors[f"trainable.{k}"] for k in state["trainable"]}
    best = {k: tensors[f"best.{k}"] for k in state["best"]}
    optimizer = _decode(state["optimizer"], tensors)
    rng = {"meta": state["rng"], "tensors": tensors}
    return Checkpoint(path, state, trainable, best, optimizer, rng)
