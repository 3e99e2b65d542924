"""One table model per run, built once; the console, Markdown, README and HTML render it.

After torch.utils.benchmark's `Compare`, which builds its table before printing it: `build(run)`
reads a run folder (retinabench.report.run_data) into a `RunTable`: its rows, its columns (each
marked compact or not: the compact ones are the README's and the console's default), cells that
carry a value and its interval, the columns that are the same on every row (moved to a context
line), one-line notes, the verdicts (retinabench.report.verdict) and the legend of the flags that
occur. Renderers (retinabench.report.render) only lay it out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from retinabench.harness.env import machine_label
from retinabench.harness.loop import STAGES
from retinabench.records import RowId
from retinabench.report.flags import FLAGS, describe
from retinabench.report.format import ms, status_cell
from retinabench.report.run_data import BASELINE_BACKENDS, RunData
from retinabench.report.stats import Interval, ratio_ci
from retinabench.report.tables import footprint_cells, footprint_headers, pivot, reference_name
from retinabench.report.verdict import Verdict, rank
from retinabench.report.variants import variant_cell

MAX_REASON = 30      # a compact cell shows this much of a row's flags or reason; the full tables show all of it


@dataclass(frozen=True)
class Cell:
    """What a table shows in one place: its text, and the number (with its interval) it stands for."""

    text: str
    value: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    compact: bool = False       # in the compact table (the README's, the console's default)
    numeric: bool = True
    short: str = ""             # the title where width is scarce (the console)


@dataclass
class Line:
    row: RowId
    status: str
    cells: Dict[str, Cell]
    flags: List[str] = field(default_factory=list)

    def text(self, key: str) -> str:
        cell = self.cells.get(key)
        return cell.text if cell is not None else ""


@dataclass
class RunTable:
    title: str
    context: List[Tuple[str, str]]          # what every row shares: (name, value), shown once
    columns: List[Column]
    lines: List[Line]
    notes: List[str]                        # one line each
    verdicts: List[Verdict]
    legend: List[Tuple[str, str]]           # (flag, what it means and what to do) for the flags present
    machine: str = ""
    run_path: str = ""

    def visible(self, compact: bool) -> List[Column]:
        """The columns of the compact or the full table, less those every line leaves empty."""
        cols = [c for c in self.columns if c.compact or not compact]
        return [c for c in cols if any(line.text(c.key) not in ("", "–") for line in self.lines) or c.key == "backend"]


def _stage_cell(s: Optional[Dict[str, Any]], spread: bool = False) -> Cell:
    if not s:
        return Cell("–")
    text = ms(s["median_ms"]) + (f" ({ms(s['p90_ms'])}, {ms(s['p99_ms'])})" if spread else "")
    return Cell(text, float(s["median_ms"]), _num(s.get("median_ci_low_ms")), _num(s.get("median_ci_high_ms")))


def _num(v: Any) -> Optional[float]:
    try:
        return None if v in ("", None) else float(v)
    except (TypeError, ValueError):
        return None


def _ratio_cell(s: Optional[Dict[str, Any]]) -> Cell:
    if not s or s.get("ratio") in ("", None):
        return Cell("–")
    if s.get("reference") == s["row"].key:
        return Cell("1 (reference)", 1.0, 1.0, 1.0)
    r, lo, hi = float(s["ratio"]), float(s["ratio_ci_low"]), float(s["ratio_ci_high"])
    return Cell(f"{r:.3f} ({lo:.3f}-{hi:.3f})", r, lo, hi)


def _flags_of(line: Dict[str, Any]) -> List[str]:
    """The row's flags, each once, in the legend's order."""
    found = {f for stage in STAGES for f in str((line.get(stage) or {}).get("flags", "")).split()}
    return sorted(found, key=lambda f: (list(FLAGS).index(f) if f in FLAGS else len(FLAGS), f))


def _short(text: str, limit: int = MAX_REASON) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _memory(line: Dict[str, Any], gpu: bool) -> Cell:
    """MiB once loaded: GPU memory for rows on a GPU, host memory otherwise."""
    fp = line.get("footprint") or {}
    key = "gpu_mib_loaded" if gpu else "host_mib_loaded"
    v = _num(fp.get(key))
    return Cell("–" if v is None else (f"{v:.0f}" if v >= 10 else f"{v:.1f}"), v)


def is_sweep(run: RunData) -> bool:
    return len({int(s["batch"]) for s in run.summary}) > 1


def build(run: RunData) -> RunTable:
    """The run's table model: every row of summary.csv, compact and full columns, notes and verdicts."""
    pivoted = pivot(run.summary)
    sweep = is_sweep(run)
    ref = reference_name(run.summary)
    has_ratio = any(s.get("ratio") not in ("", None) for s in run.summary)
    extra = footprint_headers(run.summary)
    columns = [Column("backend", "backend", True, False), Column("variant", "variant", True, False)]
    columns += [Column("batch", "batch", True)] if sweep else []
    # one device (input, threads...) for every row: said once, on the context line; several: a compact column
    varies = lambda get: len({get(p) for p in pivoted}) > 1  # noqa: E731
    columns += [Column("on", "device", True, False)] if varies(lambda p: p["row"].device) else []
    columns += [Column("in", "input", True, False)] if varies(lambda p: p["row"].input) else []
    columns += [Column("thr", "threads", True)] if len({str(p.get("threads") or "") for p in pivoted
                                                        if "total" in p}) > 1 else []
    columns += [Column("opt", "options", True, False)] if varies(lambda p: p["row"].options) else []
    groups = {run.row(p["row"]).group for p in pivoted if run.row(p["row"]) is not None}
    # rows measured in the same interleaved rounds: the ones whose ratios are paired
    columns += [Column("grp", "rounds shared", True, False)] if len(groups - {""}) > 1 else []
    columns += [Column("status", "status", False, False), Column("device", "device, precision", False, False),
                Column("threads", "threads", False)]
    columns += [Column("total", "total ms", True, short="total"), Column("preprocess", "pre ms"), Column("inference", "inference ms", True, short="infer."),
                Column("postprocess", "post ms")]
    columns += [Column("spread", "total ms p90, p99")]
    columns += [Column("ratio", f"vs {ref} (95% CI)", True)] if has_ratio else []
    columns += [Column("images_per_s", "images/s", True, short="img/s"), Column("memory", "MiB", True)]
    columns += [Column(f"fp:{h}", h) for h in extra]
    columns += [Column("flags", "flags", True, False)]
    lines = []
    for p in pivoted:
        rid: RowId = p["row"]
        row = run.row(rid)
        reason = row.reason if row is not None else p.get("reason", "")
        gpu = str(rid.device).startswith("cuda")
        t = p.get("total")
        cells = {"backend": Cell(rid.backend), "variant": Cell(variant_cell(run, rid)), "batch": Cell(str(rid.batch)),
                 "on": Cell(rid.device), "in": Cell(rid.input), "thr": Cell(str(p.get("threads") or "–")),
                 "opt": Cell(rid.options.replace("+", ", ") or "–"),
                 "grp": Cell((row.group if row is not None else "") or "–"),
                 "status": Cell(status_cell(p["status"], reason)), "device": Cell(_device(p, rid)),
                 "threads": Cell(str(p.get("threads") or "–"))}
        for stage in STAGES:
            cells[stage] = _stage_cell(p.get(stage))
        cells["spread"] = Cell(f"{ms(t['p90_ms'])}, {ms(t['p99_ms'])}" if t else "–")
        cells["ratio"] = _ratio_cell(p.get("inference"))
        ips = t.get("images_per_s") if t else None
        cells["images_per_s"] = Cell(f"{float(ips):.1f}" if ips not in ("", None) else "–", _num(ips))
        cells["memory"] = _memory(p, gpu)
        for h, text in zip(extra, footprint_cells(p, extra, empty="–")):
            cells[f"fp:{h}"] = Cell(text)
        flags = _flags_of(p)
        if p["status"] != "passed":
            cells["flags"] = Cell(_short(status_cell(p["status"], reason)))
        else:
            cells["flags"] = Cell(_short(", ".join(flags)) or "–")
        lines.append(Line(rid, p["status"], cells, flags))
    present = sorted({f for line in lines for f in line.flags},
                     key=lambda f: (list(FLAGS).index(f) if f in FLAGS else len(FLAGS), f))
    legacy = not any("spread_iqr" in s for s in run.summary)
    legend = [(f, describe(f, legacy)) for f in present]
    return RunTable(title=run.scenario, context=_context(run, lines), columns=columns, lines=lines,
                    notes=_notes(run, ref, has_ratio), verdicts=verdicts(run), legend=legend,
                    machine=machine_label(run.env) if run.env else "an unrecorded machine", run_path=str(run.path))


def _device(p: Dict[str, Any], rid: RowId) -> str:
    for stage in STAGES:
        s = p.get(stage)
        if s and s.get("precision"):
            return f"{rid.device}, {s['precision']}"
    return rid.device


def _context(run: RunData, lines: List[Line]) -> List[Tuple[str, str]]:
    """Columns every row shares, said once: device, input, batch, threads, loops, processes."""
    cfg = run.config
    ctx: List[Tuple[str, str]] = []
    devices = {line.row.device for line in lines}
    if len(devices) == 1:
        ctx.append(("device", devices.pop()))
    inputs = {line.row.input for line in lines}
    if len(inputs) == 1:
        ctx.append(("input", inputs.pop()))
    if any(line.row.threads for line in lines):
        ctx.append(("threads", "pinned to as many cores"))
    batches = {line.row.batch for line in lines}
    if len(batches) == 1:
        ctx.append(("batch", str(batches.pop())))
    threads = {line.text("threads") for line in lines if line.status == "passed"}
    if len(threads) == 1:
        ctx.append(("threads", threads.pop()))
    ctx.append(("loops", f"{cfg.get('loops', '?')} (+{cfg.get('warmup', '?')} warmup)"))
    procs = {int(s.get("processes") or 1) for s in run.summary if int(s.get("n") or 0) > 0 and s.get("processes")}
    if procs:
        ctx.append(("processes per row", "/".join(str(p) for p in sorted(procs))))
    return ctx


def _notes(run: RunData, ref: str, has_ratio: bool) -> List[str]:
    notes = ["Times: medians in ms per batch; the full tables add preprocess, postprocess, p90 and p99."]
    if has_ratio:
        notes.append(f"vs {ref}: inference time over the reference row's, with its 95% interval "
                     "(see How to read the numbers).")
    if run.meta.get("status") not in (None, "complete"):
        notes.append(f"Run status: {run.meta.get('status')}: {_short(run.meta.get('reason', ''), 200)}")
    return notes


# ---------------------------------------------------------------------------------------------
# Verdicts: the fastest row at total and inference, only where the interval says so
# ---------------------------------------------------------------------------------------------

def pair_interval(run: RunData, a: RowId, b: RowId, stage: int) -> Interval:
    """Row b's time at `stage` over row a's, with its 95% interval (paired where they shared rounds)."""
    ra, rb = run.row(a), run.row(b)
    assert ra is not None and rb is not None
    paired = bool(ra.group) and ra.group == rb.group
    return ratio_ci(rb.samples_ns[:, stage] / 1e6, ra.samples_ns[:, stage] / 1e6, rb.rounds, ra.rounds,
                    paired=paired, a_processes=rb.processes, b_processes=ra.processes)


def verdicts(run: RunData) -> List[Verdict]:
    """At the run's smallest batch: the fastest total among rows timed for latency, and the fastest inference
    among rows whose stages are host intervals (retinabench.report.speed ranks the same groups)."""
    rows = [r for r in run.ordered_rows() if r.passed and r.id.backend not in BASELINE_BACKENDS]
    if not rows:
        return []
    batch = min(r.id.batch for r in rows)
    at = [r for r in rows if r.id.batch == batch]

    def timing(r: Any) -> str:
        return (r.result.settings.timing if r.result.settings is not None else "") or "staged"

    out = []
    for stage, members in (("total", [r for r in at if timing(r) != "throughput"]),
                           ("inference", [r for r in at if timing(r) == "staged" and not
                                          (r.result.settings is not None and r.result.settings.device_stages)])):
        i = STAGES.index(stage)
        names = [r.id.name + (f" b{batch}" if is_sweep(run) else "") for r in members]
        medians = [float(np.median(r.samples_ns[:, i])) for r in members]
        v = rank(stage, names, medians, lambda x, y, m=members, i=i: pair_interval(run, m[x].id, m[y].id, i))
        if v is not None:
            out.append(v)
    return out
