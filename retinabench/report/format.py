"""Formatting shared by every report section: numbers, markdown cells and tables, links, status marks."""
from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tabulate import tabulate

from retinabench.harness.env import machine_label
from retinabench.harness.loop import STAGES
from retinabench.report.run_data import RunData

_SHORT = {"preprocess": "pre", "inference": "infer", "postprocess": "post", "total": "total"}


WRAP = 120          # generated paragraphs: lines of at most this many characters (tables keep one row a line)


def wrap(text: str, indent: str = "") -> str:
    """A paragraph in lines of at most WRAP characters (Markdown joins them again)."""
    return "\n".join(textwrap.wrap(text, WRAP, subsequent_indent=indent, break_long_words=False,
                                    break_on_hyphens=False))


def ms(v: Any) -> str:
    """Milliseconds with about three significant digits (0.0123, 1.23, 12.3, 123)."""
    if v == "" or v is None:
        return "–"
    v = float(v)
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def sci(v: Any) -> str:
    return "–" if v == "" or v is None else f"{float(v):.1e}"


def cell(text: Any) -> str:
    """Markdown table cells cannot hold pipes or newlines."""
    return " ".join(str(text).replace("|", "\\|").split())


def md_table(headers: Sequence[str], lines: List[List[Any]], colalign: Optional[Sequence[str]] = None) -> str:
    return tabulate([[cell(c) for c in line] for line in lines], headers=list(headers), tablefmt="github",
                    disable_numparse=True, colalign=colalign)


def row_label(backend: str, variant: str, batch: Optional[int] = None) -> str:
    """'torch (pipe) b32': a backend, its variant where not the default, and a batch where given."""
    label = backend if variant == "default" else f"{backend} ({variant})"
    return label if batch is None else f"{label} b{batch}"


def relative_link(target: Path, base: Path) -> str:
    """Posix path of target relative to base (a README's folder), absolute when on another drive."""
    try:
        return Path(os.path.relpath(Path(target).resolve(), Path(base).resolve())).as_posix()
    except ValueError:
        return Path(target).resolve().as_posix()


def status_cell(status: str, reason: str) -> str:
    """Ultralytics-style status: a mark, the status, and the reason when it did not pass."""
    mark = {"passed": "✅", "failed": "❌", "unavailable": "⛔"}.get(status, "❔")
    return f"{mark} {status}" + (f": {reason}" if reason and status != "passed" else "")


def flags_cell(row: Dict[str, Any]) -> str:
    """'noisy: infer, total; drift: infer' from the per-stage flags of summary.csv."""
    by_flag: Dict[str, List[str]] = {}
    for stage in STAGES:
        s = row.get(stage)
        if not s:
            continue
        for f in str(s.get("flags", "")).split():
            by_flag.setdefault(f, []).append(_SHORT[stage])
    return "; ".join(f"{f}: {', '.join(st)}" for f, st in sorted(by_flag.items()))


def key_versions(run: RunData) -> str:
    """Python and numpy from env.json, then each runtime's version as its rows recorded it."""
    versions: Dict[str, str] = {}
    for r in run.ordered_rows():
        for k, v in r.result.versions.items():
            if re.match(r"^\d", str(v)):  # a version number, not a setting such as an engine name
                versions.setdefault(k, str(v))
    parts = [f"Python {run.env['python']}"] if run.env.get("python") else []
    parts += [f"numpy {run.env['numpy']}"] if run.env.get("numpy") else []
    return ", ".join(parts + [f"{k} {v}" for k, v in sorted(versions.items())])


def machine_line(run: RunData, link_base: Path) -> str:
    env = run.env
    commit = str(env.get("git_commit") or "")[:7]
    when = env.get("timestamp_utc", "unknown time")
    link = relative_link(run.path, link_base)
    text = f"Measured on **{machine_label(env) if env else 'an unrecorded machine'}** at {when}"
    if commit:
        text += f", commit `{commit}`" + (" (with uncommitted changes)" if env.get("git_dirty") else "")
    text += f". Run folder: [`{link}`]({link})."
    versions = key_versions(run)
    return text + (f" Versions: {versions}." if versions else "")


def scenario_line(run: RunData) -> str:
    cfg = run.config
    inp = cfg.get("input") or {}
    size = f"{inp.get('width')}x{inp.get('height')} ({inp.get('mode')})" if inp.get("mode") == "fit" else "native size"
    images = len(cfg.get("images") or run.meta.get("images") or [])
    batches = ", ".join(str(b) for b in cfg.get("batches") or [])
    text = (f"Scenario **{run.scenario}**: input {size}, {images} image(s), batch {batches}, "
            f"{cfg.get('loops', '?')} measured loops after {cfg.get('warmup', '?')} warmup loops")
    status = run.meta.get("status")
    if status and status != "complete":
        text += f"; run status **{status}**" + (f" ({run.meta.get('reason')})" if run.meta.get("reason") else "")
    return text + "."
