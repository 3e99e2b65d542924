"""The results folder of a run: written row by row as rows finish, summarised at the end.

results/<UTC timestamp>-<scenario>/
  run.json          scenario name, status (complete | partial | incomplete) and reason, row order
  config.yaml       the resolved scenario;  env.json: the environment fingerprint
  rows/<key>.json   one row: status, reason, versions, settings, detections, GPU samples
  rows/<key>.npz    its raw per-loop stage times in ns (measured and warmup)
  samples.csv.gz    every measured sample, long format (backend, ..., loop, stage, ms)
  summary.csv/.md   one line per row and stage: the stable machine-readable face of a run
  detections.json   faces per row;  accuracy.csv: agreement with the reference backend
Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

from retinabench.harness.loop import STAGES
from retinabench.errors import BenchError
from retinabench.report.stats import (DRIFT_LIMIT, NOISY_CV, STAGE_SUM_TOL, Measurement, drift, drifting,
                                      host_below_gpu, stage_sum_error)

SUMMARY_COLUMNS = ["backend", "variant", "input", "batch", "max_batch", "stage", "n", "mean_ms", "median_ms",
                   "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "cv", "per_image_median_ms",
                   "images_per_s", "status", "flags", "threads", "precision", "device", "gpu_util_mean_pct",
                   "warmup", "drift", "stage_sum_err", "gpu_time_median_ms"]

# What each flag in summary.csv's `flags` column means (the validity legend of summary.md).
FLAGS = {
    "noisy": f"coefficient of variation above {NOISY_CV:.0%}",
    "drift": f"the first 50 measured loops' median differs from the rest's by more than {DRIFT_LIMIT:.0%} "
             "(warmup too short)",
    "stages!=total": f"preprocess + inference + postprocess differ from the loop's total by more than {STAGE_SUM_TOL:.0%}",
    "host<gpu": "host-clock inference median below the CUDA-event GPU time: the stage did not wait for the GPU",
}


@dataclass
class RowResult:
    key: str
    backend: str
    variant: str
    input: str
    batch: int
    max_batch: int
    status: str                      # passed | failed | unavailable
    reason: str = ""
    info: Dict[str, Any] = field(default_factory=dict)
    samples_ns: Optional[np.ndarray] = None
    warmup_ns: Optional[np.ndarray] = None

    def header(self) -> Dict[str, Any]:
        return {"key": self.key, "backend": self.backend, "variant": self.variant, "input": self.input,
                "batch": self.batch, "max_batch": self.max_batch, "status": self.status, "reason": self.reason}


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def create_run_dir(results_dir: Path, scenario_name: str) -> Path:
    """A new, never-shared folder: mkdir fails if it exists, so concurrent runs pick different names."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in scenario_name)
    for i in range(1000):
        path = results_dir / (f"{stamp}-{safe}" + (f"-{i + 1}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError("could not create a unique run folder")


def write_run_meta(run_dir: Path, meta: Dict[str, Any]) -> None:
    atomic_text(run_dir / "run.json", json.dumps(meta, indent=1, default=str))


def read_run_meta(run_dir: Path) -> Dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


def write_config(run_dir: Path, scenario_dict: Dict[str, Any]) -> None:
    atomic_text(run_dir / "config.yaml", yaml.safe_dump(scenario_dict, sort_keys=False))


def write_row(run_dir: Path, row: RowResult) -> None:
    (run_dir / "rows").mkdir(exist_ok=True)
    if row.samples_ns is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, samples=row.samples_ns, warmup=row.warmup_ns if row.warmup_ns is not None else np.zeros((0, 4), np.int64))
        atomic_write(run_dir / "rows" / f"{row.key}.npz", buf.getvalue())
    atomic_text(run_dir / "rows" / f"{row.key}.json", json.dumps({**row.header(), "info": row.info}, indent=1, default=str))


def read_rows(run_dir: Path) -> Dict[str, RowResult]:
    """The finished rows of a run folder; a damaged row file is an error naming it, never a guess."""
    rows = {}
    for p in sorted((run_dir / "rows").glob("*.json")):
        try:
            d = json.loads(p.read_text())
            r = RowResult(str(d["key"]), d["backend"], d["variant"], d["input"], int(d["batch"]),
                          int(d["max_batch"]), d["status"], d.get("reason", ""), d.get("info", {}))
            npz = p.with_suffix(".npz")
            if npz.exists():
                with np.load(npz, allow_pickle=False) as z:  # never unpickle what a folder holds
                    r.samples_ns, r.warmup_ns = z["samples"], z["warmup"]
                if r.samples_ns.ndim != 2 or r.samples_ns.shape[1] != len(STAGES):
                    raise ValueError(f"samples have shape {r.samples_ns.shape}")
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BenchError(f"{p}: damaged row file ({msg})") from None
        rows[r.key] = r
    return rows


def summary_rows(rows: List[RowResult]) -> List[Dict[str, Any]]:
    """One dict per row and stage (summary.csv's lines), each with its validity flags."""
    out = []
    for r in rows:
        settings = r.info.get("settings", {}) or {}
        base = {"backend": r.backend, "variant": r.variant, "input": r.input, "batch": r.batch,
                "max_batch": r.max_batch, "status": r.status, "threads": settings.get("threads", ""),
                "precision": settings.get("precision", ""), "device": settings.get("device", ""),
                "gpu_util_mean_pct": _gpu_mean(r.info.get("gpu_samples"))}
        if r.samples_ns is None or r.status != "passed" or len(r.samples_ns) == 0:
            out.append({**base, "stage": "total", "n": 0, "flags": r.reason})
            continue
        base["warmup"] = 0 if r.warmup_ns is None else int(len(r.warmup_ns))
        sum_err = stage_sum_error(r.samples_ns)
        # Backends record a GPU time for every call, warmup included: the measured loops are the last ones.
        gpu_ms = ((r.info.get("extra") or {}).get("gpu_time_ms") or [])[-len(r.samples_ns):]
        for i, stage in enumerate(STAGES):
            m = Measurement.from_ns(r.samples_ns[:, i])
            flags = []
            if m.noisy:
                flags.append("noisy")
            if drifting(r.samples_ns[:, i]):
                flags.append("drift")
            extra: Dict[str, Any] = {}
            if stage == "total":
                extra["stage_sum_err"] = round(sum_err, 6)
                if sum_err > STAGE_SUM_TOL:
                    flags.append("stages!=total")
            if stage == "inference" and len(gpu_ms):
                extra["gpu_time_median_ms"] = float(np.median(gpu_ms))
                if host_below_gpu(r.samples_ns[:, i], gpu_ms):
                    flags.append("host<gpu")
            out.append({**base, "stage": stage, **m.to_dict(), "cv": round(m.cv, 4),
                        "per_image_median_ms": m.median_ms / r.batch,
                        "images_per_s": (1000.0 * r.batch / m.median_ms) if m.median_ms > 0 else "",
                        "drift": round(drift(r.samples_ns[:, i]), 4), **extra, "flags": " ".join(flags)})
    return out


def validity_table(summary: List[Dict[str, Any]], fmt: str = "simple") -> str:
    """Per measured row: loops, warmup, CV, drift, stage-sum error, GPU time and flags, with a legend."""
    from tabulate import tabulate
    lines: Dict[tuple, Dict[str, Any]] = {}
    for s in summary:
        if int(s.get("n") or 0) == 0:
            continue
        key = (s["backend"], s["variant"], s["input"], s["batch"], s["max_batch"])
        line = lines.setdefault(key, {"flags": {}})
        line[s["stage"]] = s
        for f in str(s.get("flags", "")).split():
            line["flags"].setdefault(f, []).append(s["stage"])
    table = []
    for key, line in lines.items():
        t, inf = line.get("total", {}), line.get("inference", {})
        gpu = inf.get("gpu_time_median_ms", "")
        table.append([*key[:4], t.get("n", ""), t.get("warmup", ""), _pct(t.get("cv")), _pct(inf.get("cv")),
                      _pct(t.get("drift")), _pct(t.get("stage_sum_err")),
                      f"{float(gpu):.3f}" if gpu not in ("", None) else "",
                      " ".join(f"{f}({','.join(st)})" for f, st in sorted(line["flags"].items()))])
    headers = ["backend", "variant", "input", "batch", "loops", "warmup", "CV total", "CV inference",
               "drift total", "stage sum err", "GPU time ms", "flags"]
    legend = "; ".join(f"{k}: {v}" for k, v in FLAGS.items())
    return tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True) + f"\n\nFlags: {legend}."


def _pct(v: Any) -> str:
    try:
        return f"{100 * float(v):.1f}%"
    except (TypeError, ValueError):
        return ""


def _gpu_mean(samples: Optional[List[Dict[str, float]]]) -> Any:
    if not samples:
        return ""
    return round(float(np.mean([s["gpu_util_pct"] for s in samples])), 1)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_summary(run_dir: Path, rows: List[RowResult]) -> List[Dict[str, Any]]:
    summary = summary_rows(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for s in summary:
        w.writerow({k: _fmt(s.get(k, "")) for k in SUMMARY_COLUMNS})
    atomic_text(run_dir / "summary.csv", buf.getvalue())
    from retinabench.report.tables import stage_table
    atomic_text(run_dir / "summary.md", stage_table(summary, fmt="github") + "\n\n## Validity\n\n"
                + validity_table(summary, fmt="github") + "\n")
    return summary


def write_samples(run_dir: Path, rows: List[RowResult]) -> None:
    """Every measured sample in long format; gzip with a fixed mtime so reruns are byte-identical."""
    buf = io.StringIO()
    buf.write("backend,variant,input,batch,max_batch,loop,stage,ms\n")
    for r in rows:
        if r.samples_ns is None:
            continue
        prefix = f"{r.backend},{r.variant},{r.input},{r.batch},{r.max_batch}"
        ms = r.samples_ns / 1e6
        for loop in range(ms.shape[0]):
            for i, stage in enumerate(STAGES):
                buf.write(f"{prefix},{loop},{stage},{ms[loop, i]:.6f}\n")
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(buf.getvalue().encode())
    atomic_write(run_dir / "samples.csv.gz", raw.getvalue())


def write_detections(run_dir: Path, rows: List[RowResult]) -> None:
    """Per row, `faces_per_image`: one list of faces for each image of the batch (last loop)."""
    data = {r.key: {**r.header(), "faces_per_image": r.info.get("faces", [])} for r in rows if r.status == "passed"}
    atomic_text(run_dir / "detections.json", json.dumps(data, indent=1))
