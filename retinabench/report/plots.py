"""Plots of one run: stage breakdown, batch scaling, GPU utilisation, latency distributions, footprint.

Each plotting function returns a matplotlib Figure built without pyplot (so nothing here touches
global backend state: the CLI renders with Agg, a notebook shows the same Figure inline).
`planned_plots` decides from the data alone which plots a run supports, so the README's image
links never depend on files that happen to exist.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
from matplotlib.figure import Figure

from retinabench.harness.loop import STAGES
from retinabench.report.format import ms, row_label
from retinabench.report.run_data import RunData
from retinabench.report.tables import pivot
from retinabench.store import atomic_write

STAGE_COLOURS = {"preprocess": "#4c72b0", "inference": "#dd8452", "postprocess": "#55a868"}
# PNG metadata without the matplotlib version: the same data gives the same file across upgrades.
_PNG_METADATA: Dict[str, Optional[str]] = {"Software": None}


def _log_if_wide(ax, values) -> None:
    """Log scale when values span more than 20x (a baseline row beside real runtimes spans decades)."""
    v = np.asarray([x for x in values if x > 0], np.float64)
    if v.size and v.max() / v.min() > 20:
        ax.set_yscale("log")


def _passed(run: RunData) -> List[Dict]:
    return [r for r in pivot(run.summary) if "total" in r]


def _label(run: RunData, r: Dict) -> str:
    return row_label(r["backend"], r["variant"], r["batch"] if len(run.batches()) > 1 else None)


def stage_breakdown(run: RunData) -> Figure:
    """Stacked horizontal bars: median preprocess + inference + postprocess per row, each labelled with the
    row's total median as the tables give it (a sum of stage medians is not the median of the totals)."""
    rows = _passed(run)
    fig = Figure(figsize=(8, 1.2 + 0.45 * max(1, len(rows))), layout="constrained")
    ax = fig.add_subplot()
    labels = [_label(run, r) for r in rows]
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for stage in STAGES[:3]:
        widths = np.array([r[stage]["median_ms"] for r in rows])
        ax.barh(y, widths, left=left, color=STAGE_COLOURS[stage], label=stage)
        left += widths
    # the label is the table's total column (the median of the loops' totals), not the bars' sum of medians
    for yi, end, r in zip(y, left, rows):
        ax.annotate(f" {ms(r['total']['median_ms'])} ms", (end, yi), va="center", fontsize=8)
    ax.margins(x=0.12)  # room for the totals
    ax.set_yticks(y, labels)
    ax.invert_yaxis()  # the scenario's first row on top, as in the table
    ax.set_xlabel("median time per batch (ms)")
    ax.set_ylabel("backend")
    ax.set_title(f"Stage breakdown, scenario {run.scenario}")
    fig.legend(loc="outside lower center", ncols=3)
    ax.grid(axis="x", alpha=0.3)
    return fig


def _series(run: RunData) -> Dict[str, List[Dict]]:
    """Passed rows grouped by backend/variant, sorted by batch."""
    out: Dict[str, List[Dict]] = {}
    for r in _passed(run):
        out.setdefault(row_label(r["backend"], r["variant"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["batch"]) for k, v in out.items()}


def batch_scaling(run: RunData) -> Figure:
    """Median latency per batch and images/s against batch size, one line per backend."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    lat, thr = fig.subplots(1, 2)
    lats, thrs = [], []
    for name, rows in _series(run).items():
        b = [r["batch"] for r in rows]
        lats += [r["total"]["median_ms"] for r in rows]
        thrs += [r["total"]["images_per_s"] for r in rows]
        lat.plot(b, lats[-len(rows):], marker="o", label=name)
        thr.plot(b, thrs[-len(rows):], marker="o", label=name)
    _log_if_wide(lat, lats)
    _log_if_wide(thr, thrs)
    batches = run.batches()
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size (images)")
        ax.grid(alpha=0.3)
        ax.legend()
    lat.set_ylabel("median total time per batch (ms)")
    lat.set_title(f"Latency against batch size, {run.scenario}")
    thr.set_ylabel("throughput (images/s, from the median)")
    thr.set_title(f"Throughput against batch size, {run.scenario}")
    return fig


def _gpu_samples(run: RunData, r: Dict) -> List[float]:
    row = run.row(r["row"])
    return [float(s["gpu_util_pct"]) for s in (row.result.gpu_samples if row else [])]


def gpu_utilisation(run: RunData) -> Figure:
    """NVML utilisation during the measured loops against batch size: mean, and the samples' p10-p90."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, rows in _series(run).items():
        pts = [(r["batch"], np.asarray(_gpu_samples(run, r))) for r in rows]
        pts = [(b, s) for b, s in pts if s.size]
        if not pts:
            continue
        b = [p[0] for p in pts]
        mean = np.array([p[1].mean() for p in pts])
        lo = np.array([np.percentile(p[1], 10) for p in pts])
        hi = np.array([np.percentile(p[1], 90) for p in pts])
        ax.errorbar(b, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label=name)
    batches = run.batches()
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(0, 105)
    ax.set_xlabel("batch size (images)")
    ax.set_ylabel("GPU utilisation (% of time a kernel ran, NVML)")
    ax.set_title(f"GPU utilisation against batch size, {run.scenario} (mean, bars: p10-p90 of samples)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def latency_distribution(run: RunData) -> Figure:
    """Box plot of every measured loop's total time per row, p99 marked."""
    rows, data = [], []
    for r in run.ordered_rows():
        if r.passed:
            rows.append(r)
            data.append(r.samples_ns[:, STAGES.index("total")] / 1e6)
    multi = len(run.batches()) > 1
    labels = [r.id.label(batch=multi) for r in rows]
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.8), layout="constrained")
    ax = fig.add_subplot()
    pos = np.arange(1, len(rows) + 1)
    ax.boxplot(data, positions=pos, widths=0.6, showfliers=True, flierprops={"markersize": 3},
               medianprops={"color": "#c44e52"})
    ax.scatter(pos, [np.percentile(d, 99) for d in data], marker="D", color="black", zorder=3, s=18, label="p99")
    ax.plot([], [], color="#c44e52", label="median (box: p25-p75, whiskers: 1.5 IQR)")
    ax.set_xticks(pos, labels, rotation=30, ha="right")
    _log_if_wide(ax, np.concatenate(data) if data else [])
    ax.set_xlabel("backend")
    ax.set_ylabel("total time per batch (ms)")
    counts = sorted({len(d) for d in data}) or [0]
    loops = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    ax.set_title(f"Latency distribution, {run.scenario} ({loops} measured loops per row)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2)
    return fig


LOAD_PART_COLOURS = {"import": "#8172b3", "read": "#937860", "convert": "#da8bc3", "build": "#dd8452",
                     "stage_build": "#c44e52"}


def _footprint_rows(run: RunData) -> List[Dict]:
    """Passed rows that recorded their memory or start-up (retinabench.records.Footprint)."""
    def given(r: Dict, k: str) -> bool:
        return (r.get("footprint") or {}).get(k) not in ("", None)
    return [r for r in _passed(run) if given(r, "host_mib_loaded") or given(r, "load_s")]


def _value(r: Dict, key: str) -> float:
    v = (r.get("footprint") or {}).get(key)
    return 0.0 if v in ("", None) else float(v)


def _memory_panel(ax, rows: List[Dict], labels: List[str], prefix: str, what: str) -> None:
    """Horizontal bars per row: MiB once loaded, and the peak of the measured loops beside it."""
    y = np.arange(len(rows))
    loaded = [_value(r, f"{prefix}_loaded") for r in rows]
    peak = [_value(r, f"{prefix}_peak") for r in rows]
    ax.barh(y - 0.2, loaded, height=0.4, color="#4c72b0", label="loaded")
    ax.barh(y + 0.2, peak, height=0.4, color="#a1c9f4", label="peak, measured loops")
    for yi, v in zip(y, peak):
        if v:
            ax.annotate(f" {v:.0f}", (v, yi + 0.2), va="center", fontsize=7)
    ax.margins(x=0.15)
    ax.set_yticks(y, labels)
    ax.set_xlabel(f"{what} (MiB)")
    ax.set_ylabel("backend")
    ax.grid(axis="x", alpha=0.3)
    _legend_below(ax, 2)


def _legend_below(ax, columns: int) -> None:
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=columns, frameon=False)


def footprint(run: RunData) -> Figure:
    """Per row: host memory and, where measured, GPU memory (loaded, peak), and start-up: the load's
    parts stacked, then the first call (the cold start)."""
    rows = _footprint_rows(run)
    labels = [_label(run, r) for r in rows]
    gpu = any(_value(r, "gpu_mib_loaded") or _value(r, "gpu_mib_peak") for r in rows)
    panels = 3 if gpu else 2
    fig = Figure(figsize=(5.0 * panels, 2.2 + 0.45 * max(1, len(rows))), layout="constrained")
    axes = fig.subplots(1, panels, sharey=True)
    axes[0].invert_yaxis()  # the scenario's first row on top (once: the axes share y)
    _memory_panel(axes[0], rows, labels, "host_mib", "host memory above the worker's pre-import baseline")
    axes[0].set_title("Host memory (resident set)")
    if gpu:
        _memory_panel(axes[1], rows, labels, "gpu_mib", "GPU memory of the worker's process (NVML)")
        axes[1].set_title("GPU memory")
    ax = axes[-1]
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for part, colour in LOAD_PART_COLOURS.items():
        widths = np.array([_value(r, f"load_{part}_s") for r in rows])
        if part == "stage_build" and not widths.any():
            continue
        ax.barh(y, widths, left=left, color=colour, label=part.replace("_", " "))
        left += widths
    # a device-stage row's first call is its stage build pass, already stacked above
    first = np.array([0.0 if _value(r, "load_stage_build_s") else _value(r, "first_call_ms") / 1e3 for r in rows])
    ax.barh(y, first, left=left, color="#55a868", label="first call")
    for yi, total in zip(y, left + first):
        ax.annotate(f" {total:.3g} s", (total, yi), va="center", fontsize=7)
    ax.margins(x=0.15)
    ax.set_yticks(y, labels)
    ax.set_xlabel("seconds from the runtime's import to the first result")
    ax.set_ylabel("backend")
    ax.set_title("Start-up: load parts, then the first call")
    ax.grid(axis="x", alpha=0.3)
    _legend_below(ax, 3)
    fig.suptitle(f"Footprint per backend, scenario {run.scenario}")
    return fig


@dataclass(frozen=True)
class PlotSpec:
    name: str
    file: str
    title: str
    make: Callable[[RunData], Figure]


def planned_plots(run: RunData) -> List[PlotSpec]:
    """The plots this run's data supports, decided from the data alone."""
    passed = [r for r in run.rows.values() if r.status == "passed"]
    if not passed or not _passed(run):
        return []
    specs = [PlotSpec("stages", "stages.png", f"Stage breakdown, {run.scenario}", stage_breakdown)]
    if len(run.batches()) > 1:
        specs.append(PlotSpec("batch", "batch.png", f"Latency and throughput against batch size, {run.scenario}",
                              batch_scaling))
        if any(r.result.gpu_samples for r in passed):
            specs.append(PlotSpec("gpu", "gpu_util.png", f"GPU utilisation against batch size, {run.scenario}",
                                  gpu_utilisation))
    if any(r.passed for r in passed):
        specs.append(PlotSpec("latency", "latency.png", f"Latency distribution, {run.scenario}", latency_distribution))
    if _footprint_rows(run):  # runs recorded before footprints were have none
        specs.append(PlotSpec("footprint", "footprint.png", f"Memory and start-up per backend, {run.scenario}",
                              footprint))
    return specs


def write_plots(run: RunData, out_dir: Optional[Path] = None) -> List[Path]:
    """Render every planned plot as PNG into RUN/plots/ (or out_dir)."""
    out_dir = Path(out_dir) if out_dir is not None else run.path / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in planned_plots(run):
        buf = io.BytesIO()
        spec.make(run).savefig(buf, format="png", dpi=100, metadata=_PNG_METADATA)
        path = out_dir / spec.file
        atomic_write(path, buf.getvalue())
        paths.append(path)
    return paths
