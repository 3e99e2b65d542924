"""Run a scenario: one worker process per backend row, results written as each row finishes.

Rows are measured in interleaved rounds by default (retinabench.harness.schedule), or one after
another (`schedule: sequential`). A crash, an out-of-memory kill, a timeout or a missing runtime
ends one row with a status and a reason, never the run; the other rows of its group finish their
rounds. Ctrl-C / SIGTERM stops the current worker, keeps the finished rows and marks the run
incomplete; `--resume RUN` then runs only the rows that are missing (and re-runs failed ones).
A group interrupted mid-round is measured again whole on resume: a row's samples all come from
one loaded process, measured in rounds beside the same rows (its finished rounds stay in its
scratch folder, for inspection, and are not used).
A run folder is locked while a process works in it, so two processes never write one folder.
The run folder's layout is the store's (retinabench.store); the reports written from the rows
are the caller's (`summarise`: the report layer sits above this one).

Executors: the rows are planned as units (`plan_units`: an interleaved group, or one row in the
sequential schedule), each measured whole by a `UnitRun`, here (`executor: local`, the default) or
as one task on a Dask worker (`executor: dask`, retinabench.harness.dask_executor), which sends the
rows' files back. Either way one `_Session` decides the pending rows, writes each row as it comes
(with its host and the rows that overlapped it there: `overlaps`), summarises and handles signals.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
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
from retinabench.harness.schedule import Schedule, new_seed
from retinabench.harness.units import (Interrupted, Unit, UnitRun, host_file, host_info, overlaps,  # noqa: F401
                                       plan_units, with_samples)
from retinabench.records import Job, RowId
from retinabench.store import RowResult, RunStore

# (store, rows in scenario order, scenario): writes the run's reports (summary, samples, accuracy),
# returns the summary lines.
Summariser = Callable[[RunStore, List[RowResult], Scenario], List[Dict[str, Any]]]
ProgressFactory = Callable[[str], Any]   # label -> an object with update_to(done, total), set_description(text), close()
RowCallback = Callable[[RowResult, int, int], None]


@dataclass
class RunOutcome:
    run_dir: Path
    rows: List[RowResult]
    status: str                      # complete | partial | incomplete
    summary: List[Dict[str, Any]]    # what the summariser returned (summary.csv's lines)


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
               input=row.input or scenario.input, loops=scenario.loops, warmup=scenario.warmup,
               threshold=scenario.threshold,
               family=scenario.family, save_outputs=save_outputs, parent_pid=os.getpid(),
               memory_limit_bytes=worker_memory_limit(), timeout_s=scenario.row_timeout_s)


def run_row(scenario: Scenario, row: Row, model: Path, images: List[Path], store: RunStore,
            on_progress: Optional[Progress] = None) -> RowResult:
    """One row on its own, start to finish (the sequential schedule)."""
    try:
        python = interpreter_for(row.backend.name)
    except BenchError as e:  # the backend's interpreter is missing: it says what and how to set it up
        return RowResult.failed(row.id, "unavailable", str(e))
    work = store.work(row.id)
    return with_samples(RowResult(row.id, run_worker(make_job(scenario, row, model, images), work, python,
                                                      on_progress)), store)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Session:
    """The rows of one run (or resume) being measured, and what they have written so far.

    Both executors go through it: it plans the units, writes each row as it arrives (with the host
    that measured it and the rows that overlapped it there), and keeps the hosts' fingerprints.
    """

    def __init__(self, scenario: Scenario, model: Path, images: List[Path], store: RunStore,
                 finished: Dict[RowId, RowResult], meta: Dict[str, Any], schedule: Schedule,
                 progress_factory: Optional[ProgressFactory], on_row_done: Optional[RowCallback],
                 executor: Any = None):
        self.scenario, self.model, self.images, self.store = scenario, model, images, store
        self.finished, self.meta, self.schedule = finished, meta, schedule
        self.progress_factory, self.on_row_done = progress_factory, on_row_done
        self.executor = executor
        self.rows = scenario.rows()
        self.index = {r.id: i for i, r in enumerate(self.rows, 1)}
        self.hosts: Dict[str, Dict[str, Any]] = {}    # host -> fingerprint, as each host is first heard from
        self.machines: Dict[str, str] = {}            # host -> machine key (boot id) for overlaps
        self.local_host = ""

    @property
    def number(self) -> int:
        """This session's index in run.json's `schedules` (the `s` of group labels)."""
        return len(self.meta["schedules"]) - 1

    def job(self, row: Row, absolute: bool = False) -> Job:
        model, images = (self.model.resolve(), [p.resolve() for p in self.images]) if absolute \
            else (self.model, self.images)
        return make_job(self.scenario, row, model, images)

    def add_host(self, host: str, info: Dict[str, Any]) -> None:
        """A host heard from: its fingerprint in hosts/<host>.json (once per session)."""
        if host in self.hosts:
            return
        self.hosts[host] = info
        self.machines[host] = str(info.get("boot_id") or host)
        self.store.write_file(host_file(host), json.dumps(info, indent=1, default=str))

    def record(self, result: RowResult) -> None:
        keep_stderr(self.store, result)
        if not result.host and self.executor is None:
            if not self.local_host:
                host, info = host_info()
                self.add_host(host, info)
                self.local_host = host
            result.host = self.local_host
        self.finished[result.id] = result
        found = overlaps(list(self.finished.values()), self.machines)
        result.overlaps = found[result.id]
        self.store.write_row(result)
        for rid, keys in found.items():   # a row written earlier may have been overlapped by this one
            earlier = self.finished[rid]
            if rid != result.id and earlier.overlaps != keys:
                earlier.overlaps = keys
                self.store.write_row(earlier)
        if self.on_row_done is not None:
            self.on_row_done(result, self.index[result.id], len(self.rows))

    def _bar(self, label: str) -> Any:
        return self.progress_factory(label) if self.progress_factory else None

    def run(self, pending: List[Row]) -> None:
        units = plan_units(pending, self.scenario, self.schedule, self.number, split_devices=self.executor is not None)
        if self.executor is not None:
            self.executor.run(self, units)
            return
        for unit in units:
            self.measure_here(unit)

    def note_group(self, unit: Unit, **extra: Any) -> None:
        """run.json lists each interleaved group before it is measured: its rows, seed and orders."""
        if unit.interleaved:
            self.meta.setdefault("groups", []).append({"rows": [r.key for r in unit.rows], "seed": self.schedule.seed,
                                                       "index": unit.index, "orders": [list(o) for o in unit.orders],
                                                       **extra})

    def measure_here(self, unit: Unit) -> None:
        """The local executor: the unit's workers are this process's children."""
        n = len(self.rows)
        if unit.interleaved:
            self.note_group(unit)
            self.store.write_meta(self.meta)
            which = ", ".join(str(self.index[r.id]) for r in unit.rows)
            bar = self._bar(f"rows {which} of {n}: loading")
            describe: Optional[Callable[[int], str]] = \
                lambda r: f"rows {which} of {n}: round {r + 1}/{len(unit.chunks)}"
        else:
            bar = self._bar(f"[{self.index[unit.rows[0].id]}/{n}] {unit.rows[0].key}")
            describe = None
        run = UnitRun(unit, {r.id: self.job(r) for r in unit.rows}, self.store.work,
                      lambda result, work: self.record(with_samples(result, self.store)), bar, describe,
                      say=_say)
        try:
            run.run()
        finally:
            if run.kept:
                self.meta["interrupted_rows_kept_loops"] = run.kept
            if bar is not None:
                bar.close()


def run_scenario(scenario: Scenario, model: Path, images: List[Path], results_root: Path,
                 summarise: Summariser, resume: Optional[Path] = None,
                 progress_factory: Optional[ProgressFactory] = None,
                 on_row_done: Optional[RowCallback] = None, warnings: Optional[List[str]] = None) -> RunOutcome:
    """Run every row not already in the run folder; summarise whatever finished.

    `progress_factory(label)` makes a progress bar (update_to, set_description, close) for a row or
    an interleaved group; `on_row_done(result, index, count)` hears each finished row.
    The scenario's `executor` says where rows run: here (`local`), or on a Dask cluster's workers
    (retinabench.harness.dask_executor), which is reached before the run folder is made, so a bad
    address or a missing package is one line and no folder. `warnings`: lines the caller showed
    before the run (more threads than cores, ...), kept in run.json's `warnings`.
    """
    from retinabench.model.source import open_model
    model_sha = open_model(model, scenario.family).sha256()
    rows = scenario.rows()
    executor = None
    if scenario.executor == "dask":
        from retinabench.harness.dask_executor import DaskExecutor
        executor = DaskExecutor.for_scenario(scenario)
        executor.open()
    try:
        return _run(scenario, model, images, results_root, summarise, resume, progress_factory, on_row_done,
                    model_sha, rows, executor, warnings or [])
    finally:
        if executor is not None:
            executor.close()


def _run(scenario: Scenario, model: Path, images: List[Path], results_root: Path, summarise: Summariser,
         resume: Optional[Path], progress_factory: Optional[ProgressFactory], on_row_done: Optional[RowCallback],
         model_sha: str, rows: List[Row], executor: Any, warnings: List[str]) -> RunOutcome:
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
    schedule = Schedule.of(scenario.schedule, scenario.loops, scenario.seed if scenario.seed is not None else new_seed(),
                           scenario.round_loops, scenario.rewarm_loops, scenario.max_live_workers,
                           scenario.processes, scenario.warmup)
    meta.update(status="running", reason="", rows=[r.key for r in rows], row_ids=[r.id.to_json() for r in rows],
                model=str(model), model_sha256=model_sha, images=[str(p) for p in images], loops=scenario.loops,
                warmup=scenario.warmup, pid=os.getpid())
    meta.setdefault("schedules", []).append(schedule.to_json())
    if executor is not None or meta.get("executors"):  # one entry per session, beside `schedules`
        executors = meta.setdefault("executors", [{"executor": "local"}] * (len(meta["schedules"]) - 1))
        executors.append(executor.describe() if executor is not None else {"executor": "local"})
    meta.pop("interrupted_rows_kept_loops", None)
    meta["warnings"] = list(dict.fromkeys(meta.get("warnings", []) + warnings))  # a resume adds its own
    store.write_meta(meta)

    finished: Dict[RowId, RowResult] = {k: v for k, v in done.items() if v.status in ("passed", "unavailable")}
    session = _Session(scenario, model, images, store, finished, meta, schedule, progress_factory, on_row_done,
                       executor)
    interrupted = ""
    try:
        with _StopSignals() as stop:
            try:
                session.run([r for r in rows if r.id not in finished])
                stop.armed = False  # from here on a signal waits for the summary to be written
            except (KeyboardInterrupt, Interrupted) as e:  # KeyboardInterrupt: off the main thread
                interrupted = str(e) or "interrupted (SIGINT)"
            ordered = [finished[r.id] for r in rows if r.id in finished]
            missing = [r.key for r in rows if r.id not in finished]
            failed = [r for r in ordered if r.status == "failed"]
            contended = contended_rows(ordered)
            if missing:
                status, reason = "incomplete", interrupted or "rows missing"
            elif failed:
                status, reason = "partial", "; ".join(f"{r.key}: {r.reason}" for r in failed)
            elif contended:
                status, reason = "contended", contention_reason(contended, scenario.contention_limit)
            else:
                status, reason = "complete", ""
            summary = summarise(store, ordered, scenario)
            meta.update(status=status, reason=reason, missing=missing, finished_utc=_now())
            store.write_meta(meta)
    except Exception as e:  # a bug or a full disk: say so in run.json, then let it surface
        meta.update(status="incomplete", reason=f"harness error: {type(e).__name__}: {e}")
        store.write_meta(meta)
        raise
    finally:
        lock.release()
    if status in ("complete", "contended"):   # kept for an incomplete or partial run: --resume needs it
        shutil.rmtree(store.path / ".work", ignore_errors=True)
    return RunOutcome(store.path, ordered, status, summary)


def keep_stderr(store: RunStore, result: RowResult) -> None:
    """rows/<key>.stderr.txt: what the row's worker(s) printed (runtimes' warnings and errors), kept in the
    run folder itself (the scratch folder goes when the run completes); its last line on the row when it
    reads like an error, so the console can show it."""
    src = store.work(result.id).stderr
    try:
        data = src.read_bytes()
    except OSError:
        return
    if not data.strip():
        return
    store.write_file(f"rows/{result.key}.stderr.txt", data)
    last = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip() and not ln.startswith("---")]
    if last and ERRORISH.search(last[-1]):
        result.stderr_tail = last[-1][:300]


def contended_rows(rows: List[RowResult]) -> Dict[str, int]:
    """Row key -> chunks kept although other programs contended them (the guard's budget ran out)."""
    out = {}
    for r in rows:
        kept = sum(1 for c in r.result.contention if c.get("contended") and not c.get("replaced"))
        if r.passed and kept:
            out[r.key] = kept
    return out


def contention_reason(contended: Dict[str, int], limit: Optional[float]) -> str:
    """One line: contention never cleared, in which rows."""
    return (f"contention never cleared: {sum(contended.values())} chunk(s) of {len(contended)} row(s) "
            f"({', '.join(contended)}) were measured while other programs used more than {limit:g} cores "
            "and could not be measured again; their rows are flagged `contended`")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


ERRORISH = re.compile(r"error|exception|fatal|abort|segmentation", re.I)

# Fields that say where rows run, not what a row is: a run started here may be finished on a cluster
# (a new cluster's scheduler has a new address), and the other way round.
RESUME_MAY_CHANGE = ("source", "executor", "scheduler")


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
        if k not in RESUME_MAY_CHANGE and saved.get(k, defaults.get(k)) != v:
            raise BenchError(f"--resume {store.path}: the scenario differs from the run's in {k!r} "
                             f"({saved.get(k)!r} there, {v!r} now)")
    if meta.get("model_sha256") and meta["model_sha256"] != model_sha:
        raise BenchError(f"--resume {store.path}: the model's files changed since the run started")
