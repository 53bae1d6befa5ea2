"""What of HotpotQA's gold reached the model: the question, the answer and the supporting sentences, measured on
the exact text the model read (a run's input_stats). The task's `measure_inputs` hook (spec `context: hotpotqa`)."""

from __future__ import annotations

from typing import Any

from ..metrics import normalize_answer
from .base import Example


def measure_inputs(examples: list[Example], inputs: list[str]) -> dict[str, Any]:
    """How often the gold answer / a supporting sentence is in the text the model read (`inputs`, one per
    example: the part a model kept, for the run's input_stats). The question is in it when it appears verbatim.

    The only place gold fields are read, and only to measure: an answer counts as kept when its
    normalised form appears as whole words in the normalised input (yes/no always count), a supporting
    sentence when it appears verbatim. With demonstrations in the input, only the text after the last
    occurrence of the example's question is searched, so a demonstration's passages never count.
    """
    answer = support = all_support = question = 0
    for e, text in zip(examples, inputs):
        q = e.fields.get("question", "")
        at = text.rfind(q) if q else -1
        question += at >= 0
        own = text[at:] if at >= 0 else text
        norm = " " + normalize_answer(own) + " "
        golds = [normalize_answer(a) for a in e.answers]
        answer += any(g in ("yes", "no") or (g and f" {g} " in norm) for g in golds)
        paras = dict(e.meta.get("paragraphs", []))
        facts = [
            paras[t][k].strip() for t, k in e.meta.get("supporting_facts", []) if k < len(paras.get(t, []))
        ]
        hits = [f in own for f in facts if f]
        support += any(hits)
        all_support += bool(hits) and all(hits)
    n = len(examples)
    return {
        "question_survival": question / n if n else 0.0,
        "answer_survival": answer / n if n else 0.0,
        "support_survival": support / n if n else 0.0,
        "all_support_survival": all_support / n if n else 0.0,
    }
