"""Run a scenario: one worker process per backend row, results written as each row finishes.

A crash, an out-of-memory kill or a missing runtime ends one row with a status and a reason, never
the run. Ctrl-C / SIGTERM stops the current worker, keeps the finished rows and marks the run
incomplete; `--resume RUN` then runs only the rows that are missing (and re-runs failed ones).
A run folder is locked while a process works in it, so two processes never write one folder.
The run folder's layout is the store's (retinabench.store); the reports written from the rows
are the caller's (`summarise`: the report layer sits above this one).
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

from retinabench.config import Row, Scenario
from retinabench.errors import BenchError
from retinabench.harness import env as envmod
from retinabench.harness.process import Progress, interpreter_for, run_worker, worker_memory_limit
from retinabench.records import Job, RowId
from retinabench.store import RowResult, RunStore

# (store, rows in scenario order, scenario): writes the run's reports (summary, samples, accuracy).
Summariser = Callable[[RunStore, List[RowResult], Scenario], None]
ProgressFactory = Callable[[Row, int, int], Any]     # -> an object with update_to(done, total) and close()
RowCallback = Callable[[RowResult, int, int], None]


@dataclass
class RunOutcome:
    run_dir: Path
    rows: List[RowResult]
    status: str   # complete | partial | incomplete


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while rows were running."""


class _StopSignals:
    """While armed, the first SIGINT/SIGTERM raises Interrupted; later ones are ignored, so stopping
    the worker and writing the summary are never cut short by an impatient second Ctrl-C."""

    def __init__(self) -> None:
        self.armed = False
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        self.armed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.armed:
            self.armed = False
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        for sig, old in self._old.items():
            signal.signal(sig, old)


def make_job(scenario: Scenario, row: Row, model: Path, images: List[Path], save_outputs: bool = True) -> Job:
    return Job(row=row.id, backend=row.backend, model=str(model), images=tuple(str(p) for p in images),
               input=scenario.input, loops=scenario.loops, warmup=scenario.warmup, threshold=scenario.threshold,
               family=scenario.family, save_outputs=save_outputs, parent_pid=os.getpid(),
               memory_limit_bytes=worker_memory_limit(), timeout_s=scenario.row_timeout_s)


def run_row(scenario: Scenario, row: Row, model: Path, images: List[Path], store: RunStore,
            on_progress: Optional[Progress] = None) -> RowResult:
    try:
        python = interpreter_for(row.backend.name)
    except BenchError as e:  # the backend's interpreter is missing: it says what and how to set it up
        return RowResult.failed(row.id, "unavailable", str(e))
    work = store.work(row.id)
    record = run_worker(make_job(scenario, row, model, images), work, python, on_progress)
    result = RowResult(row.id, record)
    if record.status == "passed":
        arrays = work.read_samples()
        result.samples_ns, result.warmup_ns = arrays["samples"], arrays["warmup"]
    return result


def run_scenario(scenario: Scenario, model: Path, images: List[Path], results_root: Path,
                 summarise: Summariser, resume: Optional[Path] = None,
                 progress_factory: Optional[ProgressFactory] = None,
                 on_row_done: Optional[RowCallback] = None) -> RunOutcome:
    """Run every row not already in the run folder; summarise whatever finished.

    `progress_factory(row, index, count)` makes a progress bar (update_to, close) for one row;
    `on_row_done(result, index, count)` hears each finished row.
    """
    from retinabench.model.source import open_model
    model_sha = open_model(model, scenario.family).sha256()
    rows = scenario.rows()
    if resume is not None:
        store = RunStore.open(resume)
        lock = store.lock()
        meta = store.read_meta()
        _check_resumable(store, meta, scenario, model_sha)
        done = store.read_rows()
        meta.setdefault("resumed_utc", []).append(_now())
    else:
        store = RunStore.create(results_root, scenario.name)
        lock = store.lock()
        done = {}
        store.write_config(scenario.to_dict())
        store.write_env(envmod.fingerprint())
        meta = {"scenario": scenario.name, "started_utc": _now()}
    meta.update(status="running", reason="", rows=[r.key for r in rows], row_ids=[r.id.to_json() for r in rows],
                model=str(model), model_sha256=model_sha, images=[str(p) for p in images], loops=scenario.loops,
                warmup=scenario.warmup, pid=os.getpid())
    store.write_meta(meta)

    finished: Dict[RowId, RowResult] = {k: v for k, v in done.items() if v.status in ("passed", "unavailable")}
    interrupted = ""
    try:
        with _StopSignals() as stop:
            try:
                for i, row in enumerate(rows, 1):
                    if row.id in finished:
                        continue
                    r = _run_one(scenario, row, model, images, store, progress_factory, i, len(rows))
                    store.write_row(r)
                    finished[row.id] = r
                    if on_row_done is not None:
                        on_row_done(r, i, len(rows))
                stop.armed = False  # from here on a signal waits for the summary to be written
            except (KeyboardInterrupt, Interrupted) as e:  # KeyboardInterrupt: off the main thread
                interrupted = str(e) or "interrupted (SIGINT)"
            ordered = [finished[r.id] for r in rows if r.id in finished]
            missing = [r.key for r in rows if r.id not in finished]
            failed = [r for r in ordered if r.status == "failed"]
            if missing:
                status, reason = "incomplete", interrupted or "rows missing"
            elif failed:
                status, reason = "partial", "; ".join(f"{r.key}: {r.reason}" for r in failed)
            else:
                status, reason = "complete", ""
            summarise(store, ordered, scenario)
            meta.update(status=status, reason=reason, missing=missing, finished_utc=_now())
            store.write_meta(meta)
    except Exception as e:  # a bug or a full disk: say so in run.json, then let it surface
        meta.update(status="incomplete", reason=f"harness error: {type(e).__name__}: {e}")
        store.write_meta(meta)
        raise
    finally:
        lock.release()
    return RunOutcome(store.path, ordered, status)


def _run_one(scenario: Scenario, row: Row, model: Path, images: List[Path], store: RunStore,
             progress_factory: Optional[ProgressFactory], index: int, count: int) -> RowResult:
    bar = progress_factory(row, index, count) if progress_factory else None
    try:
        return run_row(scenario, row, model, images, store, on_progress=(bar.update_to if bar is not None else None))
    finally:
        if bar is not None:
            bar.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_resumable(store: RunStore, meta: Dict[str, Any], scenario: Scenario, model_sha: str) -> None:
    """Rows of one run must come from one scenario and one model: refuse to mix them."""
    try:
        saved = store.read_config()
    except BenchError:
        raise BenchError(f"--resume {store.path}: its config.yaml is missing or unreadable") from None
    if not saved:
        raise BenchError(f"--resume {store.path}: its config.yaml is missing or unreadable")
    now = yaml.safe_load(yaml.safe_dump(scenario.to_dict()))
    defaults = yaml.safe_load(yaml.safe_dump(Scenario.field_defaults()))
    for k, v in now.items():  # a field the run's config predates counts as its default
        if k != "source" and saved.get(k, defaults.get(k)) != v:
            raise BenchError(f"--resume {store.path}: the scenario differs from the run's in {k!r} "
                             f"({saved.get(k)!r} there, {v!r} now)")
    if meta.get("model_sha256") and meta["model_sha256"] != model_sha:
        raise BenchError(f"--resume {store.path}: the model's files changed since the run started")
