"""Hard prompts: zero-shot, few-shot and chain-of-thought. Nothing is trained; the prompt is the artifact."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..chat import ChatFormat, Conversation, chat_from_meta, render_chat, sends_messages
from ..errors import ConfigError
from ..inputs import count_tokens, input_budget
from ..tasks.base import Example, Task, Template
from .base import CHAT_SETTINGS, FitContext, Method, Prediction, Predictor
from .readout import Readout, label_anchors, predictions_from_scores
from .registry import register

if TYPE_CHECKING:
    from ..config import RunConfig

COT_TRIGGER = "Let's think step by step."
COT_ANSWER = "Therefore, the answer is"
COT_TOKENS = 64
COT_ASK = "Therefore, what is the answer?"  # a chat's next user turn, where an API cannot continue the assistant's


def render(task: Task, template: Template, ex: Example) -> str:
    return template.render(ex, task.verbalizers or None)


def answer_text(task: Task, ex: Example) -> str:
    return task.verbalizers[ex.label] if task.kind == "choices" else ex.answers[0]


def demo_text(task: Task, template: Template, d: Example) -> str:
    """One demonstration as the prompt shows it: the rendered input, its answer, a blank line."""
    return f"{render(task, template, d)} {answer_text(task, d)}\n\n"


def demo_turn(task: Task, template: Template, d: Example) -> tuple[str, str]:
    """One demonstration as a chat shows it: the rendered input as a user turn, its answer as the assistant's."""
    return render(task, template, d), answer_text(task, d)


def demo_costs(backbone: Backbone, task: Task, template: Template, demos: list[Example],
               fmt: ChatFormat | None) -> list[int]:
    """Tokens each demonstration adds to a prompt: its text, or in a chat its two turns with the template's
    headers and end-of-turn tokens (measured as what the turns add to a one-turn conversation)."""
    tok = backbone.tokenizer
    if fmt is None:
        return count_tokens(tok, [demo_text(task, template, d) for d in demos], False)
    chats = [render_chat(tok, fmt.messages(turns, "x"), fmt.kwargs)
             for turns in [[]] + [[demo_turn(task, template, d)] for d in demos]]
    n = count_tokens(tok, chats)
    return [k - n[0] for k in n[1:]]


def escape(text: str) -> str:
    """Literal text inside a template (a rendered demonstration may hold braces)."""
    return text.replace("{", "{{").replace("}", "}}")


def example_to_json(ex: Example) -> dict[str, Any]:
    return {"id": ex.id, "fields": ex.fields, "label": ex.label, "answers": list(ex.answers)}


def example_from_json(d: dict[str, Any]) -> Example:
    return Example(d["id"], d["fields"], d.get("label"), tuple(d.get("answers", ())))


def select_demos(examples: list[Example], task: Task, k: int, how: str, seed: int) -> list[Example]:
    """k per class (choice tasks, `balanced`) or k in total (`random`, text tasks), seeded."""
    rng = random.Random(seed)
    pool = list(examples)
    rng.shuffle(pool)
    if task.kind == "choices" and how in ("balanced", "nearest"):
        per: dict[int, list[Example]] = {}
        for ex in pool:
            per.setdefault(ex.label, []).append(ex)
        picked = [ex for c in range(len(task.labels)) for ex in per.get(c, [])[:k]]
        rng.shuffle(picked)
        return picked
    n = k * len(task.labels) if task.kind == "choices" else k
    return pool[:n]


def per_class(task: Task, how: str) -> bool:
    return task.kind == "choices" and how in ("balanced", "nearest")


def trim_demos(demos: list[Example], task: Task, k: int, how: str) -> list[Example]:
    """The first k demonstrations of each class (`balanced`) or k per class in total (`random`; k in total for
    text tasks), in their order: what select_demos would pick with a smaller k, from the same shuffle."""
    if not per_class(task, how):
        return demos[: k * len(task.labels) if task.kind == "choices" else k]
    seen: dict[int | None, int] = {}
    out = []
    for d in demos:
        if seen.get(d.label, 0) < k:
            out.append(d)
            seen[d.label] = seen.get(d.label, 0) + 1
    return out


def in_prompt(task: Task, k: int, how: str, pool: int) -> int:
    """How many demonstrations one prompt shows: all of them, or the k per class nearest to each input."""
    return min(k * max(1, len(task.labels)), pool) if how == "nearest" else pool


def fit_demos(ctx: FitContext, demos: list[Example], how: str, k: int,
              fmt: ChatFormat | None = None) -> tuple[list[Example], int, dict[str, Any]]:
    """Demonstrations that fit half the input budget, so that the example itself keeps the other half (a prompt
    longer than the model keeps loses its end: the example's question). A long context (HotpotQA) is selected for
    each demonstration to its share of that half, as the example's own is to the rest; where the demonstrations'
    fixed text (question, answer) alone does not fit, fewer of them: k per class lowered until they do (for
    nearest selection, the longest candidates are left out first). Returns (demos, k, a note for the run's
    method_info); refuses in one line when not one fits. `fmt`: a chat's demonstrations are turns, and the
    template's own tokens (system turn, headers) come off the budget before it is halved."""
    backbone, task = ctx.backbone, ctx.task
    if backbone.kind == "encoder" or not demos:  # an encoder never reads demonstrations in its input
        return demos, k, {}
    fixed = count_tokens(backbone.tokenizer, [render_chat(backbone.tokenizer, fmt.messages([], ""), fmt.kwargs)])[0] \
        if fmt is not None else 0
    half = max(1, input_budget(task, backbone, ctx.config, new_tokens=_new_tokens(ctx)) - fixed) // 2
    template = Template(ctx.template.name, ctx.template.text + " {_answer}\n\n")
    for shots in range(k, 0, -1):
        pool = demos if how == "nearest" else trim_demos(demos, task, shots, how)
        n = in_prompt(task, shots, how, len(pool))
        fitted, note = pool, {}
        if task.fit_context is not None:
            tagged = [d.with_fields(_answer=answer_text(task, d)) for d in pool]
            fitted, _ = task.fit_context(tagged, backbone.tokenizer, max(1, half // n), template)
            fitted = [Example(d.id, {f: v for f, v in d.fields.items() if f != "_answer"}, d.label, d.answers,
                              d.meta) for d in fitted]
            note = {"tokens_each": half // n}
        costs = demo_costs(backbone, task, ctx.template, fitted, fmt)
        order = sorted(range(len(fitted)), key=lambda i: costs[i])
        # the shortest m whose n longest fit: every prompt then fits, whichever n of them it shows
        m = max((m for m in range(n, len(order) + 1) if sum(costs[i] for i in order[m - n : m]) <= half), default=0)
        if m and (how == "nearest" or m == len(fitted)):
            if m < len(fitted):
                note["candidates"], note["candidates_asked"] = m, len(fitted)
                fitted = [fitted[i] for i in sorted(order[:m])]
            if shots < k:
                note["shots"], note["asked"] = shots, k
            return fitted, shots, {"demonstrations": {**note, "tokens_at_most": half}} if note else {}
    unit = "per class " if per_class(task, how) else ""
    room = f"the {2 * half} tokens the chat template leaves of the input budget" if fixed else \
        f"the {2 * half}-token input budget"
    raise ConfigError(f"few-shot: not even one demonstration {unit}fits half {room} (the shortest takes "
                      f"{min(costs)} tokens); raise --max-input-tokens, or use zero-shot")


@dataclass
class HardPredictor(Predictor):
    """Zero-shot and few-shot share this: a template, optional demonstrations, one readout."""

    demos: list[Example] = field(default_factory=list)
    selection: str = "balanced"
    shots: int = 0
    cot: bool = False
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        self.readout = Readout(self.backbone, self.task, max_new_tokens=self.max_new_tokens, scoring=self.scoring)
        self.extras = {"demos": [example_to_json(d) for d in self.demos], "selection": self.selection,
                       "shots": self.shots, "cot": self.cot, "max_new_tokens": self.max_new_tokens}
        if self.backbone.kind == "encoder" and self.demos and self.task.kind == "choices":
            self._prepare_encoder_demos()

    def _prepare_encoder_demos(self) -> None:
        """Prototypes: each class's description and demos averaged on the unit sphere (or kept for kNN)."""
        emb = F.normalize(self.backbone.embed([render(self.task, self.template, d) for d in self.demos]), dim=-1)
        labels = torch.tensor([d.label for d in self.demos])
        desc = label_anchors(self.backbone, self.task)
        if self.selection == "nearest":
            self.demo_emb, self.demo_labels = emb, labels
            return
        protos = [F.normalize(torch.cat([desc[c : c + 1], emb[labels == c]]).mean(0), dim=-1) for c in range(len(desc))]
        self.readout.anchors = torch.stack(protos)

    def input_template(self) -> Template:
        """The template with the demonstrations in front (for nearest selection, the longest k: each input
        gets its own k) and chain-of-thought's cues after, so a long context is fitted around all of it."""
        demos = self.demos if self.backbone.kind != "encoder" else []
        if demos and self.selection == "nearest":
            k = in_prompt(self.task, self.shots, "nearest", len(demos))
            costs = demo_costs(self.backbone, self.task, self.template, demos, self.chat)
            demos = [demos[i] for i in sorted(range(len(demos)), key=lambda i: costs[i])[len(demos) - k:]]
        if self.chat is not None:
            text = self.chat_template(self.template, [demo_turn(self.task, self.template, d) for d in demos]).text
        else:
            text = escape("".join(demo_text(self.task, self.template, d) for d in demos)) + self.template.text
        if self.cot:
            text += escape(f"{self.cot_break}{COT_TRIGGER} \n{COT_ANSWER}")
        return Template(self.template.name, text)

    @property
    def cot_break(self) -> str:
        """What comes between the input and chain-of-thought's trigger: a new line in raw text; nothing in a chat,
        whose generation prompt has opened the assistant's turn (the reasoning and the answer cue are its reply)."""
        return "" if self.chat is not None else "\n"

    def reserved_tokens(self) -> int:
        return COT_TOKENS if self.cot else 0

    def check_room(self, budget: int) -> None:
        empty = Example("room", {f: "" for f in self.task.input_fields})
        fixed = count_tokens(self.backbone.tokenizer, [render(self.task, self.input_template(), empty)])[0]
        if fixed >= budget:
            what = f"its template and {len(self.demos)} demonstrations" if self.demos else "its template"
            raise ConfigError(f"the prompt's fixed text ({what}) takes {fixed} tokens of the {budget}-token input "
                              "budget, leaving the input none; raise --max-input-tokens"
                              + (", or use fewer --shots" if self.demos else ""))

    def inputs(self, examples: list[Example]) -> list[str]:
        base = [render(self.task, self.template, ex) for ex in examples]
        if self.backbone.kind == "encoder":
            return base
        if not self.demos:
            demo_sets: list[list[Example]] = [[] for _ in base]
        elif self.selection == "nearest":
            demo_sets = self._nearest_demos(base)
        else:
            demo_sets = [self.demos] * len(base)
        if self.chat is not None:
            return [self.as_chat([demo_turn(self.task, self.template, d) for d in ds], b)
                    for ds, b in zip(demo_sets, base)]
        return ["".join(demo_text(self.task, self.template, d) for d in ds) + b for ds, b in zip(demo_sets, base)]

    def _nearest_demos(self, base: list[str]) -> list[list[Example]]:
        # The demos' embeddings once per predictor: evaluation predicts a batch at a time (evaluation.py).
        if getattr(self, "_demo_vectors", None) is None:
            rendered = [render(self.task, self.template, d) for d in self.demos]
            self._demo_vectors = F.normalize(self.backbone.embed(rendered), dim=-1)
        sims = F.normalize(self.backbone.embed(base), dim=-1) @ self._demo_vectors.T
        k = in_prompt(self.task, self.shots, "nearest", len(self.demos))
        # most similar last, nearest the question
        return [[self.demos[i] for i in row.topk(k).indices.flip(0).tolist()] for row in sims]

    def predict(self, examples: list[Example], batch_size: int = 32) -> list[Prediction]:
        inputs = self.inputs(examples)
        if self.cot:
            return self._predict_cot(inputs, batch_size)
        if self.backbone.kind == "encoder" and self.selection == "nearest" and self.demos:
            return self._predict_knn(inputs)
        return self.readout.predict(self.backbone.model, inputs, batch_size)

    def _predict_knn(self, inputs: list[str]) -> list[Prediction]:
        sims = F.normalize(self.backbone.embed(inputs), dim=-1) @ self.demo_emb.T  # [N, D]
        k = min(self.shots, len(self.demo_labels))
        top = sims.topk(k, dim=-1)
        votes = torch.zeros(len(inputs), len(self.task.labels))
        votes.scatter_add_(1, self.demo_labels[top.indices], top.values.exp())
        return predictions_from_scores(self.task, inputs, votes.log())

    def _predict_cot(self, inputs: list[str], batch_size: int) -> list[Prediction]:
        """Zero-shot CoT (Kojima et al.): generate reasoning, then read the answer after a fixed cue. A conversation
        sent as messages (an API's chat endpoint) cannot be continued inside the assistant's turn: the trigger ends
        the last user message, the reasoning is the assistant's reply, and the answer is read from the reply to
        one more user turn (COT_ASK)."""
        if inputs and isinstance(inputs[0], Conversation):
            chats = [c.ask(f"\n\n{COT_TRIGGER}") for c in inputs]  # type: ignore[attr-defined]
            reasons = self.backbone.generate(chats, COT_TOKENS, batch_size=batch_size)
            asked: list[str] = [c.reply(r, COT_ASK) for c, r in zip(chats, reasons)]
            return self.readout.predict(self.backbone.model, asked, batch_size)
        first = [f"{i}{self.cot_break}{COT_TRIGGER}" for i in inputs]
        reasons = self.backbone.generate(first, COT_TOKENS, batch_size=batch_size)
        second = [f"{f} {r}\n{COT_ANSWER}" for f, r in zip(first, reasons)]
        return self.readout.predict(self.backbone.model, second, batch_size)


@register
class ZeroShot(Method):
    name, family = "zero-shot", "hard"
    kinds = ("encoder", "seq2seq", "causal", "api")
    reads_chat = True
    summary = "instruction template; encoders compare the input with label descriptions"

    def fit(self, ctx: FitContext) -> Predictor:
        self.check(ctx.backbone, ctx.task)
        return HardPredictor(self.name, ctx.backbone, ctx.task, ctx.template, max_new_tokens=_new_tokens(ctx),
                             chat=self.chat_format(ctx), scoring=ctx.config.scoring)

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        return _load_hard(self.name, backbone, task, meta)


@register
class FewShot(Method):
    name, family = "few-shot", "hard"
    kinds = ("encoder", "seq2seq", "causal", "api")
    uses_examples = True
    reads_chat = True
    summary = "k demonstrations in context; encoders use them as class prototypes or neighbours"

    def reads(self, cfg: RunConfig) -> set[str]:
        return {"template", "shots", "selection"} | CHAT_SETTINGS

    def fit(self, ctx: FitContext) -> Predictor:
        self.check(ctx.backbone, ctx.task)
        hard = ctx.config.hard
        pool = ctx.train + ctx.dev
        if hard.selection == "nearest":
            demos = select_demos(pool, ctx.task, max(hard.shots, 16), "balanced", ctx.config.seed)
        else:
            demos = select_demos(pool, ctx.task, hard.shots, hard.selection, ctx.config.seed)
        fmt = self.chat_format(ctx)
        demos, shots, note = fit_demos(ctx, demos, hard.selection, hard.shots, fmt)
        return HardPredictor(self.name, ctx.backbone, ctx.task, ctx.template, demos=demos, selection=hard.selection,
                             shots=shots, max_new_tokens=_new_tokens(ctx), info=note, chat=fmt, scoring=ctx.config.scoring)

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        return _load_hard(self.name, backbone, task, meta)


@register
class ChainOfThought(Method):
    name, family = "cot", "hard"
    reads_chat = True
    summary = "'think step by step' template, then the answer read after a fixed cue"
    kinds = ("seq2seq", "causal", "api")

    def check(self, backbone: Backbone, task: Task) -> None:
        if backbone.kind == "encoder":
            raise ConfigError(
                f"method 'cot' needs a model that generates text, but '{backbone.name}' is an encoder "
                f"({backbone.family}) that can only compare choices; use zero-shot/few-shot, or a seq2seq or causal model"
            )

    def fit(self, ctx: FitContext) -> Predictor:
        self.check(ctx.backbone, ctx.task)
        return HardPredictor(self.name, ctx.backbone, ctx.task, ctx.template, cot=True,
                             max_new_tokens=_new_tokens(ctx), chat=self.chat_format(ctx), scoring=ctx.config.scoring)

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        self.check(backbone, task)
        return _load_hard(self.name, backbone, task, meta)


def _new_tokens(ctx: FitContext) -> int:
    return ctx.config.max_new_tokens or ctx.task.max_new_tokens


def _load_hard(name: str, backbone: Backbone, task: Task, meta: dict[str, Any]) -> HardPredictor:
    ex = meta.get("extras", {})
    t = meta["template"]
    chat = chat_from_meta(ex.get("chat"))
    if chat is not None and chat.as_messages != sends_messages(backbone.tokenizer):
        raise ConfigError("this hard prompt was made as chat messages for an API model's /v1/chat/completions; "
                          "evaluate it on an API model with --api-endpoint chat" if chat.as_messages else
                          "this hard prompt was rendered through a local chat template and --api-endpoint chat sends messages for the server's; drop --api-endpoint chat")
    return HardPredictor(name, backbone, task, Template(t["name"], t["text"]),
                         demos=[example_from_json(d) for d in ex.get("demos", [])],
                         selection=ex.get("selection", "balanced"), shots=ex.get("shots", 0),
                         cot=ex.get("cot", False), max_new_tokens=ex.get("max_new_tokens", task.max_new_tokens),
                         chat=chat)
