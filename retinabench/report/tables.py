"""Tables people read: one line per backend row with each stage's median (p90), Ultralytics-style status.

Runs whose rows recorded a footprint (retinabench.records.Footprint) get four more columns, host MiB,
GPU MiB (where some row ran on a GPU), load s and cold-start ms, with `footprint_note` saying what
they mean; runs recorded before footprints were render as they always have.
"""
from __future__ import annotations

from typing import Any, Dict, List

from tabulate import tabulate

from retinabench.harness.loop import STAGES
from retinabench.records import RowId


def _cell(s: Dict[str, Any]) -> str:
    return f"{s['median_ms']:.3f} ({s['p90_ms']:.3f})"


def pivot(summary: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """summary.csv-shaped lines (one per stage, each with its `row` id) -> one dict per row, stages as columns."""
    rows: Dict[RowId, Dict[str, Any]] = {}
    for s in summary:
        rid: RowId = s["row"]
        row = rows.setdefault(rid, {"row": rid, "backend": rid.backend, "variant": rid.variant, "input": rid.input,
                                    "batch": rid.batch, "max_batch": rid.max_batch, "status": s.get("status", ""),
                                    "flags": set(), "threads": s.get("threads", ""),
                                    "gpu_util": s.get("gpu_util_mean_pct", "")})
        if int(s.get("n") or 0) == 0:
            row["reason"] = s.get("flags", "")
            continue
        row.setdefault("footprint", s)   # a measured line: it holds the row's footprint columns (summary.csv)
        row[s["stage"]] = s
        row["flags"].update(f for f in str(s.get("flags", "")).split() if f)
    return list(rows.values())


def ratio_cell(s: Dict[str, Any]) -> str:
    """'0.830 (0.812-0.851)': a stage's ratio to the reference row with its 95% interval; '' without one."""
    if s.get("ratio") in ("", None):
        return ""
    if s.get("reference") == s["row"].key:
        return "1 (reference)"
    return f"{float(s['ratio']):.3f} ({float(s['ratio_ci_low']):.3f}-{float(s['ratio_ci_high']):.3f})"


def has_ratios(summary: List[Dict[str, Any]]) -> bool:
    return any(s.get("ratio") not in ("", None) for s in summary)


def reference_name(summary: List[Dict[str, Any]]) -> str:
    """The reference rows' backend (and variant), as a column header names it."""
    keys = {s["reference"] for s in summary if s.get("reference")}
    refs = [s["row"] for s in summary if s["row"].key in keys]
    return refs[0].name if refs else "reference"


# ---------------------------------------------------------------------------------------------
# Footprint: memory and start-up per row
# ---------------------------------------------------------------------------------------------

def _given(v: Any) -> bool:
    return v not in ("", None)


def has_footprint(summary: List[Dict[str, Any]]) -> bool:
    """Some measured row recorded its memory or start-up (runs before footprints existed: no)."""
    return any(int(s.get("n") or 0) > 0 and (_given(s.get("host_mib_loaded")) or _given(s.get("load_s")))
               for s in summary)


def has_gpu_rows(summary: List[Dict[str, Any]]) -> bool:
    return any(str(s["row"].device).startswith("cuda") for s in summary)


def footprint_headers(summary: List[Dict[str, Any]]) -> List[str]:
    """The footprint columns this run's table gets: none for a run without footprints."""
    if not has_footprint(summary):
        return []
    return ["host MiB"] + (["GPU MiB"] if has_gpu_rows(summary) else []) + ["load s", "cold-start ms"]


def _mib(v: Any) -> str:
    v = float(v)
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def mib_cell(loaded: Any, peak: Any) -> str:
    """'182 (190)': MiB once loaded (at the peak of the measured loops); '' where neither was measured."""
    if not _given(loaded) and not _given(peak):
        return ""
    return (_mib(loaded) if _given(loaded) else "–") + (f" ({_mib(peak)})" if _given(peak) else "")


def _num(v: Any) -> str:
    """About three significant digits (0.0123, 1.23, 12.3, 123); '' where not given."""
    if not _given(v):
        return ""
    v = float(v)
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def caffe_gpu_not_run(r: Dict[str, Any]) -> bool:
    """A Caffe row on a GPU without a GPU figure: its GPU path is written but not run here."""
    fp = r.get("footprint") or {}
    return r["backend"] == "caffe" and str(r["row"].device).startswith("cuda") and not _given(fp.get("gpu_mib_loaded"))


def _load_cell(fp: Dict[str, Any]) -> str:
    """'0.14 (0.12-0.31)': the processes' median load time with its range, where a row had several."""
    text = _num(fp.get("load_s"))
    lo, hi = fp.get("load_s_min"), fp.get("load_s_max")
    if text and _given(lo) and _given(hi) and float(hi) > float(lo):
        text += f" ({_num(lo)}-{_num(hi)})"
    return text


def footprint_cells(r: Dict[str, Any], headers: List[str], empty: str = "") -> List[str]:
    """A pivoted row's cells under `footprint_headers` (`empty` where a figure is missing)."""
    fp = r.get("footprint") or {}
    cells = {"host MiB": mib_cell(fp.get("host_mib_loaded"), fp.get("host_mib_peak")),
             "GPU MiB": ("not run here" if caffe_gpu_not_run(r) else
                         mib_cell(fp.get("gpu_mib_loaded"), fp.get("gpu_mib_peak"))),
             "load s": _load_cell(fp), "cold-start ms": _num(fp.get("first_call_ms"))}
    return [cells[h] or empty for h in headers]


def footprint_note(summary: List[Dict[str, Any]]) -> str:
    """What the footprint columns mean, in this run's terms ('' for a run without them)."""
    headers = footprint_headers(summary)
    if not headers:
        return ""
    rows = pivot(summary)
    fps = [r.get("footprint") or {} for r in rows]
    host_sources = {fp.get("host_mib_source") for fp in fps if _given(fp.get("host_mib_source"))}
    host = ("*host MiB*: the worker's resident set (VmRSS) once the row was loaded, above the worker's own "
            "baseline taken at its start, before any runtime was imported (the interpreter and the harness's "
            "record modules; on GPU rows also NVML's library), and in brackets its peak (VmHWM) during the "
            "measured loops above the same baseline. It holds the runtime's libraries and allocations, the "
            "model's weights, and the harness's own per-row work (numpy, the decoded images, the decoder): the "
            "`empty` row, which loads no runtime, shows that share.")
    if host_sources - {"vmhwm-reset"}:
        host += (" Where /proc/self/clear_refs could not be written the peak is the worker's lifetime peak "
                 "(summary.csv's host_mib_source).")
    parts = [host]
    if "GPU MiB" in headers:
        gpu = ("*GPU MiB*: what NVML charges the worker's process on the row's device once loaded (its CUDA "
               "context and every allocator in it, not only torch's), and in brackets the largest reading at "
               "load, at the measured chunks' ends and at finish (NVML keeps no per-process peak); summary.csv "
               "adds torch's own reserved memory (torch_reserved_mib_*) for rows that ran torch.")
        if any(fp.get("gpu_mib_source") == "nvml-device-delta" for fp in fps):
            gpu += (" Rows that NVML did not list by pid (a container's pid namespace) show the device's memory "
                    "in use above its value before the runtime started, without a peak.")
        parts.append(gpu)
    parts.append("*load s*: from importing the backend's runtime to the model ready for its first call: the "
                 "runtime's import, reading the model's files, importing its graph into our IR where the backend "
                 "converts it, and building the runtime's session, engine or compiled module (summary.csv's "
                 "load_*_s columns give each part and the harness's own remainder; exports, engines and compiled "
                 "kernels cached by earlier runs are reused). *cold-start ms*: the first call after loading, the "
                 "whole first loop (preprocess, inference, postprocess), beside the warm median in the total "
                 "column; for rows with device stages, the build pass that captures (and compiles) them and runs "
                 "the pipeline once (summary.csv's first_call says which).")
    caffe = [r for r in rows if r["backend"] == "caffe"]
    if caffe or "GPU MiB" in headers:
        text = ""
        if any(not str(r["row"].device).startswith("cuda") for r in caffe):
            text = ("Caffe rows run on the CPU: once loaded their host MiB is mostly pycaffe's import (libcaffe "
                    "and the OpenBLAS linked into it, whose buffers grow with its threads, and its Python "
                    "dependencies) and the net's weights; Caffe allocates its blobs (every layer's output, each "
                    "convolution's im2col buffer) on the first forward, so they show in the peak and in the cold "
                    "start. ")
        text += ("Caffe's GPU path (`device: cuda`, backends/caffe_backend.py) is written but not run here (this "
                 "machine's pycaffe is a CPU-only build)")
        if any(caffe_gpu_not_run(r) for r in caffe):
            text += ", hence *not run here* in its GPU MiB cell"
        parts.append(text + ": the original project's \"about 8 GB of GPU memory\" for Caffe remains unmeasured.")
    return "Footprint, in MiB (2^20 bytes): " + " ".join(parts)


def stage_table(summary: List[Dict[str, Any]], fmt: str = "simple") -> str:
    """Median (p90) in ms per stage; per-image time and images/s from the total; inference against the
    reference; memory and start-up where the run recorded them, with their meaning under the table."""
    ratios = has_ratios(summary)
    extra = footprint_headers(summary)
    headers = ["backend", "variant", "device", "input", "batch", "status", "threads"] + \
              [f"{s} ms" for s in STAGES] + ["per image ms", "images/s", "GPU util %"] + \
              ([f"inference vs {reference_name(summary)} (95% CI)"] if ratios else []) + extra + ["notes"]
    lines = []
    for r in pivot(summary):
        rid: RowId = r["row"]
        head = [r["backend"], r["variant"], rid.device, r["input"], r["batch"], r["status"], r["threads"]]
        if "total" not in r:
            lines.append(head + [""] * (len(STAGES) + 3 + ratios) + footprint_cells(r, extra)
                         + [r.get("reason", "")])
            continue
        t = r["total"]
        lines.append(head + [_cell(r[s]) for s in STAGES]
                     + [f"{t['per_image_median_ms']:.3f}", f"{t['images_per_s']:.1f}", r["gpu_util"]]
                     + ([ratio_cell(r["inference"])] if ratios else []) + footprint_cells(r, extra)
                     + [" ".join(sorted(r["flags"]))])
    table = tabulate(lines, headers=headers, tablefmt=fmt, disable_numparse=True)
    note = footprint_note(summary)
    return table + (f"\n\n{note}" if note else "")
