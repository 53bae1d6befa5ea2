"""Metrics: accuracy, macro-F1, and the official HotpotQA/SQuAD answer EM and F1.

EM/F1 follow the official HotpotQA evaluation script (hotpot_evaluate_v1.py) exactly, so numbers are
comparable with published ones. Everything here is pure Python/numpy so evaluation never waits on it.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# The official script zeroes F1 when either side is one of these and they differ: a partial token
# overlap with "yes"/"no" would otherwise reward a wrong polarity answer.
_SPECIAL = ("yes", "no", "noanswer")


def accuracy(preds: Sequence[int], golds: Sequence[int]) -> float:
    _same_length(preds, golds)
    return sum(int(p == g) for p, g in zip(preds, golds)) / len(golds) if golds else 0.0


def macro_f1(preds: Sequence[int], golds: Sequence[int], n_labels: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in golds or preds.

    A class absent from both has an undefined F1 (0/0); counting it as 0 would penalise a perfect
    classifier on a split that lacks the class, so it is left out (scikit-learn's default class set).
    `n_labels` only validates that every label is in range.
    """
    _same_length(preds, golds)
    if not golds:
        return 0.0
    if n_labels is not None:
        bad = [x for x in (*preds, *golds) if not 0 <= x < n_labels]
        if bad:
            raise ValueError(f"label {bad[0]} is outside 0..{n_labels - 1}")
    classes = sorted(set(preds) | set(golds))
    scores = []
    for c in classes:
        tp = sum(1 for p, g in zip(preds, golds) if p == c and g == c)
        fp = sum(1 for p, g in zip(preds, golds) if p == c and g != c)
        fn = sum(1 for p, g in zip(preds, golds) if p != c and g == c)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / len(scores))


def normalize_answer(s: str) -> str:
    """Official HotpotQA/SQuAD normalisation: lower, drop punctuation, drop articles, squash spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold (max over golds)."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in golds))


def f1(pred: str, golds: Sequence[str]) -> float:
    """Official HotpotQA token F1, max over golds."""
    return max((_f1_one(pred, g) for g in golds), default=0.0)


def _f1_one(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred), normalize_answer(gold)
    if (p in _SPECIAL or g in _SPECIAL) and p != g:
        return 0.0
    p_toks, g_toks = p.split(), g.split()
    same = sum((Counter(p_toks) & Counter(g_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p_toks), same / len(g_toks)
    return 2 * precision * recall / (precision + recall)


def _as_golds(gold: str | Sequence[str]) -> Sequence[str]:
    return [gold] if isinstance(gold, str) else gold


# Per-example scorers for text metrics; corpus value = mean, so predictions.jsonl can carry the score.
_TEXT = {"em": exact_match, "f1": f1}
METRICS = ("accuracy", "macro_f1", "em", "f1")
# What each task kind can be scored with: label metrics need predicted labels, text metrics answers.
KIND_METRICS = {"choices": ("accuracy", "macro_f1"), "text": ("em", "f1")}


def score_one(name: str, pred: str, gold: str | Sequence[str]) -> float:
    """Per-example score of a text metric (em or f1), for per-example records and bootstrap CIs."""
    if name not in _TEXT:
        raise ValueError(f"no per-example score for metric '{name}'; per-example metrics: {sorted(_TEXT)}")
    return _TEXT[name](pred, _as_golds(gold))


def compute(
    names: Sequence[str], preds: Sequence, golds: Sequence, n_labels: int | None = None
) -> dict[str, float]:
    """Corpus-level metrics by name, each in [0, 1].

    Label metrics take int preds/golds; `em`/`f1` take string preds and, per example, a gold string or a
    sequence of acceptable gold strings.
    """
    _same_length(preds, golds)
    out: dict[str, float] = {}
    for name in names:
        if name == "accuracy":
            out[name] = accuracy(preds, golds)
        elif name == "macro_f1":
            out[name] = macro_f1(preds, golds, n_labels)
        elif name in _TEXT:
            scores = [score_one(name, p, g) for p, g in zip(preds, golds)]
            out[name] = sum(scores) / len(scores) if scores else 0.0
        else:
            raise ValueError(f"unknown metric '{name}' (known: {', '.join(METRICS)})")
    return out


def bootstrap_ci(
    per_example_scores: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: how much a score would move on another sample this size."""
    x = np.asarray(per_example_scores, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one score")
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    # Resample in chunks so a large eval set never materialises an n x m index matrix at once.
    step = max(1, 5_000_000 // x.size)
    for start in range(0, n, step):
        k = min(step, n - start)
        means[start : start + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _same_length(preds: Sequence, golds: Sequence) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
