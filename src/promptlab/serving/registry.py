"""What the server serves: named prompts on one frozen backbone, loaded from safetensors and JSON only.

A *servable* is one named prompt: a task, a template, and either
- an input-level soft prompt — a `[n, H]` tensor of virtual-token embeddings (prompt tuning, hybrid,
  P-tuning: PEFT saves P-tuning's final embeddings too) — which the engine stacks with other prompts
  into one batch, one prompt per row; batchable hard prompts (zero-shot, few-shot) are the same thing
  with n = 0;
- or a predictor that must run on its own (prefix tuning and LoRA change the model's inside, chain of
  thought needs two passes, encoder kNN votes over demonstrations): grouped per prompt.

Soft prompts are read straight from `adapter_model.safetensors`; no PeftModel is built, so an extra
prompt costs its tensor and its label anchors, nothing else.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import (
    artifact_bytes,
    artifact_dir,
    check_compatible,
    load_anchors,
    read_adapter_config,
    read_meta,
    read_prompt_rows,
    recorded_run,
)
from ..backbones import Backbone
from ..chat import ChatFormat, around, chat_from_meta, render_chat
from ..config import RunConfig
from ..errors import ConfigError, ModelError, unknown
from ..inputs import fit_for, fit_inputs
from ..methods import FitContext, Predictor, get_method, method_names
from ..methods.hard import HardPredictor
from ..methods.readout import label_anchors
from ..model_layout import INPUT_PROMPT_TYPES
from ..splits import resolve
from ..tasks import artifact_task, get_task
from ..tasks.base import Example, Task, Template

# Weight formats that unpickle on load: a served directory holding any of them is refused outright.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Servable:
    """One named prompt the server answers for."""

    name: str
    task: Task
    method: str
    family: str
    template: Template
    source: str
    config: RunConfig
    prompt: torch.Tensor | None = None  # [n, H] virtual-token embeddings; [0, H] for batchable hard prompts
    anchors: torch.Tensor | None = None  # [C, H] unit-norm label anchors (encoder, choice tasks)
    predictor: Predictor | None = None  # hard prompts render through it; non-batchable prompts predict with it
    max_new_tokens: int = 16
    artifact_bytes: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer [heads, n, d] keys/values (causal)
    chat: ChatFormat | None = None  # a soft prompt's input is a chat template's user turn, as it was trained on
    scoring: str = "lmeval"  # how its choices are scored (scoring.py): as the prompt was made

    @property
    def batchable(self) -> bool:
        return self.prompt is not None

    @property
    def virtual_tokens(self) -> int:
        return int(self.prompt.shape[0]) if self.prompt is not None else int(self.extras.get("virtual_tokens", 0))

    def prepare(self, backbone: Backbone, examples: list[Example]) -> list[Example]:
        """Long-context tasks choose what fits the budget, as `eval` does. The hook selects among raw paragraphs
        (Example.meta): a loader's, or a request's or JSONL line's HotpotQA context given as the official list
        (Task.read_input); a context given as text carries none and is taken as given (and truncated to the
        model's length like any input)."""
        if not any(ex.meta for ex in examples):
            return examples
        if self.predictor is not None:  # around everything it reads: a few-shot prompt's demonstrations too
            return fit_for(self.predictor, self.config, examples)[0]
        template = self.template if self.chat is None else \
            Template(self.template.name, around(backbone.tokenizer, self.chat, [], self.template.text))
        return fit_inputs(self.task, backbone, template, self.config, examples, virtual=self.virtual_tokens,
                          new_tokens=self.max_new_tokens)[0]

    def render(self, examples: list[Example], backbone: Backbone | None = None) -> list[str]:
        """The exact text the model reads for each example (`backbone`: whose chat template renders it)."""
        if self.predictor is not None:
            return self.predictor.inputs(examples)
        texts = [self.template.render(ex, self.task.verbalizers or None) for ex in examples]
        if self.chat is None:
            return texts
        assert backbone is not None, "a chat-rendered prompt needs the backbone's tokenizer"
        return [render_chat(backbone.tokenizer, self.chat.messages([], t), self.chat.kwargs) for t in texts]

    def resident_bytes(self) -> int:
        """Memory this prompt holds beyond the shared backbone (tensors only; see bench/serving.py): its prompt rows,
        anchors and KV cache, or what a predictor that runs alone adds (a prefix, LoRA weights, a model copy)."""
        n = sum(t.numel() * t.element_size() for t in (self.prompt, self.anchors) if t is not None)
        n += sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv or [])
        if self.predictor is not None and not self.batchable:
            n += own_tensor_bytes(self.predictor, self.predictor.backbone.model)
        return int(n)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "task": self.task.name, "kind": self.task.kind, "method": self.method,
            "family": self.family, "virtual_tokens": self.virtual_tokens, "bytes": self.artifact_bytes,
            "resident_bytes": self.resident_bytes(), "batched": self.batchable, "kv_cache": self.kv is not None,
            "fields": list(self.task.input_fields), "labels": list(self.task.labels) if self.task.kind == "choices" else None,
            "source": self.source,
        }


def own_tensor_bytes(obj: Any, shared: torch.nn.Module) -> int:
    """Bytes of the tensors reachable from `obj` (its attributes, modules, lists and dicts) whose storage is not
    one of `shared`'s: a PeftModel over the backbone counts its prefix or adapter weights, not the backbone."""
    seen = {t.untyped_storage().data_ptr() for t in (*shared.parameters(), *shared.buffers())}
    visited: set[int] = set()
    total = 0

    def walk(x: Any, depth: int) -> None:
        nonlocal total
        if id(x) in visited or depth > 6 or isinstance(x, (Backbone, Task, str, bytes, int, float)):
            return
        visited.add(id(x))
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            if x.device.type != "meta" and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(x, torch.nn.Module):
            for t in (*x.parameters(), *x.buffers()):
                walk(t, depth + 1)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v, depth + 1)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v, depth + 1)
        elif hasattr(x, "__dict__"):
            for v in vars(x).values():
                walk(v, depth + 1)

    walk(obj, 0)
    return total


# -- specs -----------------------------------------------------------------------------------------------
def parse_prompt_arg(arg: str) -> tuple[str, str]:
    """`NAME=DIR` or `NAME=METHOD:TASK[:TEMPLATE]` -> (name, value)."""
    name, sep, value = arg.partition("=")
    if not sep or not value:
        raise ConfigError(f"--prompt '{arg}' needs NAME=DIR or NAME=METHOD:TASK, e.g. --prompt sst2=runs/sst2-pt "
                          "or --prompt zs=zero-shot:sentiment")
    check_name(name)
    return name, value


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(f"prompt name '{name}' is not allowed; use 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")


def load_servable(name: str, value: str, backbone: Backbone, config: RunConfig | None = None,
                  task: Task | None = None, data: dict[str, str] | None = None) -> Servable:
    """A saved artifact (or run) directory, or a hard prompt named `METHOD:TASK[:TEMPLATE]`. `data`: serve's
    `--data TASK=PATH`, where a prompt's task reads its examples or label names (config.data, predict's --data,
    comes first)."""
    config = copy.deepcopy(config) if config is not None else RunConfig()  # a template choice stays per prompt
    data = data or {}
    if is_hard_spec(value):
        method, _, rest = value.partition(":")
        task_name, _, template = rest.partition(":")
        if not task_name:
            raise ConfigError(f"prompt '{name}': '{value}' names no task; write METHOD:TASK, e.g. zero-shot:sentiment")
        task = task or get_task(task_name)
        config.data = config.data or data.get(task.name) or data.get(task_name)
        return hard_servable(name, method, task, backbone, config, template or None)
    method, sep, _ = value.partition(":")
    if sep and "/" not in method and not Path(value).expanduser().exists():  # METHOD:TASK with a typo, not a path
        raise ConfigError(f"prompt '{name}': {unknown('method', method, method_names())}")
    return _load_artifact(name, value, backbone, config, task, data)


def is_hard_spec(value: str) -> bool:
    """`zero-shot:sentiment` names a hard prompt; anything else is a path (an existing path always wins)."""
    method, sep, _ = value.partition(":")
    return bool(sep) and method in method_names() and not Path(value).expanduser().exists()


def hard_servable(name: str, method_name: str, task: Task, backbone: Backbone, config: RunConfig,
                  template: str | None = None) -> Servable:
    """A hard prompt built from the task's spec: nothing to load, the method fits in place."""
    method = get_method(method_name)
    if method.trains:
        raise ConfigError(f"prompt '{name}': '{method_name}' must be trained first (promptlab train --method "
                          f"{method_name} --out DIR); serve the run directory, or a hard method (zero-shot, few-shot, cot)")
    method.check(backbone, task)
    if template is not None:
        config.hard.template = template
    tmpl = method.template_for(task, config, backbone.kind)
    train: list[Example] = []
    dev: list[Example] = []
    if method.uses_examples or (_needs_labels(task) and config.data):  # read as `eval` reads them: the same demos,
        splits = task.splits(config.data)  # the same search; a `labels_from: data` task takes its label names there
        if method.uses_examples:
            d = resolve(task, splits, config)
            train, dev = d.train, d.dev
    predictor = method.fit(FitContext(backbone, task, train, dev, config, tmpl))
    return _from_predictor(name, f"{method_name}:{task.name}", predictor, backbone, config, 0)


def _from_predictor(name: str, source: str, predictor: Predictor, backbone: Backbone, config: RunConfig,
                    nbytes: int) -> Servable:
    family = get_method(predictor.method).family
    s = Servable(name, predictor.task, predictor.method, family, predictor.template, source, config,
                 predictor=predictor, artifact_bytes=nbytes, extras=dict(predictor.extras),
                 max_new_tokens=int(predictor.max_new_tokens), scoring=predictor.scoring)
    if isinstance(predictor, HardPredictor) and not predictor.cot and not (
        backbone.kind == "encoder" and predictor.selection == "nearest" and predictor.demos
    ):
        # Zero virtual tokens: the text is the whole prompt, so it rides in the mixed batch.
        s.prompt = torch.zeros(0, backbone.hidden_size, device=backbone.device, dtype=backbone.dtype)
        s.anchors = predictor.readout.anchors
    return s


def _needs_labels(task: Task) -> bool:
    return task.kind == "choices" and not task.labels


def _load_artifact(name: str, value: str, backbone: Backbone, config: RunConfig, task: Task | None,
                   data: dict[str, str]) -> Servable:
    adir = artifact_dir(value)
    meta = read_meta(adir)
    refuse_pickles(adir)
    run = recorded_run(value)
    if config.max_input_tokens is None:  # the budget its run selected long contexts to (serve sets none)
        config.max_input_tokens = run.get("max_input_tokens")
    task = artifact_task(meta, task)
    config.data = config.data or data.get(task.name)
    if _needs_labels(task) and config.data:  # an artifact that does not record them: the data's label file names them
        task.splits(config.data)
    check_compatible(meta, backbone, task, f"artifact '{value}'")
    nbytes = artifact_bytes(adir)
    adapter = read_adapter_config(adir)
    if adapter is not None and adapter.get("peft_type") in INPUT_PROMPT_TYPES:
        return _soft_servable(name, value, adir, adapter, meta, backbone, config, task, nbytes, run["scoring"])
    predictor = get_method(meta["method"]).load(adir, backbone, task, meta)
    predictor.use_scoring(run["scoring"])
    return _from_predictor(name, value, predictor, backbone, config, nbytes)


def _soft_servable(name: str, value: str, adir: Path, adapter: dict[str, Any], meta: dict[str, Any],
                   backbone: Backbone, config: RunConfig, task: Task, nbytes: int, scoring: str) -> Servable:
    prompt = read_prompt_rows(adir, adapter)
    if prompt.shape[1] != backbone.hidden_size:
        raise ModelError(f"artifact '{value}' has {prompt.shape[1]}-wide soft tokens but '{backbone.name}' has hidden "
                         f"size {backbone.hidden_size}; serve it with the model it was trained on")
    prompt = prompt.to(device=backbone.device, dtype=backbone.dtype).contiguous()
    t = meta.get("template") or {}
    extras = meta.get("extras", {})
    anchors = None
    if backbone.kind == "encoder" and task.kind == "choices":
        anchors = load_anchors(adir)
        anchors = anchors if anchors is not None else label_anchors(backbone, task)
        if anchors.shape != (len(task.labels), backbone.hidden_size):
            raise ModelError(f"'{adir}' has anchors of shape {tuple(anchors.shape)}; retrain or restore the artifact")
    family = get_method(meta["method"]).family
    return Servable(name, task, meta["method"], family, Template(t.get("name", "plain"), t.get("text", "")), value,
                    config, prompt=prompt, anchors=anchors, artifact_bytes=nbytes, extras=dict(extras),
                    max_new_tokens=int(extras.get("max_new_tokens", task.max_new_tokens)),
                    chat=chat_from_meta(extras.get("chat")), scoring=scoring)


def refuse_pickles(adir: Path) -> None:
    """Served artifacts load from safetensors and JSON only: a pickle can run code when it is read."""
    bad = sorted(str(p.relative_to(adir)) for p in adir.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise ModelError(f"artifact '{adir}' contains pickle-format files ({', '.join(bad[:3])}); the server loads "
                         "safetensors and JSON only — re-save the weights as .safetensors and remove them")

