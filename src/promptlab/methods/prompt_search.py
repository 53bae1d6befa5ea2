"""prompt-search: automatic prompt engineering by scoring candidate hard prompts on labelled data.

A candidate is (template, instruction phrasing or none, demo set or none). Each is evaluated by the
ordinary HardPredictor — the readout zero-shot and few-shot use — so the search adds no second way of
reading answers; the best-scoring candidate becomes the artifact, a plain hard prompt that
`eval --prompt` reloads without searching. Demo sets are chosen by the same score, as DSPy's
bootstrapped few-shot demos are.

Which labelled data scores the candidates (`--search-on`): by default the training examples — the data a
few-shot user really has. A candidate whose demos come from the training set is scored on the *other*
training examples, never on its own demonstrations. `--search-on dev` scores on the held-out dev slice.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backbones import Backbone
from ..errors import ConfigError
from ..inputs import fit_for
from ..tasks.base import Example, Task, Template
from .adapted import dev_score
from .base import CHAT_SETTINGS, FitContext, Method, Predictor
from .hard import HardPredictor, _load_hard, _new_tokens, fit_demos, render, select_demos
from .registry import register

if TYPE_CHECKING:
    from ..config import RunConfig

# Generic phrasings, combined with every template. `{choices}` expands to the label words, so those only
# apply to choice tasks. A task spec adds its own under `instructions:`.
GENERIC_INSTRUCTIONS = (
    "Classify the text.",
    "What is the sentiment?",
    "Choose the best answer: {choices}.",
    "Read the text carefully, then answer.",
    "Answer with one word.",
)
DEMO_SETS = 3  # seeded demo sets per search; each is one more option beside "no demos"
PROMPT_FILE = "prompt.json"


@dataclass(frozen=True)
class Candidate:
    template: Template  # the task template (or the bare input) the candidate starts from
    instruction: str | None
    demo_set: int | None  # index into the search's demo sets

    def text(self) -> str:
        return f"{self.instruction}\n{self.template.text}" if self.instruction else self.template.text

    def name(self) -> str:
        parts = [self.template.name]
        if self.instruction:
            parts.append("instruction")
        if self.demo_set is not None:
            parts.append(f"demos{self.demo_set}")
        return "+".join(parts)


def instructions_for(task: Task) -> list[str]:
    generic = [i for i in GENERIC_INSTRUCTIONS if task.kind == "choices" or "{choices}" not in i]
    return list(dict.fromkeys([*task.extras.get("instructions", []), *generic]))


def candidates(task: Task, first: Template, n_demo_sets: int, limit: int, seed: int) -> list[Candidate]:
    """The bare input and the task's templates first (no instruction, no demos), then a seeded sample of
    every template x instruction x demo-set combination, `limit` in all."""
    templates = list(dict.fromkeys([first, task.plain_template(), *task.templates]))
    head = [Candidate(t, None, None) for t in templates]
    rest = [Candidate(t, i, d) for t, i, d in itertools.product(
        templates, [None, *instructions_for(task)], [None, *range(n_demo_sets)]) if (i, d) != (None, None)]
    random.Random(f"promptlab-search:{seed}").shuffle(rest)
    return (head + rest)[:limit]


def score_candidate(predictor: HardPredictor, task: Task, examples: list[Example], batch_size: int) -> float:
    """Accuracy (choices) or token F1 (text) on `examples`: the dev score training selects with."""
    return dev_score(task, examples, predictor.predict(examples, batch_size))


def selection_key(task: Task, score: float, n: int) -> float:
    """What the search maximises: for accuracy, the Wilson 95% lower bound rather than the raw score.

    Candidates with demos are scored on fewer examples (their demos are left out), and at 16 training examples
    the best raw score among 30 noisy ones is mostly luck: on SST-2 with MiniLM a candidate scored on fewer
    examples won and lost on the full dev set (bench/prompt_search.md). The bound prefers the score backed by
    more examples; at equal n it orders candidates exactly as the score does. Token F1 (text tasks) is no
    proportion, so it is used as it is.
    """
    if task.kind != "choices" or n == 0:
        return score
    z = 1.96
    centre = score + z * z / (2 * n)
    spread = z * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def demo_sets(pool: list[Example], task: Task, cfg: Any, n: int) -> list[list[Example]]:
    """`n` seeded demo sets from `pool`, picked as few-shot picks them (k per class, balanced by default)."""
    hard = cfg.hard
    k, how = (max(hard.shots, 16), "balanced") if hard.selection == "nearest" else (hard.shots, hard.selection)
    sets = []
    for j in range(n):
        demos = select_demos(pool, task, k, how, cfg.seed * 1000 + j + 1)
        if demos and len(pool) - len(demos) >= 2 and {d.id for d in demos} not in [{d.id for d in s} for s in sets]:
            sets.append(demos)
    return sets


@dataclass
class SearchPredictor(HardPredictor):
    """The chosen hard prompt, plus the record of the search that chose it (metrics.json, not the artifact)."""

    record: list[dict[str, Any]] = field(default_factory=list)
    search_info: dict[str, Any] = field(default_factory=dict)
    instruction: str | None = None
    base_template: str = ""

    def run_info(self) -> dict[str, Any]:
        return {**self.info, **self.search_info, "candidates": self.record}

    def _save_files(self, out: Path) -> None:
        """The prompt in one readable file, to copy into any other tool (promptlab.json has it too)."""
        prompt = {"template": self.base_template, "instruction": self.instruction, "text": self.template.text,
                  "demos": [{"id": d.id, "text": render(self.task, self.template, d),
                             "answer": self.task.verbalizers[d.label] if self.task.kind == "choices" else d.answers[0]}
                            for d in self.demos],
                  "selection": self.selection if self.demos else None}
        (out / PROMPT_FILE).write_text(json.dumps(prompt, indent=2, ensure_ascii=False))


@register
class PromptSearch(Method):
    name, family = "prompt-search", "hard"
    kinds = ("encoder", "seq2seq", "causal", "api")
    uses_examples = True
    reads_chat = True
    summary = "best of templates x instructions x demo sets, scored on the labelled data (--candidates, --search-size)"

    def reads(self, cfg: RunConfig) -> set[str]:
        return {"template", "shots", "selection", "candidates", "search_size", "search_on"} | CHAT_SETTINGS

    def fit(self, ctx: FitContext) -> Predictor:
        self.check(ctx.backbone, ctx.task)
        cfg, task, hard = ctx.config, ctx.task, ctx.config.hard
        order = random.Random(f"promptlab-search-sample:{cfg.seed}")
        pool, what, other = ((ctx.train, "training examples", "dev") if hard.search_on == "train"
                             else (ctx.dev, "a dev slice", "train"))
        if not pool:
            raise ConfigError(f"prompt-search --search-on {hard.search_on} needs {what}, but task '{task.name}' has "
                              f"none here; use --search-on {other}")
        scoring, demo_pool = order.sample(pool, len(pool)), ctx.train
        sets = demo_sets(demo_pool, task, cfg, DEMO_SETS) if hard.shots and demo_pool else []
        cands = candidates(task, ctx.template, len(sets), hard.candidates, cfg.seed)
        new_tokens = _new_tokens(ctx)
        record: list[dict[str, Any]] = []
        best: tuple[float, int] | None = None
        preds: dict[int, HardPredictor] = {}
        with ctx.backbone.embedding_cache():  # candidates differing only in demos share an encoder's inputs
            for i, c in enumerate(cands):
                demos = sets[c.demo_set] if c.demo_set is not None else []
                ids = {d.id for d in demos}
                # Never score a candidate on its own demonstrations.
                examples = [ex for ex in scoring if ex.id not in ids][: hard.search_size]
                pred = preds[i] = self._predictor(ctx, Template(c.name(), c.text()), demos, new_tokens)
                examples, _ = fit_for(pred, cfg, examples)  # around the candidate's demonstrations too
                score = score_candidate(pred, task, examples, cfg.batch_size)
                key = selection_key(task, score, len(examples))
                record.append({"index": i, "name": c.name(), "template": c.template.name,
                               "instruction": c.instruction, "demo_set": c.demo_set,
                               "demo_ids": [d.id for d in demos], "text": c.text(), "n_scored": len(examples),
                               "score": round(score, 6), "selection_key": round(key, 6)})
                if best is None or key > best[0]:  # ties keep the earlier, simpler candidate
                    best = (key, i)
        assert best is not None, "the candidate list always holds the bare input"
        chosen, won = cands[best[1]], preds[best[1]]
        pred = SearchPredictor(self.name, ctx.backbone, task, won.template, demos=won.demos, selection=hard.selection,
                               shots=won.shots, max_new_tokens=new_tokens, info=won.info, record=record, chat=won.chat,
                               instruction=chosen.instruction, base_template=chosen.template.name,
                               scoring=cfg.scoring)
        pred.search_info = {"search_on": hard.search_on, "scoring_pool": len(scoring), "max_scored": hard.search_size,
                            "demo_sets": len(sets), "evaluated": len(cands), "chosen": best[1],
                            "chosen_name": chosen.name(), "chosen_score": record[best[1]]["score"],
                            "selected_by": "wilson_lower_95" if task.kind == "choices" else "score"}
        pred.extras["search"] = {k: pred.search_info[k] for k in ("search_on", "evaluated", "chosen_name",
                                                                  "chosen_score")}
        pred.extras["instruction"] = chosen.instruction
        return pred

    def _predictor(self, ctx: FitContext, tmpl: Template, demos: list[Example], new_tokens: int) -> HardPredictor:
        """A candidate: its demonstrations fitted to the input budget around its own template (few-shot's rule)."""
        hard, fmt = ctx.config.hard, self.chat_format(ctx)
        demos, shots, note = fit_demos(replace(ctx, template=tmpl), demos, hard.selection, hard.shots, fmt)
        return HardPredictor(self.name, ctx.backbone, ctx.task, tmpl, demos=demos, selection=hard.selection,
                             shots=shots, max_new_tokens=new_tokens, info=note, chat=fmt, scoring=ctx.config.scoring)

    def load(self, path: Path, backbone: Backbone, task: Task, meta: dict[str, Any]) -> Predictor:
        pred = _load_hard(self.name, backbone, task, meta)
        saved = meta.get("extras", {})
        pred.extras.update({k: saved[k] for k in ("search", "instruction") if k in saved})
        return pred


__all__ = ["PromptSearch", "SearchPredictor", "candidates", "instructions_for"]
