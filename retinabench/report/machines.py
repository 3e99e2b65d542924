"""One report over runs of one scenario from several machines: rows keyed by machine and identity.

People compare GPU types, CPU instances and runtime versions: the same scenario run on each
machine gives one run folder each, and this merges them. A merged row is (machine, RowId); the
machine is what env.json says (retinabench.harness.env.machine_label: GPU, CPU model, cores, ISA).
Runs merge only when they measured the same thing: the same scenario name, input size and model
(its files' sha256); their loops and schedules may differ, and the table says what each used.
Refusals are one line naming the runs and what differs.

    python bench.py report RUN_A RUN_B [...] [--readme README.md]   # the section machines-SCENARIO
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from retinabench.errors import BenchError
from retinabench.harness.env import machine_label
from retinabench.records import RowId
from retinabench.report.format import md_table, ms, relative_link, row_label, status_cell
from retinabench.report.markers import ReadmeUpdate
from retinabench.report.pages import PAGES
from retinabench.report.run_data import BASELINE_BACKENDS, RunData
from retinabench.report.tables import has_ratios, pivot, ratio_cell, reference_name
from retinabench.store import atomic_write


@dataclass(frozen=True)
class MachineRow:
    """A row of a merged report: the machine that measured it and the row's identity there."""

    machine: str
    row: RowId


def machine_of(run: RunData) -> str:
    return machine_label(run.env) if run.env else f"unrecorded machine ({run.path.name})"


def _what(run: RunData) -> Dict[str, object]:
    """What must agree for two runs to be one scenario."""
    inp = run.config.get("input") or {}
    return {"scenario": run.scenario, "input": (inp.get("mode"), inp.get("width"), inp.get("height")),
            "model": run.meta.get("model_sha256") or run.config.get("model")}


def check_mergeable(runs: Sequence[RunData]) -> None:
    """Refuse runs that did not measure the same scenario, in one line."""
    if len(runs) < 2:
        raise BenchError("a report over several machines needs at least two run folders")
    first = _what(runs[0])
    for run in runs[1:]:
        other = _what(run)
        for key in ("scenario", "input", "model"):
            if other[key] != first[key]:
                raise BenchError(f"{run.path} and {runs[0].path} measured different scenarios: {key} "
                                 f"{other[key]!r} there, {first[key]!r} here; only runs of one scenario merge")
    machines = [machine_of(r) for r in runs]
    for i, m in enumerate(machines):
        if m in machines[:i]:
            raise BenchError(f"{runs[i].path} and {runs[machines.index(m)].path} come from one machine ({m}): "
                             "compare them with `bench.py compare` instead")


def merged_lines(runs: Sequence[RunData]) -> List[Tuple[str, RunData, Dict]]:
    """(machine, run, pivoted row) for every row of every run, machine by machine in the order given."""
    out = []
    for run in runs:
        m = machine_of(run)
        out += [(m, run, r) for r in pivot(run.summary)]
    return out


def machines_table(runs: Sequence[RunData]) -> str:
    order = ["total", "preprocess", "inference", "postprocess"]
    ratios = all(has_ratios(r.summary) for r in runs)
    sweep = len({int(s["batch"]) for r in runs for s in r.summary}) > 1
    letters = {machine_of(r): _letter(i) for i, r in enumerate(runs)}   # each machine named once, above the table
    headers = ["machine", "backend", "variant"] + (["batch"] if sweep else []) + ["status", "device"]
    headers += [f"{s} ms" for s in order] + ["images/s"]
    headers += [f"inference vs {reference_name(runs[0].summary)} (95% CI)"] if ratios else []
    lines = []
    for machine, run, r in merged_lines(runs):
        rid: RowId = r["row"]
        row = run.row(rid)
        t = r.get("total")
        line = [letters[machine], r["backend"], r["variant"]] + ([r["batch"]] if sweep else [])
        line += [status_cell(r["status"], row.reason if row is not None else r.get("reason", "")), rid.device]
        line += [f"{ms(r[s]['median_ms'])} ({ms(r[s]['p90_ms'])})" if s in r else "–" for s in order]
        line += [f"{t['images_per_s']:.1f}" if t and t.get("images_per_s") != "" else "–"]
        line += [(ratio_cell(r["inference"]) if "inference" in r else "") or "–"] if ratios else []
        lines.append(line)
    return md_table(headers, lines)


def machines_plot(runs: Sequence[RunData]) -> Figure:
    """Median total time per row, one bar per machine x backend (rows that passed, baselines left out)."""
    bars: List[Tuple[str, float]] = []
    for machine, _, r in merged_lines(runs):
        if "total" in r and r["backend"] not in BASELINE_BACKENDS:
            label = f"{row_label(r['backend'], r['variant'], r['batch'] if len(runs[0].batches()) > 1 else None)}"
            bars.append((f"{label}\n{machine[:48]}", float(r["total"]["median_ms"])))
    fig = Figure(figsize=(9, 1.2 + 0.5 * max(1, len(bars))), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(bars))
    machines = sorted({label.split("\n", 1)[1] for label, _ in bars})
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for yi, (label, value) in zip(y, bars):
        m = machines.index(label.split("\n", 1)[1])
        ax.barh(yi, value, color=colours[m % len(colours)])
        ax.annotate(f" {value:.3g} ms", (value, yi), va="center", fontsize=8)
    ax.set_yticks(y, [label for label, _ in bars], fontsize=7)
    ax.invert_yaxis()
    if bars and max(v for _, v in bars) / max(min(v for _, v in bars), 1e-9) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.15)
    ax.set_xlabel("median total time per batch (ms)")
    ax.set_title(f"{runs[0].scenario} on {len(runs)} machines")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_path(runs: Sequence[RunData]) -> Path:
    """Where the merged plot lives: beside the first run's own plots."""
    return runs[0].path / "plots" / f"machines-{runs[0].scenario}.png"


def write_machines_plot(runs: Sequence[RunData]) -> Path:
    path = plot_path(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    machines_plot(runs).savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write(path, buf.getvalue())
    return path


def _letter(i: int) -> str:
    return chr(ord("A") + i) if i < 26 else f"M{i + 1}"


def machines_section(runs: Sequence[RunData], link_base: Path) -> str:
    check_mergeable(runs)
    parts = [f"Scenario **{runs[0].scenario}** on {len(runs)} machines, one table (rows grouped by machine):"]
    for i, run in enumerate(runs):
        link = relative_link(run.path, link_base)
        cfg = run.config
        parts.append(f"- **{_letter(i)}**: {machine_of(run)}; run folder [`{link}`]({link}), {cfg.get('loops', '?')} loops after "
                     f"{cfg.get('warmup', '?')} warmup, schedule {cfg.get('schedule', 'sequential')}, measured at "
                     f"{run.env.get('timestamp_utc', 'an unrecorded time')}.")
    parts += ["", machines_table(runs), "",
              "Times are per batch, in milliseconds: median (p90). A row's ratio to the reference compares it with "
              "the reference row measured on the same machine, in the same run.",
              "", f"![{runs[0].scenario} on {len(runs)} machines]({relative_link(plot_path(runs), link_base)})"]
    return "\n".join(parts)


def machines_sections(runs: Sequence[RunData], link_base: Path) -> Dict[str, str]:
    return {f"machines-{runs[0].scenario}": machines_section(runs, link_base)}


def machines_page_path(readme_dir: Path, runs: Sequence[RunData]) -> Path:
    return Path(readme_dir) / PAGES / f"machines-{runs[0].scenario}.md"


def machines_page(runs: Sequence[RunData], readme_dir: Path) -> str:
    """docs/scenarios/machines-SCENARIO.md, whole: the merged table, its links relative to the page."""
    where = machines_page_path(readme_dir, runs).parent
    return "\n".join([f"# {runs[0].scenario} on {len(runs)} machines", "",
                      "<!-- generated by `bench.py report RUN_A RUN_B --readme README.md`: do not edit -->", "",
                      machines_section(runs, where), ""])


def machines_update(readme: Path, runs: Sequence[RunData]) -> ReadmeUpdate:
    """The merged page beside the README (the README links to it; a marker there, if any, is rewritten too)."""
    readme_dir = Path(readme).parent
    path = machines_page_path(readme_dir, runs)
    text = machines_page(runs, readme_dir)
    changed = not path.is_file() or path.read_text(encoding="utf-8") != text
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"))
    return ReadmeUpdate([str(path)], [], [str(path)] if changed else [])
