"""A run's summaries, written from its rows: summary.csv/.md, samples.csv.gz, detections.json.

summary.csv is the stable machine-readable face of a run: one line per row and stage, with the
row's identity columns (backend, variant, input, batch, max_batch, device), its statistics, its
validity flags, and (runs recorded since rows had them) its footprint: memory and start-up per row
(FOOTPRINT_COLUMNS, from retinabench.records.Footprint). samples.csv.gz holds every measured sample
in long format; detections.json the faces per row. Every file is written through the store (atomically).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any, Dict, List, Optional

import numpy as np

from retinabench.config import Scenario
from retinabench.harness.loop import STAGES
from retinabench.report.run_accuracy import write_accuracy
from retinabench.report.run_data import BASELINE_BACKENDS
from retinabench.records import Footprint, RowId
from retinabench.report.flags import FLAGS as FLAG_DEFS
from retinabench.report.flags import (LEGACY_FLAGS, SHORT_WINDOW_S, WARMUP_LIMIT, WARMUP_MIN_MS,  # noqa: F401
                                      describe, head_drift, relative_iqr, unsteady)
from retinabench.report.stats import (STAGE_SUM_TOL, Measurement, drift, host_below_gpu, median_ci,
                                      process_spread_matters, process_stats, ratio_ci, round_stats, stage_sum_error)
from retinabench.store import RowResult, RunStore

# A row's memory and start-up (records.Footprint), at the end of every line of a passed row; empty in
# runs recorded before footprints were (and the tables then leave their columns out). Rows of several
# worker processes give the processes' medians, and the range of load_s.
FOOTPRINT_COLUMNS = ["host_mib_baseline", "host_mib_loaded", "host_mib_load_peak", "host_mib_peak", "host_mib_source",
                     "gpu_mib_loaded", "gpu_mib_peak", "gpu_mib_source",
                     "torch_reserved_mib_loaded", "torch_reserved_mib_peak", "model_mib",
                     "load_s", "load_import_s", "load_read_s", "load_convert_s", "load_build_s",
                     "load_stage_build_s", "load_harness_s", "load_whole_s",
                     "first_call_ms", "first_call", "first_loop_ms"]
# Processes, spread and contention (runs recorded since rows had several processes): what the row's
# interval covers, how steady its loops were, and what other programs did while it measured.
PROCESS_COLUMNS = ["processes", "load_s_min", "load_s_max", "process_spread", "process_within", "process_ratio",
                   "spread_iqr", "warmup_drift", "rewarm_drift", "contention_cores_median", "contention_cores_max",
                   "steal_s", "chunks", "chunks_replaced", "chunks_contended", "ratio_run_spread",
                   "megapixels", "speedup", "parallel_efficiency", "key", "options"]

# The first columns are those of runs before rounds existed, in their order; new ones come after.
SUMMARY_COLUMNS = ["backend", "variant", "input", "batch", "max_batch", "stage", "n", "mean_ms", "median_ms",
                   "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "cv", "per_image_median_ms",
                   "images_per_s", "status", "flags", "threads", "precision", "device", "gpu_util_mean_pct",
                   "warmup", "drift", "stage_sum_err", "gpu_time_median_ms",
                   "rounds", "group", "median_ci_low_ms", "median_ci_high_ms", "round_cv", "round_drift",
                   "round_spread", "reference", "ratio", "ratio_ci_low", "ratio_ci_high", "ratio_paired",
                   "gpu_window_s", "timing"] + FOOTPRINT_COLUMNS + PROCESS_COLUMNS

# What each flag in summary.csv's `flags` column means (the validity legend of summary.md), for runs
# recorded before the flags were calibrated and since (retinabench.report.flags).
FLAGS = {**LEGACY_FLAGS, **{k: describe(k) for k in FLAG_DEFS}}


def reference_rows(rows: List[RowResult], reference: Optional[str]) -> Dict[RowId, RowResult]:
    """Each row's reference: the passed row of the `reference` backend at the same input and batch
    (its default variant where it has several; the first in the run's order otherwise)."""
    if not reference:
        return {}
    refs = [r for r in rows if r.passed and r.id.backend == reference]
    out = {}
    for r in rows:
        same = [x for x in refs if (x.id.input, x.id.batch) == (r.id.input, r.id.batch)]
        same.sort(key=lambda x: x.id.variant != "default")
        if same:
            out[r.id] = same[0]
    return out


def _ratio_columns(r: RowResult, ref: Optional[RowResult], stage: int, run_spread: float = 0.0) -> Dict[str, Any]:
    """The ratio of the row's median to its reference's at one stage, with its 95% interval."""
    if ref is None:
        return {}
    if ref.id == r.id:
        return {"reference": ref.key, "ratio": 1.0, "ratio_ci_low": 1.0, "ratio_ci_high": 1.0, "ratio_paired": True}
    paired = bool(r.group) and r.group == ref.group
    iv = ratio_ci(r.samples_ns[:, stage], ref.samples_ns[:, stage], r.rounds, ref.rounds, paired=paired,
                  a_processes=r.processes, b_processes=ref.processes, run_spread=run_spread)
    return {"reference": ref.key, "ratio": iv.estimate, "ratio_ci_low": iv.low, "ratio_ci_high": iv.high,
            "ratio_paired": iv.paired}


def baseline_spreads(rows: List[RowResult]) -> Dict[Any, List[float]]:
    """(input, batch, group) -> the `empty` row's relative IQR per stage: the machine's own jitter in those
    rounds, which `unsteady` compares a row's against (retinabench.report.flags)."""
    out: Dict[Any, List[float]] = {}
    for r in rows:
        if r.passed and r.id.backend in BASELINE_BACKENDS:
            out[(r.id.input, r.id.batch, r.group)] = [relative_iqr(r.samples_ns[:, i]) for i in range(len(STAGES))]
    return out


def chunk_starts(r: RowResult) -> Any:
    """(first sample of each process, first sample of each later chunk within a process): where warmup
    and re-warm loops ended."""
    n = len(r.samples_ns)
    procs = r.processes if r.processes is not None else np.zeros(n, np.int32)
    rounds = r.rounds if r.rounds is not None else np.zeros(n, np.int32)
    change_p = np.flatnonzero(np.diff(procs) != 0) + 1
    change_r = np.flatnonzero((np.diff(rounds) != 0) & (np.diff(procs) == 0)) + 1
    return np.concatenate([[0], change_p]).astype(int), change_r.astype(int)


def process_columns(r: RowResult) -> Dict[str, Any]:
    """The row-level columns of PROCESS_COLUMNS: processes, load range, contention (the spread columns
    are per stage)."""
    res = r.result
    cols: Dict[str, Any] = {"processes": len(res.processes) or 1}
    # the footprint's load_s (import + read + convert + build), as the load_s column: the processes' median
    loads = [(p.get("footprint") or {}).get("load_s") for p in res.processes]
    loads = [v for v in loads if v is not None]
    if loads:
        cols.update(load_s_min=min(loads), load_s_max=max(loads))
    chunks = [c for c in res.contention if "wall_s" in c]
    kept = [c for c in chunks if not c.get("replaced")]
    if chunks:
        cores = [float(c.get("others_cores") or 0.0) for c in kept] or [0.0]
        cols.update(contention_cores_median=round(float(np.median(cores)), 4),
                    contention_cores_max=round(float(max(cores)), 4),
                    steal_s=round(sum(float(c.get("steal_s") or 0.0) for c in chunks), 3),
                    chunks=len(kept), chunks_replaced=sum(1 for c in chunks if c.get("replaced")),
                    chunks_contended=sum(1 for c in kept if c.get("contended")))
    return cols


def summary_rows(rows: List[RowResult], reference: Optional[str] = None,
                 run_spread: float = 0.0) -> List[Dict[str, Any]]:
    """One dict per row and stage (summary.csv's lines), each with its validity flags and its `row` id.

    With a `reference` backend, every row's median at each stage is also given as a ratio to the
    reference row's, with a 95% interval (paired round by round where both rows were interleaved
    in one group; processes resampled first where rows ran in several)."""
    refs = reference_rows(rows, reference)
    baselines = baseline_spreads(rows)
    out = []
    for r in rows:
        rid, settings = r.id, r.result.settings
        base = {"row": rid, "key": rid.key, "options": rid.options,
                "backend": rid.backend, "variant": rid.variant, "input": rid.input, "batch": rid.batch,
                "max_batch": rid.max_batch, "status": r.status, "device": rid.device,
                "threads": settings.threads if settings is not None else "",
                "precision": settings.precision if settings is not None else "",
                "gpu_util_mean_pct": _gpu_mean(r.result.gpu_samples, r.result.gpu_monitor),
                "gpu_window_s": _round(r.result.gpu_monitor.get("window_s"), 3),
                "timing": settings.timing if settings is not None else ""}
        if not r.passed:
            out.append({**base, "stage": "total", "n": 0, "flags": r.reason})
            continue
        base.update(footprint_columns(r.result.footprint))
        base.update(process_columns(r))
        base["warmup"] = 0 if r.warmup_ns is None else int(len(r.warmup_ns))
        sum_err = stage_sum_error(r.samples_ns)
        # Backends record a GPU time for every call, warmup included: the measured loops are the last ones.
        gpu_ms = (r.result.metrics.get("gpu_time_ms") or [])[-len(r.samples_ns):]
        baseline = None if rid.backend in BASELINE_BACKENDS else baselines.get((rid.input, rid.batch, r.group))
        process_starts, round_starts = chunk_starts(r)
        for i, stage in enumerate(STAGES):
            x = r.samples_ns[:, i]
            m = Measurement.from_ns(x)
            flags = []
            ms = x / 1e6
            ci = median_ci(ms, r.rounds, r.processes)
            rs = round_stats(ms, r.rounds)
            ps = process_stats(ms, r.rounds, r.processes)
            spread = relative_iqr(x)
            per_process = len(x) // max(1, len(process_starts))
            warm = head_drift(x, process_starts, max(1, min(10, per_process // 4)))
            chunk = len(x) // max(1, len(process_starts) + len(round_starts))
            rewarm = head_drift(x, np.sort(np.concatenate([process_starts, round_starts])).astype(int),
                                max(1, min(5, chunk // 4))) if len(round_starts) else 0.0
            extra: Dict[str, Any] = {"rounds": int(rs.get("rounds", 1)), "group": r.group,
                                     "median_ci_low_ms": ci.low, "median_ci_high_ms": ci.high,
                                     "spread_iqr": round(spread, 4), "warmup_drift": round(warm, 4),
                                     "rewarm_drift": round(rewarm, 4),
                                     **_ratio_columns(r, refs.get(r.id), i, run_spread)}
            if refs.get(r.id) is not None and r.processes is not None:
                extra["ratio_run_spread"] = run_spread
            if rs:
                extra.update(round_cv=round(rs["round_cv"], 4), round_drift=round(rs["round_drift"], 4),
                             round_spread=round(rs["round_spread"], 3))
            # The shared host stages are the same numpy code in every row: their spread is the machine's,
            # shown in the columns; a row's own flags are judged on the work that is its own. The `empty`
            # row runs no network: it is the harness's floor, judged by nothing but the bug flags.
            on_device = bool(settings is not None and settings.device_stages)
            own = (stage in ("inference", "total") or on_device) and rid.backend not in BASELINE_BACKENDS
            if ps:
                extra.update(process_spread=round(ps["process_spread"], 4),
                             process_within=round(ps["process_within"], 4), process_ratio=round(ps["process_ratio"], 3))
                # the processes are judged where the ratio column is: inference (a host-stage row's total adds
                # the shared stages, whose layout effects are the machine's)
                if own and (stage == "inference" or on_device) and process_spread_matters(ps):
                    flags.append("process-spread")
            # against the empty row's same stage; for inference, its total (its inference is a no-op call)
            jitter = baseline[STAGES.index("total") if stage == "inference" else i] if baseline else None
            if own and unsteady(spread, jitter):
                flags.append("unsteady")
            long_enough = own and m.median_ms > WARMUP_MIN_MS
            if long_enough and abs(warm) > WARMUP_LIMIT:
                flags.append("warmup-short")
            if long_enough and abs(rewarm) > WARMUP_LIMIT:
                flags.append("rewarm-short")
            if r.overlaps:
                flags.append("overlap")
            if stage == "total":
                extra["stage_sum_err"] = round(sum_err, 6)
                # e2e and throughput rows' stage columns are CUDA-event times: they need not add up
                if sum_err > STAGE_SUM_TOL and base["timing"] in ("staged", ""):
                    flags.append("stages!=total")
                if r.result.gpu_monitor.get("util_mean_pct") is not None and \
                        float(r.result.gpu_monitor.get("window_s") or 0.0) < SHORT_WINDOW_S:
                    flags.append("short-window")
                if base.get("chunks_contended"):
                    flags.append("contended")
            if stage == "inference" and len(gpu_ms):
                extra["gpu_time_median_ms"] = float(np.median(gpu_ms))
                # staged rows only: an e2e or throughput row's inference column is the CUDA-event time itself
                if base["timing"] in ("staged", "") and host_below_gpu(x, gpu_ms):
                    flags.append("host<gpu")
            mp = megapixels(rid.input)
            if mp is not None:
                extra["megapixels"] = round(mp, 6)
            out.append({**base, "stage": stage, **m.to_dict(), "cv": round(m.cv, 4),
                        "per_image_median_ms": m.median_ms / rid.batch,
                        "images_per_s": (1000.0 * rid.batch / m.median_ms) if m.median_ms > 0 else "",
                        "drift": round(drift(x), 4), **extra, "flags": " ".join(flags)})
    add_thread_scaling(out)
    return out


def megapixels(label: str) -> Any:
    try:
        w, h = (int(v) for v in str(label).split("x"))
    except ValueError:
        return None
    return w * h / 1e6


def add_thread_scaling(lines: List[Dict[str, Any]]) -> None:
    """Rows swept over threads: each stage line's speed-up over the same configuration at its fewest threads,
    and the parallel efficiency (speed-up / thread ratio)."""
    by: Dict[Any, List[Dict[str, Any]]] = {}
    for ln in lines:
        rid = ln["row"]
        if rid.threads and ln.get("median_ms") not in (None, ""):
            by.setdefault((rid.backend, rid.variant, rid.device, rid.input, rid.batch, rid.options, ln["stage"]),
                          []).append(ln)
    for group in by.values():
        if len(group) < 2:
            continue
        base = min(group, key=lambda ln: ln["row"].threads)
        for ln in group:
            speedup = float(base["median_ms"]) / float(ln["median_ms"]) if float(ln["median_ms"]) > 0 else 0.0
            ln["speedup"] = round(speedup, 4)
            ln["parallel_efficiency"] = round(speedup / (ln["row"].threads / base["row"].threads), 4)


def footprint_columns(fp: Optional[Footprint]) -> Dict[str, Any]:
    """summary.csv's footprint columns of one row ({} for rows recorded before footprints were)."""
    if fp is None:
        return {}
    cols: Dict[str, Any] = {"host_mib_baseline": fp.host_baseline_mib, "host_mib_loaded": fp.host_loaded_mib,
                            "host_mib_load_peak": fp.host_load_peak_mib, "host_mib_peak": fp.host_peak_mib,
                            "host_mib_source": _host_source(fp),
                            "gpu_mib_loaded": fp.gpu_loaded_mib, "gpu_mib_peak": fp.gpu_peak_mib,
                            "gpu_mib_source": fp.sources.get("gpu", ""),
                            "torch_reserved_mib_loaded": fp.torch_reserved_loaded_mib,
                            "torch_reserved_mib_peak": fp.torch_reserved_peak_mib, "model_mib": fp.model_mib,
                            "first_call_ms": fp.first_call_ms, "first_call": fp.first_call,
                            "first_loop_ms": fp.first_loop_ms}
    for k in ("load_s", "load_import_s", "load_read_s", "load_convert_s", "load_build_s", "load_stage_build_s",
              "load_harness_s", "load_whole_s"):
        cols[k] = getattr(fp, k)
    return {k: ("" if v is None else v) for k, v in cols.items()}


def _host_source(fp: Footprint) -> str:
    """How the host peak was read (retinabench.harness.footprint): vmhwm-reset (the measured loops'),
    vmhwm-lifetime (since the worker started), ru_maxrss-lifetime; else how the rest was ('vmrss')."""
    return fp.sources.get("host_peak") or fp.sources.get("host", "")


def validity_table(summary: List[Dict[str, Any]], fmt: str = "simple") -> str:
    """Per measured row: loops, warmup, CV, drift, stage-sum error, GPU time and flags, with a legend."""
    from tabulate import tabulate
    lines: Dict[Any, Dict[str, Any]] = {}
    for s in summary:
        if int(s.get("n") or 0) == 0:
            continue
        line = lines.setdefault(s["row"], {"flags": {}})
        line[s["stage"]] = s
        for f in str(s.get("flags", "")).split():
            line["flags"].setdefault(f, []).append(s["stage"])
    table = []
    for rid, line in lines.items():
        t, inf = line.get("total", {}), line.get("inference", {})
        gpu = inf.get("gpu_time_median_ms", "")
        table.append([rid.backend, rid.variant, rid.device, rid.input, rid.batch, t.get("n", ""), t.get("warmup", ""),
                      _pct(t.get("cv")), _pct(inf.get("cv")), _pct(t.get("drift")),
                      _pct(t.get("stage_sum_err")) if t.get("timing") in ("staged", "", None) else "n/a (CUDA events)",
                      f"{float(gpu):.3f}" if gpu not in ("", None) else "",
                      " ".join(f"{f}({','.join(st)})" for f, st in sorted(line["flags"].items()))])
    headers = ["backend", "variant", "device", "input", "batch", "loops", "warmup", "CV total", "CV inference",
               "drift total", "stage sum err", "GPU time ms", "flags"]
    present = sorted({f for line in lines.values() for f in line["flags"]})
    legend = "\n".join(f"- {FLAG_DEFS[f].line(f) if f in FLAG_DEFS else f + ': ' + describe(f)}" for f in present)
    return tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True) + \
        (f"\n\nFlags:\n{legend}" if legend else "\n\nNo flags: nothing to act on.")


def _pct(v: Any) -> str:
    try:
        return f"{100 * float(v):.1f}%"
    except (TypeError, ValueError):
        return ""


def _gpu_mean(samples: Optional[List[Dict[str, float]]], monitor: Dict[str, Any]) -> Any:
    """NVML's mean utilisation over the measured windows (older runs: the mean of their samples)."""
    if monitor.get("util_mean_pct") is not None:
        return round(float(monitor["util_mean_pct"]), 1)
    if not samples or monitor:
        return ""
    return round(float(np.mean([s["gpu_util_pct"] for s in samples])), 1)


def _round(v: Any, digits: int) -> Any:
    return "" if v is None else round(float(v), digits)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def write_summary(store: RunStore, rows: List[RowResult], reference: Optional[str] = None,
                  run_spread: float = 0.0) -> List[Dict[str, Any]]:
    summary = summary_rows(rows, reference, run_spread)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for s in summary:
        w.writerow({k: _fmt(s.get(k, "")) for k in SUMMARY_COLUMNS})
    store.write_file("summary.csv", buf.getvalue())
    from retinabench.report.tables import stage_table
    store.write_file("summary.md", stage_table(summary, fmt="github") + "\n\n## Validity\n\n"
                     + validity_table(summary, fmt="github") + "\n")
    return summary


def write_samples(store: RunStore, rows: List[RowResult]) -> None:
    """Every measured sample in long format; gzip with a fixed mtime so reruns are byte-identical."""
    buf = io.StringIO()
    buf.write("backend,variant,input,batch,max_batch,device,loop,stage,ms\n")
    for r in rows:
        if r.samples_ns is None:
            continue
        i = r.id
        prefix = f"{i.backend},{i.variant},{i.input},{i.batch},{i.max_batch},{i.device}"
        ms = r.samples_ns / 1e6
        for loop in range(ms.shape[0]):
            for s, stage in enumerate(STAGES):
                buf.write(f"{prefix},{loop},{stage},{ms[loop, s]:.6f}\n")
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buf.getvalue().encode())
    store.write_file("samples.csv.gz", raw.getvalue())


def write_detections(store: RunStore, rows: List[RowResult]) -> None:
    """Per row key, its identity and `faces_per_image`: one list of faces per image of the batch (last loop)."""
    data = {r.key: {**r.id.to_json(), "status": r.status, "faces_per_image": r.result.faces}
            for r in rows if r.status == "passed"}
    store.write_file("detections.json", json.dumps(data, indent=1))


def summarise_run(store: RunStore, rows: List[RowResult], scenario: Scenario) -> List[Dict[str, Any]]:
    """Every report a run folder holds, from its rows (the runner's `summarise` hook); the summary lines."""
    summary = write_summary(store, rows, scenario.reference, scenario.run_spread)
    write_samples(store, rows)
    write_detections(store, rows)
    write_accuracy(store, rows, scenario.reference)
    if any(r.id.threads for r in rows) or len({r.id.input for r in rows}) > 1:   # a sweep: its scaling figures
        try:
            import matplotlib
            matplotlib.use("Agg")
            from retinabench.report.run_data import load_run
            from retinabench.report.scaling import write_scaling
            write_scaling(load_run(store.path))
        except Exception as e:   # a figure is not worth the run: said, and the run's files stay
            store.write_file("scaling-error.txt", f"{type(e).__name__}: {e}\n")
    return summary
