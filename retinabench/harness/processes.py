"""A row measured by several worker processes, one after another: their records merged into the row's.

After pyperf: a process is one draw of memory layout, thread placement and whatever the runtime
chose when it started, and a single process's timing depends on that draw. So a row's loops are
split between `processes` worker processes (retinabench.harness.schedule), each measuring a block
of the interleaved rounds in its own scratch folder (`WorkDir.process(k)`). When the row's last
process has finished, `merge` writes the row's own scratch files as one worker would have:

- samples.npz: every process's samples in order, with `processes` (the process of each sample)
  beside `rounds`; warmup, re-warm and replaced (contended) chunks likewise;
- result.json: the first process's identity fields (versions, settings, model), the last one's
  faces and outputs, the per-call metrics and GPU samples of all of them in order, and `load_s`
  and the footprint as the processes' medians, with every process's own figures in `processes`;
- stderr.txt / stdout.txt: each process's, under a header line naming it.

One process merges to exactly its own record (`processes` stays empty): `processes: 1` is the
harness as it was.
"""
from __future__ import annotations

import statistics
from dataclasses import fields, replace
from typing import Any, Dict, List, Optional, Sequence

from retinabench.records import Footprint, WorkerResult
from retinabench.store import WorkDir, atomic_write, npz_bytes

SAMPLE_ARRAYS = ("samples", "warmup", "rewarm", "replaced")
PER_CALL_METRICS = ("gpu_time_ms", "gpu_preprocess_ms", "gpu_postprocess_ms")


class ProcessPart:
    """One finished process of a row: its record, its scratch folder, its pid."""

    def __init__(self, index: int, result: WorkerResult, work: WorkDir, pid: Optional[int] = None):
        self.index, self.result, self.work, self.pid = index, result, work, pid


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    given = [float(v) for v in values if v is not None]
    return statistics.median(given) if given else None


def median_footprint(prints: Sequence[Optional[Footprint]]) -> Optional[Footprint]:
    """Field by field, the median of the processes' figures; text fields and readings from the first."""
    given = [fp for fp in prints if fp is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]
    out = replace(given[0])
    for f in fields(Footprint):
        values = [getattr(fp, f.name) for fp in given]
        if all(v is None or isinstance(v, (int, float)) for v in values) and any(v is not None for v in values):
            setattr(out, f.name, _median(values))
    return out


def merge_gpu_monitor(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The NVML windows of several processes as one record: windows and their length summed,
    utilisation the mean of every in-window sample (each process's mean weighted by its sample count)."""
    given = [r for r in records if r]
    if len(given) <= 1:
        return dict(given[0]) if given else {}
    out = dict(given[0])
    out["windows"] = [w for r in given for w in r.get("windows") or []]
    out["window_s"] = round(sum(float(r.get("window_s") or 0.0) for r in given), 6)
    counts = [int(r.get("samples_in_windows") or 0) for r in given]
    out["samples_in_windows"] = sum(counts)
    weighted = [(float(r["util_mean_pct"]), n) for r, n in zip(given, counts) if r.get("util_mean_pct") is not None]
    total = sum(n for _, n in weighted)
    out["util_mean_pct"] = (sum(v * n for v, n in weighted) / total) if total else \
        (statistics.mean(v for v, _ in weighted) if weighted else None)
    out["clock_samples"] = [c for r in given for c in r.get("clock_samples") or []]
    out["short_window"] = all(bool(r.get("short_window")) for r in given) and \
        not any(r.get("utilisation_from") for r in given)
    notes = [str(r.get("note") or "") for r in given]
    out["note"] = "; ".join(dict.fromkeys(n for n in notes if n))
    for key in ("utilisation_from", "measured_windows"):
        found = [r[key] for r in given if r.get(key)]
        if found:
            out[key] = found[0] if key == "measured_windows" else "; ".join(dict.fromkeys(found))
    return out


def merge_metrics(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Per-call lists joined in process order; any other metric as the first process recorded it."""
    out = dict(records[0])
    for key in PER_CALL_METRICS:
        lists = [r.get(key) for r in records]
        if all(isinstance(v, list) for v in lists):
            out[key] = [x for v in lists for x in v]
    return out


def merge_results(parts: Sequence[ProcessPart]) -> WorkerResult:
    """The row's record from its processes' (every one passed)."""
    if len(parts) == 1:
        return parts[0].result
    results = [p.result for p in parts]
    first, last = results[0], results[-1]
    per_process = []
    for p in parts:
        r = p.result
        per_process.append({"process": p.index, "pid": p.pid, "load_s": r.load_s,
                            "chunks": len(r.windows), "windows": r.windows,
                            "footprint": r.footprint.to_json() if r.footprint is not None else {}})
    return replace(
        first,
        load_s=_median([r.load_s for r in results]),
        faces=last.faces,
        gpu_samples=[s for r in results for s in r.gpu_samples],
        gpu_monitor_error="; ".join(dict.fromkeys(r.gpu_monitor_error for r in results if r.gpu_monitor_error)),
        gpu_monitor=merge_gpu_monitor([r.gpu_monitor for r in results]),
        metrics=merge_metrics([r.metrics for r in results]),
        windows=[w for r in results for w in r.windows],
        footprint=median_footprint([r.footprint for r in results]),
        contention=[c for r in results for c in r.contention],
        processes=per_process)


def merge_samples(parts: Sequence[ProcessPart]) -> Dict[str, Any]:
    """Every process's sample arrays joined in process order, with the process of each sample."""
    import numpy as np
    arrays = [p.work.read_samples() for p in parts]
    out: Dict[str, Any] = {}
    for name in SAMPLE_ARRAYS:
        got = [a[name] for a in arrays if name in a]
        if got:
            out[name] = np.concatenate(got).astype(np.int64)
    for name in ("rounds", "rewarm_rounds", "replaced_rounds"):
        got = [a[name] for a in arrays if name in a]
        if got:
            out[name] = np.concatenate(got).astype(np.int32)
    out["processes"] = np.concatenate([np.full(len(a["samples"]), p.index, np.int32) for p, a in zip(parts, arrays)])
    if "replaced" in out:
        out["replaced_processes"] = np.concatenate(
            [np.full(len(a.get("replaced", ())), p.index, np.int32) for p, a in zip(parts, arrays)])
    return out


def merge(parts: Sequence[ProcessPart], into: WorkDir) -> WorkerResult:
    """Write the row's scratch files (samples, outputs, result, stderr/stdout) from its processes'."""
    into.path.mkdir(parents=True, exist_ok=True)
    result = merge_results(parts)
    atomic_write(into.samples, npz_bytes(**merge_samples(parts)))
    outputs = parts[-1].work.outputs
    if outputs.is_file():
        atomic_write(into.outputs, outputs.read_bytes())
    for name in ("stderr", "stdout"):
        atomic_write(getattr(into, name), joined_logs([getattr(p.work, name) for p in parts], len(parts)))
    into.write_result(result)
    return result


def joined_logs(paths: Sequence[Any], processes: int) -> bytes:
    """Each process's log, under a header line where there are several."""
    out = b""
    for k, path in enumerate(paths):
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        if processes > 1:
            out += f"--- process {k + 1} of {processes} ---\n".encode()
        out += data
    return out
