"""Accuracy runs: every row of a scenario over annotated datasets, in the row's own worker, untimed.

A row's worker is loaded as for the speed tables (its backend, variant, device, threads, options,
and the family's own preprocessing), but on a canvas that holds every image of the datasets at its
original scale (`pad` input: an image is never enlarged; a larger one would be shrunk to fit, and
the canvas is chosen so that none is). It then runs `detect` commands (retinabench.records.Command)
outside any timed loop, with a low score threshold for AP (the speed tables' threshold stays as it
is), and writes every face it found per image into the run folder:

    detections/<dataset>/<row key>.json   {image path: [[x1, y1, x2, y2, score], ...]}
                                          boxes in pixels of the image on disk, exclusive right/bottom
                                          edges (retinabench.datasets.records)

Scoring is the report layer's (retinabench.report.dataset_accuracy), from these files alone.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from retinabench.config import Row, Scenario
from retinabench.errors import BenchError
from retinabench.harness import env as envmod
from retinabench.harness.process import WorkerProcess, interpreter_for, worker_memory_limit
from retinabench.records import InputSpec, Job
from retinabench.store import RowResult, RunStore, atomic_write

AP_THRESHOLD = 0.02      # the score threshold of WIDER FACE evaluations (insightface, biubug6): faces kept for AP
CANVAS_MULTIPLE = 32
MAX_CANVAS_SIDE = 4096


def canvas_for(datasets: Sequence[Any]) -> Tuple[int, int]:
    """(width, height): the smallest multiple of 32 that holds every image of `datasets` unscaled."""
    w = max(it.size[0] for ds in datasets for it in ds.items)
    h = max(it.size[1] for ds in datasets for it in ds.items)
    size = tuple(int(math.ceil(v / CANVAS_MULTIPLE) * CANVAS_MULTIPLE) for v in (w, h))
    if max(size) > MAX_CANVAS_SIDE:
        raise BenchError(f"the datasets' largest image is {w}x{h}: over the {MAX_CANVAS_SIDE}-pixel canvas an accuracy "
                         "run allows (split the dataset)")
    return size[0], size[1]


def slug(name: str) -> str:
    """A dataset's name as a folder name ('dlib:test@0.5' -> 'dlib-test-0.5')."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") or "dataset"


NO_NETWORK = {"empty"}   # backends that run no network: nothing to score


def accuracy_rows(scenario: Scenario) -> List[Row]:
    """One row per backend entry that runs a network: its first batch size (accuracy does not depend on it)."""
    seen, out = set(), []
    for row in scenario.rows():
        if row.id.backend in NO_NETWORK:
            continue
        key = (row.id.backend, row.id.variant, row.id.device)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def make_accuracy_job(scenario: Scenario, row: Row, model: Path, first_image: Path) -> Job:
    return Job(row=row.id, backend=row.backend, model=str(model), images=(str(first_image),), input=scenario.input,
               loops=0, warmup=0, threshold=scenario.threshold, family=scenario.family, save_outputs=False,
               gpu_monitor=False, parent_pid=os.getpid(), memory_limit_bytes=worker_memory_limit(),
               timeout_s=scenario.row_timeout_s)


def run_accuracy(scenario: Scenario, model: Path, datasets: Sequence[Any], results_root: Path,
                 threshold: float = AP_THRESHOLD, on_row: Optional[Callable[[str, int, int], None]] = None,
                 extra_meta: Optional[Dict[str, Any]] = None) -> Tuple[Path, List[RowResult]]:
    """Every row of `scenario` over `datasets`; the run folder and the rows (status, versions, settings)."""
    width, height = canvas_for(datasets)
    sc = replace(scenario, input=InputSpec("pad", width, height), batches=(1,), max_batch=(), loops=0, warmup=0)
    store = RunStore.create(Path(results_root), f"accuracy-{scenario.name}")
    lock = store.lock()
    meta: Dict[str, Any] = {"scenario": f"accuracy-{scenario.name}", "kind": "accuracy", "status": "running",
                            "started_utc": _now(), "model": str(model), "canvas": [width, height],
                            "score_threshold": threshold, "speed_threshold": scenario.threshold,
                            "datasets": [ds.describe() for ds in datasets], **(extra_meta or {})}
    try:
        store.write_config(sc.to_dict())
        store.write_env(envmod.fingerprint())
        store.write_meta(meta)
        rows = accuracy_rows(sc)
        results: List[RowResult] = []
        first = datasets[0].items[0].path
        for i, row in enumerate(rows, 1):
            if on_row is not None:
                on_row(row.key, i, len(rows))
            result = _one_row(sc, row, model, first, datasets, threshold, store)
            store.write_row(result)
            results.append(result)
        failed = [r for r in results if r.status == "failed"]
        meta.update(status="partial" if failed else "complete", finished_utc=_now(), rows=[r.key for r in results],
                    row_ids=[r.id.to_json() for r in results],
                    reason="; ".join(f"{r.key}: {r.reason}" for r in failed))
        store.write_meta(meta)
    except BaseException as e:
        meta.update(status="incomplete", reason=f"{type(e).__name__}: {e}")
        store.write_meta(meta)
        raise
    finally:
        lock.release()
    return store.path, results


def _one_row(sc: Scenario, row: Row, model: Path, first: Path, datasets: Sequence[Any], threshold: float,
             store: RunStore) -> RowResult:
    try:
        python = interpreter_for(row.backend.name)
    except BenchError as e:
        return RowResult.failed(row.id, "unavailable", str(e))
    worker = WorkerProcess(make_accuracy_job(sc, row, model, first), store.work(row.id), python)
    try:
        ended = worker.start()
        if ended is not None:
            return RowResult(row.id, ended)
        for ds in datasets:
            out = store.path / "detections" / slug(ds.name) / f"{row.key}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            ended = worker.detect([str(it.path) for it in ds.items], threshold, out)
            if ended is not None:
                return RowResult(row.id, ended)
            _with_boxes(out)
        result = worker.finish()
    except BaseException:
        worker.kill()
        raise
    if result.status == "passed":
        result = replace(result, faces=[])   # the faces are in detections/, per dataset and image
    return RowResult(row.id, result)


def _with_boxes(path: Path) -> None:
    """The worker's faces (box, score, landmarks) as [[x1, y1, x2, y2, score], ...] per image, highest first;
    the landmarks are kept beside them."""
    faces = json.loads(path.read_text())
    boxes = {img: [list(f["box"]) + [f["score"]] for f in found] for img, found in faces.items()}
    marks = {img: [f["landmarks"] for f in found] for img, found in faces.items()}
    atomic_write(path, json.dumps(boxes))
    atomic_write(path.with_suffix(".landmarks.json"), json.dumps(marks))


def read_detections(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
