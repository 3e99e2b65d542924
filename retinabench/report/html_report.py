"""`bench.py report RUN --html`: one self-contained HTML file a person can open and share.

Static: no server, no script, no framework. The compact table first (retinabench.report.table_model),
then the verdicts and the flags legend; the full table, the accuracy tables and the environment
folded in <details>; the run's plots embedded as PNG data URIs, so the file stands alone. The
accuracy section's Markdown is converted by Python-Markdown (its `tables` extension).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import List

from retinabench.report.accuracy_section import accuracy_section
from retinabench.report.plots import planned_plots
from retinabench.report.render import context_line
from retinabench.report.run_data import RunData
from retinabench.report.table_model import RunTable, build

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
details { margin: 1em 0; } summary { cursor: pointer; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.context { color: #555; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 12px; }
"""


def table_html(table: RunTable, compact: bool) -> str:
    cols = table.visible(compact)
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in cols)
    body = []
    for line in table.lines:
        cells = "".join(f"<td{' class=num' if c.numeric else ''}>{html.escape(line.text(c.key))}</td>" for c in cols)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plots(run: RunData) -> List[str]:
    out = []
    for spec in planned_plots(run):
        path = run.path / "plots" / spec.file
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(spec.title)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{html.escape(spec.title)}</figcaption></figure>")
    return out


def report_html(run: RunData) -> str:
    """The whole document (plots are read from the run's plots/ folder: write them first)."""
    import markdown
    table = build(run)
    parts = [f"<h1>{html.escape(run.scenario)}</h1>",
             f"<p class=context>{html.escape(context_line(table))}<br>Machine: {html.escape(table.machine)}<br>"
             f"Run folder: {html.escape(str(run.path))}</p>",
             "<h2>Results</h2>", table_html(table, compact=True)]
    if table.verdicts:
        parts += ["<ul>"] + [f"<li>{html.escape(v.sentence())}</li>" for v in table.verdicts] + ["</ul>"]
    parts += ["<p>" + "<br>".join(html.escape(n) for n in table.notes) + "</p>"]
    if table.legend:
        parts += ["<h3>Flags</h3><ul>"] + [f"<li><b>{html.escape(f)}</b>: {html.escape(t)}</li>"
                                          for f, t in table.legend] + ["</ul>"]
    plots = _plots(run)
    if plots:
        parts += ["<h2>Plots</h2>"] + plots
    parts += ["<details><summary>Every column</summary>", table_html(table, compact=False), "</details>",
              "<details><summary>Accuracy against the reference row</summary>",
              markdown.markdown(accuracy_section(run), extensions=["tables"]), "</details>",
              "<details><summary>Environment (env.json)</summary><pre>",
              html.escape(json.dumps(run.env, indent=1, sort_keys=True, default=str)), "</pre></details>"]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(run.scenario)}: retinabench</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_html(run: RunData, path: Path) -> Path:
    from retinabench.store import atomic_write
    atomic_write(path, report_html(run).encode("utf-8"))
    return path
