"""Renderers of a run's table model (retinabench.report.table_model): Markdown and the console.

The console table fits the terminal: the compact columns by default (`--wide`: every column), the
columns every row shares on one context line above it, long cells cut to the width left, and one
line per note, verdict and next command under it.
"""
from __future__ import annotations

import shutil
from typing import List, Optional

from tabulate import tabulate

from retinabench.report.format import cell as md_cell
from retinabench.report.table_model import Column, RunTable

MIN_FLAGS_WIDTH = 12


def context_line(table: RunTable) -> str:
    return "; ".join(f"{k} {v}" for k, v in table.context)


def markdown(table: RunTable, compact: bool = True) -> str:
    cols = table.visible(compact)
    rows = [[md_cell(line.text(c.key)) for c in cols] for line in table.lines]
    return tabulate(rows, headers=[c.title for c in cols], tablefmt="github", disable_numparse=True,
                    colalign=[("right" if c.numeric else "left") for c in cols])


def terminal_width(default: int = 120) -> int:
    """The terminal's width; `default` when output is not a terminal (a log, a pipe, a test)."""
    return shutil.get_terminal_size((default, 24)).columns


def _fit(table: RunTable, cols: List[Column], width: int) -> str:
    """The text table, its last column (flags or reasons) cut so that every line fits `width`."""
    def render(limit: Optional[int]) -> str:
        rows = []
        for line in table.lines:
            cells = [line.text(c.key) for c in cols]
            if limit is not None and len(cells[-1]) > limit:
                cells[-1] = cells[-1][:max(1, limit - 1)] + "…"
            rows.append(cells)
        return tabulate(rows, headers=[c.short or c.title for c in cols], tablefmt="simple", disable_numparse=True,
                        colalign=[("right" if c.numeric else "left") for c in cols])
    text = render(None)
    limit = max(len(line.text(cols[-1].key)) for line in table.lines)
    while max(len(x) for x in text.splitlines()) > width and limit > MIN_FLAGS_WIDTH:
        limit = max(MIN_FLAGS_WIDTH, limit - (max(len(x) for x in text.splitlines()) - width))
        text = render(limit)
    return text


def console(table: RunTable, width: Optional[int] = None, wide: bool = False,
            commands: Optional[List[str]] = None, notes: Optional[List[str]] = None) -> str:
    """What `bench.py run` prints at the end: context, table, one-line notes, verdicts, what to run next."""
    width = width or terminal_width()
    cols = table.visible(compact=not wide)
    parts = [f"{table.title}: {context_line(table)}; times in ms", f"machine: {table.machine}", "",
             _fit(table, cols, width) if not wide else markdown(table, compact=False), ""]
    parts += [_cut(n, width) for n in table.notes + list(notes or [])]
    if table.legend:
        parts.append(_cut("flags: " + "; ".join(f for f, _ in table.legend), width))
        parts.append(f"what each flag means and what to do: {table.run_path}/summary.md")
    parts += [""] + [_cut("verdict: " + v.sentence(), width) for v in table.verdicts]
    if commands:
        parts += [_cut("next: " + c, width) for c in commands]
    return "\n".join(parts)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
