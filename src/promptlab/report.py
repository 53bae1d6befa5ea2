"""Runs laid side by side: report.md and a self-contained report.html with plots.

A report reads finished run directories back (runs.load_runs: metrics.json, predictions.jsonl, config.yaml)
and never re-runs a model, so `promptlab report` can rebuild it at any time. Scores carry a 95% percentile
bootstrap interval over the evaluation examples, computed from the per-example records (`correct` for choice
tasks, `em` / `score` = F1 for text tasks). When the runs span several training-set sizes (`compare
--train-sizes`), the report adds the data-efficiency curve and lays the largest size out as the table.

report.html embeds its plots as base64 PNG and its CSS inline (markup.py): it opens offline, from anywhere,
alone. The same PNGs are written to `plots/` for report.md.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import plots
from .inspect_prompt import summary, table_rows
from .markup import family_badge, figure_html, md_table, page_html, plain_table_html
from .methods import method_names
from .runs import PER_EXAMPLE, PLOTS_DIR, REPORT_HTML, REPORT_MD, load_runs

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "em": "EM", "f1": "F1"}
FAMILY_ORDER = {"hard": 0, "soft": 1, "baseline": 2}


# -- numbers ---------------------------------------------------------------------------------------------
def primary(run: dict[str, Any]) -> str:
    """The headline metric: accuracy for choice tasks, the task's first text metric (EM) otherwise."""
    m = run.get("metrics", {})
    for name in m:
        if name in PER_EXAMPLE:
            return name
    return next(iter(m), "accuracy")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _metric_text(run: dict[str, Any], name: str, label: bool) -> str:
    ci = run.get("ci", {}).get(name)
    head = METRIC_NAMES.get(name, name) + " " if label else ""
    return f"{head}{_pct(run['metrics'][name])}" + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def score_cell(run: dict[str, Any]) -> str:
    """'71.2 [67.0, 75.3]': the headline metric with its 95% CI (where per-example scores exist)."""
    m = primary(run)
    return _metric_text(run, m, label=m != "accuracy") if m in run.get("metrics", {}) else "–"


def other_cell(run: dict[str, Any]) -> str:
    """The task's other metrics: 'macro-F1 69.0', or 'F1 55.1 [50.3, 59.9]' beside EM."""
    m = primary(run)
    return " · ".join(_metric_text(run, n, label=True) for n in run.get("metrics", {}) if n != m) or "–"


HEADER = ["method", "family", "score % [95% CI]", "other", "trainable params", "% of model", "artifact bytes",
          "train s", "eval ex/s"]


def rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in runs:
        out.append([
            r.get("display", r["method"]), r.get("family", ""), score_cell(r), other_cell(r),
            f"{r['trainable_params']:,}",
            _share(r.get("trainable_percent", 0)), f"{r.get('artifact_bytes', 0):,}", f"{r['train_seconds']:.1f}",
            f"{r['eval_examples_per_second']:.1f}",
        ])
    return out


def _share(p: float) -> str:
    if p == 0:
        return "0%"
    return f"{p:.3g}%" if p < 1 else f"{p:.1f}%"


# -- structure: headline runs and the data-efficiency curve ----------------------------------------------------
def is_sweep(runs: list[dict[str, Any]]) -> bool:
    """Runs at several training sizes, or one method at several seeds (compare --train-sizes)."""
    runs = [r for r in runs if not r.get("evaluated_artifact")]
    if len({r.get("train_examples") for r in runs}) > 1:
        return True
    seeds: dict[str, set[Any]] = defaultdict(set)
    for r in runs:
        seeds[r["method"]].add(r.get("seed"))
    return any(len(s) > 1 for s in seeds.values())


def headline(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs the table and cost plots show: for a sweep, the largest training size at its first seed."""
    if is_sweep(runs):
        top = max(r.get("train_examples") or 0 for r in runs if not r.get("evaluated_artifact"))
        picked: dict[str, dict[str, Any]] = {}
        top_runs = [r for r in runs if (r.get("train_examples") or 0) == top and not r.get("evaluated_artifact")]
        for r in sorted(top_runs, key=lambda r: r.get("seed") or 0):
            picked.setdefault(r["method"], r)
        runs = list(picked.values())
    runs = sorted(runs, key=_order)
    names = [r["method"] for r in runs]
    if len(set(names)) < len(names):  # the same method from several directories: tell them apart
        root = Path(os.path.commonpath([r["run_dir"] for r in runs]))
        for r in runs:  # a compare's method dir is named for its method: its parent tells it apart, a run dir itself
            rel = Path(r["run_dir"]).relative_to(root)
            r["display"] = f"{r['method']} ({rel.parent if rel.parent != Path('.') else rel})"
    return runs


def _order(r: dict[str, Any]) -> tuple[int, int]:
    """Hard, soft, baseline; within a family the registry's order (zero-shot before few-shot), so every
    report of the same methods lists and colours them alike, however its runs were found."""
    names = method_names()
    return FAMILY_ORDER.get(r.get("family", ""), 3), names.index(r["method"]) if r["method"] in names else len(names)


def curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: mean / min / max of the primary score at each training size, over seeds."""
    runs = [r for r in runs if not r.get("evaluated_artifact")]
    if len({r.get("train_examples") for r in runs}) < 2:
        return []
    by: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    family: dict[str, str] = {}
    for r in runs:
        by[r["method"]][int(r.get("train_examples") or 0)].append(r["metrics"][primary(r)])
        family[r["method"]] = r.get("family", "")
    out = []
    for method, sizes in by.items():
        pts = [{"n": n, "mean": sum(v) / len(v), "min": min(v), "max": max(v), "seeds": len(v),
                "sd": _sd(v)} for n, v in sorted(sizes.items())]
        out.append({"method": method, "family": family[method], "points": pts})
    return sorted(out, key=_order)


def _sd(v: list[float]) -> float:
    if len(v) < 2:
        return 0.0
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def crossing(series: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where the best soft prompt overtakes the best hard prompt (mean over seeds, log-interpolated)."""
    best: dict[str, dict[int, float]] = {"hard": {}, "soft": {}}
    for s in series:
        if s["family"] in best:
            for p in s["points"]:
                best[s["family"]][p["n"]] = max(best[s["family"]].get(p["n"], -1.0), p["mean"])
    sizes = sorted(set(best["hard"]) & set(best["soft"]))
    if not sizes:
        return None
    diff = [best["soft"][n] - best["hard"][n] for n in sizes]
    for (n0, d0), (n1, d1) in zip(zip(sizes, diff), zip(sizes[1:], diff[1:])):
        if d0 < 0 <= d1:
            n = math.exp(math.log(n0) + (math.log(n1) - math.log(n0)) * (-d0) / (d1 - d0))
            verb, at = ("overtakes", f"it leads by {100 * d1:.1f} points") if d1 > 0 else ("catches up with", "they tie")
            return {"n": n, "label": f"soft ≥ hard from ≈{n:,.0f}",
                    "text": f"Hard prompts lead up to {n0:,} labelled examples; the best soft prompt {verb} "
                            f"the best hard prompt at about {n:,.0f} (by {n1:,} {at})."}
    span = f"at every size measured ({sizes[0]:,}–{sizes[-1]:,} examples)"
    if all(d == 0 for d in diff):  # e.g. every method at chance: nobody leads
        return {"n": None, "text": f"The best soft and hard prompts tie {span}."}
    if all(d >= 0 for d in diff):
        return {"n": None, "text": f"The best soft prompt {'leads' if min(diff) > 0 else 'leads or ties'} the best "
                                   f"hard prompt {span}."}
    if all(d < 0 for d in diff):
        return {"n": None, "text": f"The best hard prompt leads at every size measured ({sizes[0]:,}–{sizes[-1]:,} "
                                   "examples): soft prompts need more labelled data here."}
    return {"n": None, "text": "The best hard and soft prompts trade the lead across sizes; see the curve."}


def findings(runs: list[dict[str, Any]]) -> list[str]:
    """One line per family: its best method, score and cost."""
    out = []
    for fam in ("hard", "soft", "baseline"):
        members = [r for r in runs if r.get("family") == fam]
        if not members:
            continue
        b = max(members, key=lambda r: r["metrics"][primary(r)])
        m = primary(b)
        tied = [r.get("display", r["method"]) for r in members if r["metrics"][primary(r)] == b["metrics"][m]]
        if len(tied) > 1:  # no best among equals
            out.append(f"Best {fam}: {', '.join(tied[:-1])} and {tied[-1]} tie — {METRIC_NAMES.get(m, m)} "
                       f"{_pct(b['metrics'][m])}.")
            continue
        ci = b.get("ci", {}).get(m)
        ci_s = f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""
        searched = f", {b['train_seconds']:.0f} s choosing the prompt" if b["train_seconds"] >= 1 else ""
        cost = (f"no training{searched}" if b["trainable_params"] == 0 else
                f"{b['trainable_params']:,} trainable parameters ({_share(b.get('trainable_percent', 0))} of the "
                f"model), {b['train_seconds']:.0f} s of training, {_bytes(b.get('artifact_bytes', 0))} artifact")
        out.append(f"Best {fam}: {b.get('display', b['method'])} — {METRIC_NAMES.get(m, m)} {_pct(b['metrics'][m])}"
                   f"{ci_s}, {cost}.")
    return out


def prompts_found(runs: list[dict[str, Any]]) -> list[str]:
    """What the automatic hard-prompt methods found, beside the scores that chose them (metrics.json method_info)."""
    out = []
    for r in runs:
        info, name = r.get("method_info") or {}, r.get("display", r["method"])
        m = primary(r)
        if "candidates" in info:
            out.append(f"{name} chose `{info.get('chosen_name')}` (score {_pct(info.get('chosen_score', 0.0))} on the "
                       f"{info.get('search_on')} examples, best of {info.get('evaluated')} candidates): "
                       f"{json.dumps(r.get('template', ''), ensure_ascii=False)}")
        if "hard_prompt" in info:
            line = (f"{name} learnt the hard prompt {json.dumps(info['hard_prompt'], ensure_ascii=False)}: "
                    f"{METRIC_NAMES.get(m, m)} {_pct(r['metrics'][m])}")
            cont = (r.get("variants") or {}).get("continuous", {})
            if m in cont:
                line += f"; the continuous soft prompt it was projected from: {_pct(cont[m])}"
            out.append(line + ("" if info.get("retokenizes", True) else
                               " (the text re-tokenises to other ids; the artifact keeps the ids)"))
    return out


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _bytes(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _meta_line(runs: list[dict[str, Any]]) -> str:
    first = runs[0] if runs else {}

    def one(key: str) -> str:
        vals = sorted({str(r.get(key)) for r in runs})
        return vals[0] if len(vals) == 1 else ", ".join(vals)

    return (f"task `{one('task')}` · model `{one('model')}` · split `{one('split')}` · {one('n_examples')} evaluation "
            f"examples · {first.get('train_examples')} training examples"
            + (f" ({first.get('dev_examples')} more held out as dev)" if first.get("dev_examples") else ""))


# -- figures ---------------------------------------------------------------------------------------------------
def figures(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every plot of a report: {name, title, caption, png}; choice-only plots are left out for text tasks."""
    head = headline(runs)
    series = curve(runs)
    styles = plots.method_styles([(r.get("display", r["method"]), r.get("family", "")) for r in head]
                                 + [(s["method"], s["family"]) for s in series])
    m = primary(head[0]) if head else "accuracy"
    ylabel = f"{METRIC_NAMES.get(m, m)} (%)"
    pts = [{"method": r.get("display", r["method"]), "family": r.get("family", ""), "score": r["metrics"][primary(r)],
            "lo": (r["ci"].get(primary(r)) or [None, None])[0], "hi": (r["ci"].get(primary(r)) or [None, None])[1],
            # a zero-shot fit takes milliseconds: it sits at "0 s" rather than stretching the axis by decades
            "params": r["trainable_params"], "seconds": r["train_seconds"] if r["train_seconds"] >= 0.5 else 0.0}
           for r in head]
    out = []
    if series:
        n_labels = len(head[0].get("labels", [])) if head and head[0].get("kind") == "choices" else None
        cross = crossing(series)
        out.append({"name": "data_efficiency", "title": "Data efficiency",
                    "caption": "Mean score over seeds against the number of labelled training examples "
                               "(log scale; the top axis divides by the number of classes). Shaded band: min–max "
                               "over seeds. " + (cross["text"] if cross else ""),
                    "png": plots.data_efficiency(series, styles, n_labels=n_labels, ylabel=ylabel, crossing=cross)})
    if pts:
        total = next((r.get("total_params") for r in head if r.get("total_params")), None)
        out.append({"name": "accuracy_vs_params", "title": f"{_cap(METRIC_NAMES.get(m, m))} against trainable parameters",
                    "caption": "Log scale; hard prompts train nothing and sit at the floor labelled 0. "
                               "Error bars: 95% bootstrap CI.",
                    "png": plots.accuracy_vs_cost(pts, styles, x_key="params", xlabel="trainable parameters (log)",
                                                  title=f"{_cap(METRIC_NAMES.get(m, m))} vs trainable parameters",
                                                  ylabel=ylabel, total_params=total)})
        out.append({"name": "accuracy_vs_time", "title": f"{_cap(METRIC_NAMES.get(m, m))} against training time",
                    "caption": "Wall-clock seconds fitting each method on this machine: training, or a prompt "
                               "search's scoring (log scale; 0 = under half a second).",
                    "png": plots.accuracy_vs_cost(pts, styles, x_key="seconds", xlabel="training time, seconds (log)",
                                                  title=f"{_cap(METRIC_NAMES.get(m, m))} vs training time", ylabel=ylabel,
                                                  zero_label="0 s")})
    png = plots.training_curves([{"method": r.get("display", r["method"]), "history": r.get("history") or []}
                                 for r in head], styles)
    if png:
        out.append({"name": "training_curves", "title": "Training curves", "png": png,
                    "caption": "Training loss and dev score per epoch for every method that trains; the dev-best "
                               "epoch is the one kept."})
    choice = [r for r in head if r.get("kind") == "choices" and r.get("confusion")]
    if choice:
        png = plots.confusion_matrices([{"method": r.get("display", r["method"]), "matrix": r["confusion"],
                                         "score": r["metrics"][primary(r)]} for r in choice], choice[0]["labels"], styles)
        if png:
            out.append({"name": "confusion", "title": "Confusion matrices", "png": png,
                        "caption": "Rows: gold label; columns: predicted label."})
    return out


# -- Markdown ----------------------------------------------------------------------------------------------------
def curve_table(series: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    sizes = sorted({p["n"] for s in series for p in s["points"]})
    header = ["method", "family"] + [f"n={n:,}" for n in sizes]
    body = []
    for s in series:
        at = {p["n"]: p for p in s["points"]}
        cells = []
        for n in sizes:
            p = at.get(n)
            if p is None:
                cells.append("–")
            elif p["seeds"] > 1:
                cells.append(f"{_pct(p['mean'])} ± {_pct(p['sd'])} ({p['seeds']} seeds)")
            else:
                cells.append(_pct(p["mean"]))
        body.append([s["method"], s["family"], *cells])
    return header, body


def markdown(runs: list[dict[str, Any]], title: str = "promptlab comparison",
             figs: list[dict[str, Any]] | None = None, all_runs: list[dict[str, Any]] | None = None,
             skipped: dict[str, str] | None = None) -> str:
    lines = [f"# {title}", "", _meta_line(runs), ""]
    lines += md_table(HEADER, rows(runs))
    lines += ["", ("Scores in %; brackets: 95% percentile bootstrap interval over the evaluation examples "
              "(1,000 resamples)."), ""]
    found = findings(runs)
    if found:
        lines += [f"- {f}" for f in found] + [""]
    prompts = prompts_found(runs)
    if prompts:
        lines += ["## Prompts found", ""] + [f"- {p}" for p in prompts] + [""]
    series = curve(all_runs or runs)
    if series:
        cross = crossing(series)
        header, body = curve_table(series)
        lines += ["## Data efficiency", "", ("Mean ± standard deviation over seeds of the headline score by number of "
                  "labelled training examples (total over all classes)."), ""]
        lines += md_table(header, body) + [""]
        if cross:
            lines += [cross["text"], ""]
        lines += [f"![Data efficiency]({PLOTS_DIR}/data_efficiency.png)", ""] if any(
            f["name"] == "data_efficiency" for f in figs or []) else []
    if skipped:
        lines += ["Points that could not run:", ""] + [f"- `{k}`: {v}" for k, v in sorted(skipped.items())] + [""]
    for f in figs or []:
        if f["name"] == "data_efficiency":
            continue
        lines += [f"## {f['title']}", "", f"![{f['title']}]({PLOTS_DIR}/{f['name']}.png)", "", f["caption"], ""]
    learnt = soft_prompt_tables(runs)
    if learnt:
        lines += ["## What the trained prompts learned", "", INSPECT_NOTE, ""]
        for name, line, header, body in learnt:
            lines += [f"**{name}** — {line}", ""]
            lines += md_table(header, [[c.replace("|", "\\|") for c in r] for r in body]) + [""]
    return "\n".join(lines).rstrip() + "\n"


INSPECT_NOTE = ("Input-level prompts, per soft token: its 3 nearest vocabulary tokens by cosine, its L2 norm and "
                "percentile among the vocabulary's norms, and how far training moved it from its initialisation; "
                "prefix tuning, per layer: key/value norms and movement; pez (a hard method), the continuous prompt "
                "whose nearest tokens are its hard prompt (`promptlab inspect RUN` prints the table).")


def soft_prompt_tables(runs: list[dict[str, Any]]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(method, one-line summary, header, rows) for every run with an inspect.json."""
    out = []
    for r in runs:
        if r.get("inspect"):
            header, body = table_rows(r["inspect"], top=3)
            out.append((r.get("display", r["method"]), summary(r["inspect"]), header, body))
    return out


# -- HTML -------------------------------------------------------------------------------------------------------
def _score_html(r: dict[str, Any]) -> str:
    m = primary(r)
    v = r["metrics"].get(m, 0.0)
    ci = r.get("ci", {}).get(m)
    txt = html.escape(score_cell(r))
    bar = f'<b style="width:{100 * v:.1f}%"></b>'
    if ci:
        bar += f'<i style="left:{100 * ci[0]:.1f}%;width:{max(0.4, 100 * (ci[1] - ci[0])):.1f}%"></i>'
    return f'{txt}<div class="bar">{bar}</div>'


def _html_table(runs: list[dict[str, Any]]) -> str:
    best = max((r["metrics"].get(primary(r), 0) for r in runs), default=None)
    head = "".join(f'<th class="{"l" if h in ("method", "family") else ""}">{html.escape(h)}</th>' for h in HEADER)
    body = []
    for r, cells in zip(runs, rows(runs)):
        cls = ' class="best"' if r["metrics"].get(primary(r)) == best else ""
        tds = [f'<td class="l">{html.escape(cells[0])}</td>', f'<td class="l">{family_badge(cells[1])}</td>',
               f"<td>{_score_html(r)}</td>"] + [f"<td>{html.escape(c)}</td>" for c in cells[3:]]
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(runs: list[dict[str, Any]], title: str, figs: list[dict[str, Any]],
                all_runs: list[dict[str, Any]] | None = None, out: Path | None = None,
                skipped: dict[str, str] | None = None) -> str:
    meta = html.escape(_meta_line(runs))
    meta = meta.replace("`", "")  # the Markdown backticks become plain text here
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{meta}</p>']
    found = findings(runs)
    if found:
        parts.append('<ul class="findings">' + "".join(f"<li>{html.escape(f)}</li>" for f in found) + "</ul>")
    parts += ["<h2>Side by side</h2>", _html_table(runs),
              ('<p class="note">Scores in %. Brackets and the dark band on each bar: 95% percentile bootstrap interval '
              "over the evaluation examples (1,000 resamples). Trainable parameters count every value the method "
              "fits; % of model is against the frozen backbone.</p>")]
    prompts = prompts_found(runs)
    if prompts:
        parts += ["<h2>Prompts found</h2>",
                  '<ul class="findings">' + "".join(f"<li>{html.escape(p)}</li>" for p in prompts) + "</ul>"]
    by_name = {f["name"]: f for f in figs}
    series = curve(all_runs or runs)
    if "data_efficiency" in by_name:
        header, body = curve_table(series)
        table = plain_table_html(header, body, {0, 1},
                                 lambda _r, i, c: family_badge(c) if i == 1 else html.escape(c))
        parts += ["<h2>Data efficiency</h2>", figure_html(by_name["data_efficiency"]), table]
    if skipped:
        parts.append('<p class="note">Points that could not run: ' + "; ".join(
            f"<code>{html.escape(k)}</code>: {html.escape(v)}" for k, v in sorted(skipped.items())) + "</p>")
    cost = [by_name[n] for n in ("accuracy_vs_params", "accuracy_vs_time") if n in by_name]
    if cost:
        parts += ["<h2>Score against cost</h2>", '<div class="grid">' + "".join(figure_html(f) for f in cost) + "</div>"]
    for name in ("training_curves", "confusion"):
        if name in by_name:
            parts += [f"<h2>{html.escape(by_name[name]['title'])}</h2>", figure_html(by_name[name])]
    learnt = soft_prompt_tables(runs)
    if learnt:
        parts += ["<h2>What the trained prompts learned</h2>", f'<p class="note">{html.escape(INSPECT_NOTE)}</p>']
        for name, line, header, body in learnt:
            parts.append(f"<p><b>{html.escape(name)}</b> — {html.escape(line)}</p>"
                         + plain_table_html(header, body, {1}))
    listed = all_runs or runs
    where = [os.path.relpath(r["run_dir"], out) if out else r["run_dir"] for r in listed]
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f"<footer>{len(listed)} run{'s' if len(listed) != 1 else ''}: "
                 + ", ".join(f"<code>{html.escape(w)}</code>" for w in where)
                 + f". Written by <code>promptlab report</code> on {stamp}; rebuild with "
                 "<code>promptlab report RUN_DIR...</code>.</footer>")
    return page_html(title, "\n".join(parts))


# -- writing -------------------------------------------------------------------------------------------------------
def _skipped(dirs: list[Path]) -> dict[str, str]:
    """Sweep points recorded as not runnable (sweep.py writes skipped.json at the sweep's root)."""
    out: dict[str, str] = {}
    for d in dirs:
        for f in (d / "skipped.json", d.parent / "skipped.json", d.parent.parent / "skipped.json"):
            if f.is_file():
                try:
                    out.update(json.loads(f.read_text()))
                except (json.JSONDecodeError, OSError):
                    pass
    return out


def build(run_dirs: list[Path], out: Path, title: str = "promptlab comparison") -> dict[str, Any]:
    """Read the runs under `run_dirs`, write report.md, report.html and plots/*.png into `out`.

    Returns the paths written ("md", "html", "plots") and the runs read ("runs").
    """
    all_runs = load_runs([Path(d) for d in run_dirs])
    skipped = _skipped([Path(d) for d in run_dirs])
    head = headline(all_runs)
    figs = figures(all_runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / PLOTS_DIR).mkdir(exist_ok=True)
    for f in figs:
        (out / PLOTS_DIR / f"{f['name']}.png").write_bytes(f["png"])
    md = out / REPORT_MD
    md.write_text(markdown(head, title, figs, all_runs, skipped))
    page = out / REPORT_HTML
    page.write_text(render_html(head, title, figs, all_runs, out, skipped), encoding="utf-8")
    return {"md": md, "html": page, "plots": out / PLOTS_DIR, "runs": all_runs}


def write_report(run_dirs: list[Path], out: Path, title: str = "promptlab comparison") -> Path:
    """report.md (returned), report.html and plots/ for these runs."""
    return build(run_dirs, out, title)["md"]
