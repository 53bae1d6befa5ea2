"""Runs laid side by side: a Markdown table (the HTML report with plots builds on this)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runs import read_run


def _fmt_metrics(m: dict[str, float]) -> str:
    return " / ".join(f"{k} {100 * v:.1f}" for k, v in m.items())


def rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in runs:
        out.append([
            r["method"], r.get("family", ""), _fmt_metrics(r["metrics"]), f"{r['trainable_params']:,}",
            f"{r.get('trainable_percent', 0):.4f}%", f"{r.get('artifact_bytes', 0):,}", f"{r['train_seconds']:.1f}",
            f"{r['eval_examples_per_second']:.1f}",
        ])
    return out


HEADER = ["method", "family", "score (%)", "trainable params", "% of model", "artifact bytes", "train s", "eval ex/s"]


def markdown(runs: list[dict[str, Any]], title: str = "promptlab comparison") -> str:
    first = runs[0] if runs else {}
    lines = [f"# {title}", "", f"task `{first.get('task')}` · model `{first.get('model')}` · split "
             f"`{first.get('split')}` · {first.get('n_examples')} evaluation examples · "
             f"{first.get('train_examples')} training examples", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(runs)]
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[Path], out: Path, title: str = "promptlab comparison") -> Path:
    runs = [read_run(d) for d in run_dirs]
    path = out / "report.md"
    path.write_text(markdown(runs, title))
    return path
