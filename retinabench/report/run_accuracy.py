"""A run's accuracy files: every row's outputs and faces against the reference backend's (accuracy_*.csv).

Raw outputs (first image of the batch) are kept in the run's .work folder while it runs; the
comparison lands in accuracy_outputs.csv (max/mean abs diff per output) and accuracy_faces.csv
(faces found, matched, missed, extra, IoU and shifts).
"""
from __future__ import annotations

import csv
import io
from typing import Dict, List, Optional

from retinabench.model.detections import Faces
from retinabench.report.accuracy import compare_faces, output_diffs
from retinabench.store import RowResult, RunStore

# device and max_batch came last, after the columns older runs have
FACE_COLUMNS = ["backend", "variant", "input", "batch", "reference", "reference_faces", "faces", "matched",
                "missed", "extra", "min_iou", "max_box_shift_px", "max_landmark_shift_px", "max_score_diff",
                "device", "max_batch"]
OUTPUT_COLUMNS = ["backend", "variant", "input", "batch", "reference", "output", "max_abs", "mean_abs",
                  "device", "max_batch"]


def _faces(row: RowResult) -> Faces:
    faces = row.result.faces or [[]]
    return Faces.from_json({"faces": faces[0]})


def pick_reference(rows: List[RowResult], reference: Optional[str]) -> Optional[RowResult]:
    passed = [r for r in rows if r.status == "passed"]
    if reference:
        passed = [r for r in passed if r.id.backend == reference]
    return min(passed, key=lambda r: r.id.batch) if passed else None


def write_accuracy(store: RunStore, rows: List[RowResult], reference: Optional[str]) -> None:
    ref = pick_reference(rows, reference)
    if ref is None:
        return
    ref_out = store.read_outputs(ref)
    ref_faces = _faces(ref)
    faces_rows, output_rows = [], []
    for r in rows:
        if r.status != "passed" or r.id.input != ref.id.input:
            continue
        i = r.id
        base = {"backend": i.backend, "variant": i.variant, "input": i.input, "batch": i.batch,
                "reference": f"{ref.id.backend}/{ref.id.variant}", "device": i.device, "max_batch": i.max_batch}
        faces_rows.append({**base, **compare_faces(ref_faces, _faces(r)).to_dict()})
        out = store.read_outputs(r)
        if ref_out is not None and out is not None:
            try:
                diffs = output_diffs(ref_out, out)
            except ValueError:  # another model layout: faces still compare
                diffs = []
            output_rows += [{**base, "output": d.output, "max_abs": d.max_abs, "mean_abs": d.mean_abs} for d in diffs]
    _write_csv(store, "accuracy_faces.csv", FACE_COLUMNS, faces_rows)
    if output_rows or not store.file("accuracy_outputs.csv").exists():
        _write_csv(store, "accuracy_outputs.csv", OUTPUT_COLUMNS, output_rows)


def _write_csv(store: RunStore, name: str, columns: List[str], rows: List[Dict[str, object]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    store.write_file(name, buf.getvalue())
