"""Markdown and HTML building blocks of promptlab's pages: the report (report.py) and the transfer matrix
(transfer.py) share one style.

Pages are self-contained: CSS inline, figures as base64 PNG, no script, so a page opens offline, from
anywhere, alone. HTML text is escaped here, except a cell's HTML a caller builds itself (`cell=`).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from typing import Any


# -- Markdown ---------------------------------------------------------------------------------------------------
def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    """A Markdown table's lines: header, rule, one line per row (cells as given: escape `|` before)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


# -- HTML -------------------------------------------------------------------------------------------------------
CSS = """
:root{--ink:#1d2330;--mute:#5d6677;--line:#e3e6ec;--bg:#f7f8fa;--hard:#1f4e9c;--soft:#c0392b;--baseline:#2e7d32}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--ink);background:var(--bg)}main{max-width:1180px;margin:0 auto;padding:28px 24px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;padding-top:8px;border-top:1px solid var(--line)}
.meta{color:var(--mute);margin:0 0 18px}.meta code{background:#eceff4;padding:1px 5px;border-radius:4px}
.findings{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 18px;margin:14px 0}
.findings li{margin:3px 0}table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);
border-radius:10px;overflow:hidden;font-size:14px}th,td{padding:8px 10px;text-align:right;border-bottom:1px solid var(--line);
white-space:nowrap}th{background:#eef1f6;font-weight:600;color:#333}td.l,th.l{text-align:left}tr:last-child td{border-bottom:0}
tr.best td{font-weight:600}.fam{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.fam.hard{background:var(--hard)}.fam.soft{background:var(--soft)}.fam.baseline{background:var(--baseline)}
.ci{color:var(--mute);font-weight:400}.bar{position:relative;height:6px;background:#edf0f5;border-radius:3px;margin-top:4px;
min-width:150px}.bar b{position:absolute;left:0;top:0;bottom:0;background:#9fb3cf;border-radius:3px}
.bar i{position:absolute;top:-2px;bottom:-2px;background:rgba(29,35,48,.28);border-radius:2px}
figure{margin:14px 0;background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}figcaption{color:var(--mute);font-size:13.5px;margin-top:6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:14px}.grid figure{margin:0}
.note{color:var(--mute);font-size:13px}footer{margin-top:40px;color:var(--mute);font-size:12.5px}
footer code{font-size:12px}
"""


def page_html(title: str, body: str) -> str:
    """One self-contained page in the report's style (CSS inline, no script): the report's and transfer's."""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + body + "\n</main></body></html>\n")


def family_badge(fam: str) -> str:
    """A method family (hard, soft, baseline) as a coloured label; nothing for none."""
    return f'<span class="fam {html.escape(fam)}">{html.escape(fam)}</span>' if fam else ""


def plain_table_html(header: list[str], body: list[list[str]], left: set[int],
                     cell: Callable[[int, int, str], str] | None = None) -> str:
    """A table of text cells; columns in `left` align left; `cell(row, col, text)` gives a cell's HTML when
    set (a family badge, a bold own-task score), else the text escaped."""
    def cls(i: int) -> str:
        return "l" if i in left else ""

    head = "".join(f'<th class="{cls(i)}">{html.escape(h)}</th>' for i, h in enumerate(header))
    trs = "".join("<tr>" + "".join(f'<td class="{cls(i)}">{cell(r, i, c) if cell else html.escape(c)}</td>'
                                   for i, c in enumerate(row)) + "</tr>" for r, row in enumerate(body))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>"


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def figure_html(f: dict[str, Any]) -> str:
    """A figure {name, title, caption, png} as a <figure> with the PNG inline (base64), sized as drawn."""
    w, h = _png_size(f["png"])
    data = base64.b64encode(f["png"]).decode("ascii")
    return (f'<figure id="{f["name"]}"><img src="data:image/png;base64,{data}" width="{w}" height="{h}" '
            f'alt="{html.escape(f["title"])}"><figcaption>{html.escape(f["caption"])}</figcaption></figure>')
