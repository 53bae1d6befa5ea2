"""The report's figures as PNG bytes (matplotlib, Agg: no display, no network).

Every figure takes plain data (the run summaries report.py builds), so a figure can be tested without a
model. Colours are per family — blues for hard prompts, reds/oranges for soft prompts, greens/greys for
baselines — and stay the same for a method across every figure of a report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic, never opens a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

PALETTES = {
    "hard": ["#1f4e9c", "#4a8fe0", "#0b2e6b", "#8db8ee", "#2c6fbb"],
    "soft": ["#c0392b", "#e67e22", "#8e2c1f", "#f1a340", "#d35490", "#a0522d"],
    "baseline": ["#2e7d32", "#6d6d6d", "#66bb6a", "#37474f", "#9e9d24", "#00897b"],
}
MARKERS = {"hard": "o", "soft": "s", "baseline": "^"}
FAMILY_NAMES = {"hard": "hard prompt", "soft": "soft prompt", "baseline": "baseline"}
DPI = 110

plt.rcParams.update({
    "font.size": 9.5, "axes.titlesize": 11, "axes.titleweight": "bold", "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.color": "#e4e4e4", "grid.linewidth": 0.8,
    "axes.axisbelow": True, "legend.frameon": False, "figure.facecolor": "white", "savefig.facecolor": "white",
})


def method_styles(methods: Sequence[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """(method, family) in report order -> colour and marker, stable across figures."""
    used: dict[str, int] = {}
    out: dict[str, dict[str, str]] = {}
    for name, family in methods:
        if name in out:
            continue
        pal = PALETTES.get(family, PALETTES["baseline"])
        i = used.get(family, 0)
        used[family] = i + 1
        out[name] = {"color": pal[i % len(pal)], "marker": MARKERS.get(family, "D"), "family": family}
    return out


def to_png(fig: Any, dpi: int = DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _floor(values: Sequence[float]) -> float:
    """Where 'zero' sits on a log axis: one decade below the smallest positive value."""
    pos = [v for v in values if v > 0]
    return 10.0 ** (math.floor(math.log10(min(pos))) - 1) if pos else 1.0


def _log_axis_with_zero(ax: Any, values: Sequence[float], zero_label: str = "0") -> float:
    """Log x axis whose first tick, at the floor, reads `zero_label` (hard prompts train nothing)."""
    floor = _floor(values)
    hi = max([v for v in values if v > 0] or [floor * 10])
    ax.set_xscale("log")
    decades = range(int(math.log10(floor)), math.ceil(math.log10(hi)) + 1)
    ticks = [10.0**d for d in decades]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: zero_label if abs(x - floor) < floor * 1e-6 else _si(x)))
    ax.set_xlim(floor / 2.2, hi * 2.5)
    ax.axvspan(floor / 2.2, floor * 1.9, color="#f3f3f3", zorder=0, lw=0)
    return floor


def _si(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            v = x / div
            return f"{v:.0f}{suffix}" if v >= 10 or v == int(v) else f"{v:.1f}{suffix}"
    return f"{x:g}"


def _label_points(ax: Any, pts: list[tuple[float, float, str, str]]) -> None:
    """Name each point, nudging labels that would overlap (a small greedy repel in pixel space)."""
    fig = ax.figure
    fig.canvas.draw()
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(7, 5), (7, -13), (7, 15), (7, -23), (-7, 5), (-7, -13), (7, 25), (7, -33), (-7, 15), (-7, -23)]
    for x, y, text, color in sorted(pts, key=lambda p: -p[1]):
        px, py = ax.transData.transform((x, y))
        w, h = 6.2 * len(text), 11.0
        for dx, dy in offsets:
            left = px + dx if dx > 0 else px + dx - w
            box = (left, py + dy, left + w, py + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8.5, color=color,
                    ha="left" if dx > 0 else "right", va="bottom")


def _family_legend(ax: Any, families: Sequence[str], loc: str = "best") -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=MARKERS.get(f, "D"), color=PALETTES.get(f, PALETTES["baseline"])[0],
                      label=FAMILY_NAMES.get(f, f)) for f in ("hard", "soft", "baseline") if f in families]
    ax.legend(handles=handles, loc=loc, fontsize=8.5)


def accuracy_vs_cost(points: list[dict[str, Any]], styles: dict[str, dict[str, str]], *, x_key: str,
                     xlabel: str, title: str, ylabel: str, total_params: int | None = None,
                     zero_label: str = "0") -> bytes:
    """Score (with its CI as an error bar) against a cost on a log axis; zero cost sits at a labelled floor.

    points: {method, family, score, lo, hi, <x_key>} with scores in [0, 1].
    """
    fig, ax = plt.subplots(figsize=(7.2, 4.5))
    xs = [float(p[x_key]) for p in points]
    floor = _log_axis_with_zero(ax, xs, zero_label)
    labels = []
    for p, x in zip(points, xs):
        st = styles[p["method"]]
        x = x if x > 0 else floor
        y = 100 * p["score"]
        if p.get("lo") is not None:
            ax.errorbar(x, y, yerr=[[y - 100 * p["lo"]], [100 * p["hi"] - y]], color=st["color"], alpha=0.45,
                        lw=1.4, capsize=3, zorder=2)
        ax.scatter([x], [y], s=64, color=st["color"], marker=st["marker"], edgecolor="white", linewidth=0.8, zorder=3)
        labels.append((x, y, p["method"], st["color"]))
    ys = [100 * (p["lo"] if p.get("lo") is not None else p["score"]) for p in points]
    ys_hi = [100 * (p["hi"] if p.get("hi") is not None else p["score"]) for p in points]
    pad = max(2.0, 0.08 * (max(ys_hi) - min(ys)))
    ax.set_ylim(max(0, min(ys) - pad), min(100, max(ys_hi) + pad * 1.6))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    if total_params:  # a second scale: the same positions as a share of the frozen model
        top = ax.secondary_xaxis("top", functions=(lambda v: 100 * v / total_params, lambda v: v * total_params / 100))
        top.set_xlabel("% of the model's parameters", fontsize=8.5, color="#666")
        top.tick_params(labelsize=8, colors="#666")
        top.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "" if v < 100 * floor * 1.5 / total_params
                                                    else f"{v:g}%"))
    _label_points(ax, labels)
    _family_legend(ax, sorted({p["family"] for p in points}))
    return to_png(fig)


def training_curves(curves: list[dict[str, Any]], styles: dict[str, dict[str, str]]) -> bytes | None:
    """Per trained method: training loss (grey, left axis) and dev score (colour, right axis) by epoch.

    curves: {method, history: [{epoch, train_loss?, dev_score?}, ...]}.
    """
    curves = [c for c in curves if any("epoch" in h and ("train_loss" in h or "dev_score" in h) for h in c["history"])]
    if not curves:
        return None
    n = len(curves)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols, 2.7 * rows), squeeze=False)
    for ax, c in zip(axes.flat, curves):
        color = styles[c["method"]]["color"]
        h = [e for e in c["history"] if "epoch" in e]
        tl = [(e["epoch"], e["train_loss"]) for e in h if e.get("train_loss") is not None]
        dv = [(e["epoch"], 100 * e["dev_score"]) for e in h if e.get("dev_score") is not None]
        if tl:
            ax.plot(*zip(*tl), color="#888", lw=1.3, marker="." if len(tl) < 30 else None, label="train loss")
        ax.set_ylabel("train loss", color="#777", fontsize=8.5)
        ax.tick_params(axis="y", colors="#777", labelsize=8)
        ax2 = ax.twinx()
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        if dv:
            ax2.plot(*zip(*dv), color=color, lw=2, marker="o", ms=4, label="dev score")
            best = max(dv, key=lambda t: t[1])
            ax2.scatter([best[0]], [best[1]], s=70, facecolor="none", edgecolor=color, lw=1.5, zorder=4)
        ax2.set_ylabel("dev score (%)", color=color, fontsize=8.5)
        ax2.tick_params(axis="y", colors=color, labelsize=8)
        ax.set_xlabel("epoch", fontsize=8.5)
        ax.set_title(c["method"], loc="left", fontsize=10, color=color)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("Training curves (circle: the dev-best epoch, which is kept)", x=0.01, ha="left",
                 fontsize=11, fontweight="bold")
    fig.tight_layout()
    return to_png(fig)


def confusion_matrices(mats: list[dict[str, Any]], labels: list[str], styles: dict[str, dict[str, str]]) -> bytes | None:
    """Row-normalised confusion matrix per method (gold rows, predicted columns), counts written in.

    mats: {method, matrix: [[int]] (gold x predicted), score}.
    """
    if not mats or not labels:
        return None
    n = len(mats)
    k = len(labels)
    cols = min(4 if k <= 4 else 3, n)
    rows = math.ceil(n / cols)
    size = 2.3 + 0.28 * k
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False)
    short = [lb if len(lb) <= 9 else lb[:8] + "…" for lb in labels]
    for ax, m in zip(axes.flat, mats):
        counts = np.asarray(m["matrix"], dtype=float)
        norm = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.grid(False)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.55 else "#222")
        ax.set_xticks(range(k), short, rotation=35 if k > 3 else 0, ha="right" if k > 3 else "center", fontsize=8)
        ax.set_yticks(range(k), short, fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("gold", fontsize=8)
        ax.set_title(f"{m['method']} · {100 * m['score']:.1f}%", fontsize=9.5, loc="left",
                     color=styles[m["method"]]["color"])
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("Confusion matrices (colour: share of each gold row; numbers: counts)", x=0.01, ha="left",
                 fontsize=11, fontweight="bold")
    fig.tight_layout()
    return to_png(fig)


def data_efficiency(series: list[dict[str, Any]], styles: dict[str, dict[str, str]], *, n_labels: int | None,
                    ylabel: str, crossing: dict[str, Any] | None = None) -> bytes:
    """Score against labelled training examples, one line per method: mean over seeds, band = min..max.

    series: {method, family, points: [{n, mean, min, max, seeds}]} with scores in [0, 1].
    """
    fig, ax = plt.subplots(figsize=(7.6, 4.7))
    sizes = sorted({p["n"] for s in series for p in s["points"]})
    for s in series:
        st = styles[s["method"]]
        pts = sorted(s["points"], key=lambda p: p["n"])
        x = [p["n"] for p in pts]
        ls = {"hard": "--", "soft": "-", "baseline": ":"}.get(s["family"], "-")
        ax.plot(x, [100 * p["mean"] for p in pts], ls=ls, lw=2 if s["family"] != "baseline" else 1.7,
                color=st["color"], marker=st["marker"], ms=5, label=s["method"])
        if any(p["seeds"] > 1 for p in pts):
            ax.fill_between(x, [100 * p["min"] for p in pts], [100 * p["max"] for p in pts], color=st["color"],
                            alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("labelled training examples (total, all classes)")
    if n_labels:
        top = ax.secondary_xaxis("top", functions=(lambda v: v / n_labels, lambda v: v * n_labels))
        top.xaxis.set_major_locator(FixedLocator([n / n_labels for n in sizes]))
        top.xaxis.set_minor_locator(NullLocator())
        # whole numbers as such (1,000, not 1e+03); 2.67 per class stays a decimal
        top.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v - round(v)) < 1e-9 else f"{v:.3g}"))
        top.set_xlabel(f"per class (÷ {n_labels} classes)", fontsize=8.5, color="#666")
        top.tick_params(labelsize=8, colors="#666")
    if crossing and crossing.get("n"):
        ax.axvline(crossing["n"], color="#444", ls=":", lw=1.2)
        ax.annotate(crossing["label"], (crossing["n"], 0.02), xycoords=("data", "axes fraction"),
                    xytext=(5, 0), textcoords="offset points", fontsize=8.5, color="#333")
    ax.set_ylabel(ylabel)
    ax.set_title("Data efficiency: score vs labelled examples (band: min–max over seeds)", loc="left")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8.5)
    return to_png(fig)


def transfer_heatmap(scores: list[list[float | None]], own: list[list[bool]], rows: list[str],
                     cols: list[str]) -> bytes:
    """Prompts (rows) x tasks (columns), score in %; the prompt's own task outlined, n/a cells grey."""
    from matplotlib.patches import Rectangle

    values = np.array([[np.nan if v is None else 100 * v for v in line] for line in scores], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.25 * len(cols), 1.0 + 0.55 * len(rows)))
    cmap = plt.get_cmap("Blues").with_extremes(bad="#e6e6e6")
    ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.grid(False)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=9,
                    color="#666" if np.isnan(v) else ("white" if v > 60 else "#222"),
                    fontweight="bold" if own[i][j] else "normal")
            if own[i][j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#c0392b", linewidth=2))
    ax.set_xticks(range(len(cols)), cols, rotation=20 if len(cols) > 3 else 0, ha="right" if len(cols) > 3 else "center")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("soft prompt")
    ax.set_title("Soft-prompt transfer (score %; outlined: own task)", loc="left")
    fig.tight_layout()
    return to_png(fig)
