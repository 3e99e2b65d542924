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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import yaml

from retinabench.harness.loop import STAGES
from retinabench.report.stats import Measurement, drift

SUMMARY_COLUMNS = ["backend", "variant", "input", "batch", "max_batch", "stage", "n", "mean_ms", "median_ms",
                   "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "cv", "per_image_median_ms",
                   "images_per_s", "status", "flags", "threads", "precision", "device", "gpu_util_mean_pct"]


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
            (path / "rows").mkdir()
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
    if row.samples_ns is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, samples=row.samples_ns, warmup=row.warmup_ns if row.warmup_ns is not None else np.zeros((0, 4), np.int64))
        atomic_write(run_dir / "rows" / f"{row.key}.npz", buf.getvalue())
    atomic_text(run_dir / "rows" / f"{row.key}.json", json.dumps({**row.header(), "info": row.info}, indent=1, default=str))


def read_rows(run_dir: Path) -> Dict[str, RowResult]:
    rows = {}
    for p in sorted((run_dir / "rows").glob("*.json")):
        d = json.loads(p.read_text())
        r = RowResult(d["key"], d["backend"], d["variant"], d["input"], int(d["batch"]), int(d["max_batch"]),
                      d["status"], d.get("reason", ""), d.get("info", {}))
        npz = p.with_suffix(".npz")
        if npz.exists():
            with np.load(npz) as z:
                r.samples_ns, r.warmup_ns = z["samples"], z["warmup"]
        rows[r.key] = r
    return rows


def summary_rows(rows: List[RowResult]) -> List[Dict[str, Any]]:
    out = []
    for r in rows:
        settings = r.info.get("settings", {}) or {}
        base = {"backend": r.backend, "variant": r.variant, "input": r.input, "batch": r.batch,
                "max_batch": r.max_batch, "status": r.status, "threads": settings.get("threads", ""),
                "precision": settings.get("precision", ""), "device": settings.get("device", ""),
                "gpu_util_mean_pct": _gpu_mean(r.info.get("gpu_samples"))}
        if r.samples_ns is None or r.status != "passed":
            out.append({**base, "stage": "total", "n": 0, "flags": r.reason})
            continue
        total = r.samples_ns[:, 3].astype(np.float64)
        stage_sum = r.samples_ns[:, :3].sum(axis=1).astype(np.float64)
        sum_ok = bool(np.all(np.abs(stage_sum - total) <= 0.02 * total))
        for i, stage in enumerate(STAGES):
            m = Measurement.from_ns(r.samples_ns[:, i])
            flags = []
            if m.noisy:
                flags.append("noisy")
            if abs(drift(r.samples_ns[:, i])) > 0.10 and m.median_ms > 0.05:
                flags.append("drift")
            if stage == "total" and not sum_ok:
                flags.append("stages!=total")
            out.append({**base, "stage": stage, **m.to_dict(), "cv": round(m.cv, 4),
                        "per_image_median_ms": m.median_ms / r.batch,
                        "images_per_s": (1000.0 * r.batch / m.median_ms) if m.median_ms > 0 else "",
                        "flags": " ".join(flags)})
    return out


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
    atomic_text(run_dir / "summary.md", stage_table(summary, fmt="github") + "\n")
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
