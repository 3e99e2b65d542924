"""One results folder as a report reads it: summary.csv, the rows, env.json, config.yaml, accuracy_*.csv.

A report is regenerated only from these files, never from "now", so running it twice on one folder
gives the same bytes. Every line of summary.csv and of the accuracy CSVs carries the `row` it
belongs to (a RowId), so tables, sentences and plots look rows up by identity, not by a tuple.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from retinabench.errors import BenchError
from retinabench.records import RowId
from retinabench.store import RowResult, RunStore

# Backends that run no network: they measure the harness itself, so they never "win" a stage.
BASELINE_BACKENDS = {"empty"}
_INT_COLUMNS = {"batch", "max_batch", "n", "reference_faces", "faces", "matched", "missed", "extra", "rounds",
                "processes", "chunks", "chunks_replaced", "chunks_contended"}
_TEXT_COLUMNS = {"backend", "variant", "input", "stage", "status", "flags", "precision", "device", "threads", "options", "key",
                 "reference", "output", "group", "timing", "host_mib_source", "gpu_mib_source", "first_call"}
_BOOL_COLUMNS = {"ratio_paired"}


@dataclass
class RunData:
    """Everything a report needs from one results folder."""

    path: Path
    meta: Dict[str, Any]
    env: Dict[str, Any]
    config: Dict[str, Any]
    summary: List[Dict[str, Any]]                       # summary.csv, numbers parsed, each with its `row`
    rows: Dict[RowId, RowResult]                        # rows/<key>.json + samples, by identity
    accuracy_faces: List[Dict[str, Any]] = field(default_factory=list)
    accuracy_outputs: List[Dict[str, Any]] = field(default_factory=list)
    order: List[RowResult] = field(default_factory=list)   # the rows in the run's order

    @property
    def scenario(self) -> str:
        return str(self.meta.get("scenario") or self.config.get("name") or self.path.name)

    def ordered_rows(self) -> List[RowResult]:
        """Rows in the scenario's order (run.json), then any others in identity order."""
        return list(self.order)

    def row(self, rid: RowId) -> Optional[RowResult]:
        return self.rows.get(rid)

    def batches(self) -> List[int]:
        return sorted({r.id.batch for r in self.rows.values() if r.status == "passed"})

    def lines(self, rid: RowId) -> List[Dict[str, Any]]:
        """summary.csv's lines of one row."""
        return [s for s in self.summary if s["row"] == rid]


def _number(key: str, value: str) -> Any:
    if key in _TEXT_COLUMNS or value == "":
        return value
    if key in _BOOL_COLUMNS:
        return value == "true"
    try:
        return int(value) if key in _INT_COLUMNS else float(value)
    except ValueError:
        return value


def read_csv(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _number(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _attach_rows(lines: List[Dict[str, Any]], rows: Dict[RowId, RowResult]) -> None:
    """Give each CSV line the RowId of the row it describes.

    Lines name a row by its columns; files written before rows had a typed identity lack `device`
    (accuracy CSVs also `max_batch`) or leave it empty for rows that did not pass, so a line takes
    the one row that matches the columns it has.
    """
    by_key = {rid.key: rid for rid in rows}
    for line in lines:
        if line.get("key") in by_key:   # lines written since rows could differ in swept threads or options
            line["row"] = by_key[line["key"]]
            continue
        cols = {k: line[k] for k in ("backend", "variant", "input", "batch", "max_batch", "device")
                if line.get(k) not in ("", None)}
        matches = [rid for rid in rows if all(getattr(rid, k) == v for k, v in cols.items())]
        if len(matches) == 1:
            line["row"] = matches[0]
            continue
        try:
            line["row"] = RowId(str(line["backend"]), str(line["variant"]), str(line.get("device") or "cpu"),
                                str(line["input"]), int(line["batch"]), int(line.get("max_batch") or line["batch"]))
        except (KeyError, ValueError) as e:
            raise BenchError(f"a summary line names no row ({e}): {line}") from None


def load_run(path: Union[Path, str]) -> RunData:
    """A results folder, validated: one clear error when it is missing or not a finished run."""
    store = RunStore.open(path)
    if not store.file("summary.csv").is_file():
        raise BenchError(f"{store.path}: the run has no summary.csv (interrupted? finish it with --resume {store.path})")
    rows = store.read_rows()
    summary = read_csv(store.file("summary.csv"))
    # A backend that runs no network has no accuracy to report: its rows stay in the CSVs only.
    faces, outputs = ([a for a in read_csv(store.file(name)) if a.get("backend") not in BASELINE_BACKENDS]
                      for name in ("accuracy_faces.csv", "accuracy_outputs.csv"))
    for lines in (summary, faces, outputs):
        _attach_rows(lines, rows)
    return RunData(store.path, store.read_meta(), store.read_env(), store.read_config(), summary, rows,
                   faces, outputs, store.ordered_rows(rows))
