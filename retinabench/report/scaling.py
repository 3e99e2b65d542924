"""How cost grows: a sweep's rows as scaling curves and fitted figures (retinabench.config's `sweep`).

- against threads: each configuration's median at every thread count, the speed-up over its fewest
  threads and the parallel efficiency (speed-up / thread ratio: 1 is perfect scaling);
- against frame size: each configuration's median per stage against the input's megapixels, with a
  least-squares line (numpy.polyfit): ms per megapixel, the intercept (what does not grow with the
  frame) and R^2. Preprocessing and postprocessing get their own lines: the stages the original
  table showed growing with the batch;
- against batch: images/s per batch size (retinabench.report.plots.batch_scaling draws it).

`best` picks, per backend, the configuration with the lowest per-image time (or the highest images/s)
that meets a p99 bound and a memory bound, and the Pareto set of time against memory. Everything
here reads a run folder's summary.csv only: measured nothing, regenerated like every table.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure

from retinabench.harness.loop import STAGES
from retinabench.report.format import md_table, ms, wrap
from retinabench.report.run_data import BASELINE_BACKENDS, RunData
from retinabench.report.tables import pivot
from retinabench.store import atomic_write


def megapixels(label: str) -> Optional[float]:
    """'1280x896' -> 1.147 (megapixels of the network input); None for 'native' and the like."""
    try:
        w, h = (int(v) for v in label.split("x"))
    except ValueError:
        return None
    return w * h / 1e6


def _name(rid: Any) -> str:
    return rid.backend if rid.variant == "default" else f"{rid.backend} ({rid.variant})"


def _threads(p: Dict[str, Any]) -> Optional[int]:
    try:
        return int(p.get("threads"))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Fit:
    slope: float        # ms per megapixel
    intercept: float    # ms
    r2: float
    points: int


def fit_line(x: Sequence[float], y: Sequence[float]) -> Optional[Fit]:
    """y = slope * x + intercept by least squares, with its R^2; None with fewer than two distinct x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(np.unique(x)) < 2:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_res, ss_tot = float(np.sum((y - pred) ** 2)), float(np.sum((y - y.mean()) ** 2))
    return Fit(float(slope), float(intercept), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, int(len(x)))


def _passed(run: RunData) -> List[Dict[str, Any]]:
    return [p for p in pivot(run.summary) if "total" in p and p["backend"] not in BASELINE_BACKENDS]


def thread_scaling(run: RunData) -> List[Dict[str, Any]]:
    """Per configuration (everything but threads) and thread count: the total median, the speed-up over the
    configuration's fewest threads and the parallel efficiency."""
    by: Dict[Tuple, List[Dict[str, Any]]] = {}
    for p in _passed(run):
        rid = p["row"]
        t = _threads(p)
        if t is None:
            continue
        by.setdefault((_name(rid), rid.device, rid.input, rid.batch, rid.options), []).append(p)
    out = []
    for (name, device, inp, batch, options), ps in by.items():
        if len({_threads(p) for p in ps}) < 2:
            continue
        ps.sort(key=_threads)
        t0, base = _threads(ps[0]), float(ps[0]["total"]["median_ms"])
        for p in ps:
            t, m = _threads(p), float(p["total"]["median_ms"])
            speedup = base / m
            out.append({"config": name, "device": device, "input": inp, "batch": batch, "options": options,
                        "threads": t, "total_ms": m, "inference_ms": float(p["inference"]["median_ms"]),
                        "speedup": speedup, "efficiency": speedup / (t / t0)})
    return out


def size_fits(run: RunData) -> List[Dict[str, Any]]:
    """Per configuration (everything but the input size) and stage: ms per megapixel, intercept, R^2."""
    by: Dict[Tuple, List[Dict[str, Any]]] = {}
    for p in _passed(run):
        rid = p["row"]
        if megapixels(rid.input) is None:
            continue
        by.setdefault((_name(rid), rid.device, _threads(p), rid.batch, rid.options), []).append(p)
    out = []
    for (name, device, threads, batch, options), ps in by.items():
        x = [megapixels(p["row"].input) for p in ps]
        for stage in STAGES:
            fit = fit_line(x, [float(p[stage]["median_ms"]) for p in ps])
            if fit is not None:
                out.append({"config": name, "device": device, "threads": threads, "batch": batch, "options": options,
                            "stage": stage, "ms_per_megapixel": fit.slope, "intercept_ms": fit.intercept,
                            "r2": fit.r2, "sizes": fit.points})
    return out


SCALING_COLUMNS = ["kind", "config", "device", "input", "threads", "batch", "options", "stage", "total_ms",
                   "inference_ms", "speedup", "efficiency", "ms_per_megapixel", "intercept_ms", "r2", "sizes"]


def write_scaling(run: RunData) -> List[Path]:
    """scaling.csv and the scaling plots, for a run whose rows vary in threads or input size."""
    threads, sizes = thread_scaling(run), size_fits(run)
    written = []
    if not threads and not sizes:
        return written
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SCALING_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for kind, lines in (("threads", threads), ("size", sizes)):
        for ln in lines:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v))
                        for k, v in {"kind": kind, **ln}.items()})
    atomic_write(run.path / "scaling.csv", buf.getvalue())
    written.append(run.path / "scaling.csv")
    for name, fig in (("threads.png", threads_plot(threads)) if threads else (None, None),
                      ("sizes.png", sizes_plot(run)) if sizes else (None, None)):
        if name:
            path = run.path / "plots" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            out = io.BytesIO()
            fig.savefig(out, format="png", dpi=100, metadata={"Software": None})
            atomic_write(path, out.getvalue())
            written.append(path)
    return written


def threads_plot(lines: List[Dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    series: Dict[str, List[Tuple[int, float, float]]] = {}
    for ln in lines:
        series.setdefault(f"{ln['config']} {ln['input']}", []).append((ln["threads"], ln["total_ms"], ln["efficiency"]))
    for label, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label)
    ax.set_xlabel("threads")
    ax.set_ylabel("median total time (ms)")
    ax.set_yscale("log")
    ax.set_title("Time against threads")
    ax2.set_xlabel("threads")
    ax2.set_ylabel("parallel efficiency (speed-up / threads)")
    ax2.set_ylim(0, 1.2)
    ax2.set_title("Parallel efficiency")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    ax2.legend(fontsize=6)
    return fig


def sizes_plot(run: RunData) -> Figure:
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    by: Dict[str, List[Tuple[float, Dict[str, Any]]]] = {}
    for p in _passed(run):
        mp = megapixels(p["row"].input)
        if mp is not None:
            by.setdefault(f"{_name(p['row'])} t{p.get('threads')}", []).append((mp, p))
    for ax, stage in zip(axes, STAGES):
        for label, pts in by.items():
            pts.sort(key=lambda q: q[0])
            x = [q[0] for q in pts]
            y = [float(q[1][stage]["median_ms"]) for q in pts]
            line = ax.plot(x, y, marker="o", label=label)[0]
            fit = fit_line(x, y)
            if fit is not None:
                xs = np.linspace(0, max(x), 20)
                ax.plot(xs, fit.slope * xs + fit.intercept, linestyle=":", color=line.get_color())
        ax.set_xlabel("input megapixels")
        ax.set_ylabel(f"median {stage} (ms)")
        ax.set_title(f"{stage} against frame size (dotted: least-squares line)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    return fig


def compact_scaling(run: RunData, link_base: Path) -> str:
    """The README's scaling section: per runtime, the fitted ms per megapixel (total and each stage) at each
    thread count, and the parallel efficiency at the most threads per frame size; the plots."""
    from retinabench.report.format import relative_link
    threads, sizes = thread_scaling(run), size_fits(run)
    parts = []
    # the parallel efficiency at the most threads, per frame size: a column of the fits where both exist
    most = max((ln["threads"] for ln in threads), default=None)
    inputs = list(dict.fromkeys(ln["input"] for ln in threads))
    eff: Dict[str, Dict[str, float]] = {}
    for ln in threads:
        if ln["threads"] == most:
            eff.setdefault(ln["config"], {})[ln["input"]] = ln["efficiency"]

    def eff_cell(config: str) -> str:
        by = eff.get(config, {})
        return " / ".join(f"{100 * by[i]:.0f}" if i in by else "–" for i in inputs) + "%"
    eff_head = f"efficiency at {most} threads"
    if sizes:
        fits: Dict[Tuple, Dict[str, Any]] = {}
        for ln in sizes:
            fits.setdefault((ln["config"], ln["threads"]), {})[ln["stage"]] = ln
        table = []
        for (config, t), by in fits.items():
            tot = by.get("total")
            row = [config, t or "–"] + [f"{by[s]['ms_per_megapixel']:.3g}" if s in by else "–"
                                        for s in ("total", "preprocess", "inference", "postprocess")]
            row += [f"{tot['intercept_ms']:.3g}" if tot else "–", f"{tot['r2']:.3f}" if tot else "–"]
            if threads:
                row.append(eff_cell(config) if t == most and config in eff else "–")
            table.append(row)
        headers = ["runtime", "threads", "total", "pre", "inference", "post", "intercept ms", "R^2"]
        if threads:
            headers.append(eff_head)
        intro = ("Milliseconds per megapixel of the input, fitted over the swept frame sizes (least squares)"
                 + (f"; the last column: the parallel efficiency (speed-up over the fewest threads, per thread) at "
                    f"{' / '.join(inputs)}:" if threads else ":"))
        parts += [wrap(intro), "",
                  md_table(headers, table), ""]
    elif threads:
        table = [[c] + [f"{by[i]:.0%}" if i in by else "–" for i in inputs] for c, by in eff.items()]
        parts += [f"Parallel efficiency at {most} threads (speed-up over the fewest threads, per thread):", "",
                  md_table(["runtime"] + inputs, table), ""]
    for name in ("threads.png", "sizes.png"):
        if (run.path / "plots" / name).is_file():
            parts.append(f"![{name[:-4]}]({relative_link(run.path / 'plots' / name, link_base)})")
    return "\n".join(parts).rstrip()


def scaling_section(run: RunData, link_base: Path) -> str:
    """The page's scaling section: every thread count's speed-up and efficiency, every fit."""
    from retinabench.report.format import relative_link
    threads, sizes = thread_scaling(run), size_fits(run)
    parts = []
    if threads:
        table = [[ln["config"], ln["input"], ln["threads"], ms(ln["total_ms"]), f"{ln['speedup']:.2f}x",
                  f"{ln['efficiency']:.0%}"] for ln in threads]
        parts += ["Against threads (pinned to as many cores):", "",
                  md_table(["runtime", "input", "threads", "total ms", "speed-up", "efficiency"], table), ""]
    if sizes:
        table = [[ln["config"], ln["threads"], ln["stage"], f"{ln['ms_per_megapixel']:.3g}", f"{ln['intercept_ms']:.3g}",
                  f"{ln['r2']:.3f}"] for ln in sizes if ln["stage"] in ("preprocess", "inference", "postprocess", "total")]
        parts += ["Against frame size (least squares over the swept sizes):", "",
                  md_table(["runtime", "threads", "stage", "ms per megapixel", "intercept ms", "R^2"], table), ""]
    for name in ("threads.png", "sizes.png"):
        if (run.path / "plots" / name).is_file():
            parts.append(f"![{name[:-4]}]({relative_link(run.path / 'plots' / name, link_base)})")
    return "\n".join(parts).rstrip()


# ---------------------------------------------------------------------------------------------
# best: the configuration that meets the constraints, per backend
# ---------------------------------------------------------------------------------------------

def candidates(run: RunData) -> List[Dict[str, Any]]:
    out = []
    for p in _passed(run):
        rid = p["row"]
        fp = p.get("footprint") or {}
        mib = fp.get("gpu_mib_loaded") if str(rid.device).startswith("cuda") else fp.get("host_mib_loaded")
        t = p["total"]
        out.append({"backend": rid.backend, "config": _name(rid), "row": rid, "input": rid.input, "batch": rid.batch,
                    "threads": _threads(p), "options": rid.options, "per_image_ms": float(t["per_image_median_ms"]),
                    "images_per_s": float(t["images_per_s"]), "p99_ms": float(t["p99_ms"]),
                    "mib": float(mib) if mib not in ("", None) else None})
    return out


def pareto(points: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Configurations no other beats on both per-image time and memory (where memory is known)."""
    known = [p for p in points if p["mib"] is not None]
    front = [p for p in known if not any(q["per_image_ms"] <= p["per_image_ms"] and q["mib"] <= p["mib"] and
                                         (q["per_image_ms"] < p["per_image_ms"] or q["mib"] < p["mib"]) for q in known)]
    return sorted(front, key=lambda p: p["per_image_ms"])


def best(run: RunData, max_p99: Optional[float] = None, max_mib: Optional[float] = None,
         objective: str = "latency") -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(per backend, its best configuration meeting the bounds; the Pareto set of those meeting them)."""
    ok = [c for c in candidates(run) if (max_p99 is None or c["p99_ms"] <= max_p99) and
          (max_mib is None or (c["mib"] is not None and c["mib"] <= max_mib))]
    key = (lambda c: (c["per_image_ms"], c["row"])) if objective == "latency" else (lambda c: (-c["images_per_s"], c["row"]))
    chosen: Dict[str, Dict[str, Any]] = {}
    for c in sorted(ok, key=key):
        chosen.setdefault(c["backend"], c)
    return sorted(chosen.values(), key=key), pareto(ok)


def best_text(run: RunData, max_p99: Optional[float], max_mib: Optional[float], objective: str) -> str:
    chosen, front = best(run, max_p99, max_mib, objective)
    bounds = ", ".join(b for b in (f"p99 <= {max_p99:g} ms" if max_p99 is not None else "",
                                   f"memory <= {max_mib:g} MiB" if max_mib is not None else "") if b) or "no bounds"
    def row(c: Dict[str, Any]) -> List[Any]:
        return [c["config"], c["input"], c["threads"] or "–", c["batch"], c["options"].replace("+", ", ") or "–",
                ms(c["per_image_ms"]), f"{c['images_per_s']:.1f}", ms(c["p99_ms"]),
                f"{c['mib']:.0f}" if c["mib"] is not None else "–"]
    headers = ["backend", "input", "threads", "batch", "options", "ms per image", "images/s", "p99 ms", "MiB"]
    text = [f"Best configuration per backend ({'lowest per-image time' if objective == 'latency' else 'highest images/s'}"
            f", {bounds}; run {run.path.name}):", ""]
    text += [md_table(headers, [row(c) for c in chosen]) if chosen else "No configuration meets the bounds.", ""]
    text += ["Pareto set (per-image time against memory):", "",
             md_table(headers, [row(c) for c in front]) if front else "–"]
    return "\n".join(text)
