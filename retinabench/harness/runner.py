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
from retinabench.harness.process import Progress, WorkerProcess, interpreter_for, run_worker, worker_memory_limit
from retinabench.harness.schedule import Schedule, groups, new_seed, round_orders
from retinabench.records import Command, Job, RowId
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
    """One row on its own, start to finish (the sequential schedule)."""
    try:
        python = interpreter_for(row.backend.name)
    except BenchError as e:  # the backend's interpreter is missing: it says what and how to set it up
        return RowResult.failed(row.id, "unavailable", str(e))
    work = store.work(row.id)
    return _with_samples(RowResult(row.id, run_worker(make_job(scenario, row, model, images), work, python,
                                                      on_progress)), store)


def _with_samples(result: RowResult, store: RunStore) -> RowResult:
    if result.status == "passed":
        arrays = store.work(result.id).read_samples()
        result.samples_ns, result.warmup_ns = arrays["samples"], arrays["warmup"]
        result.rounds = arrays.get("rounds")
        result.rewarm_ns = arrays.get("rewarm")
    return result


class _Session:
    """The rows of one run (or resume) being measured, and what they have written so far."""

    def __init__(self, scenario: Scenario, model: Path, images: List[Path], store: RunStore,
                 finished: Dict[RowId, RowResult], meta: Dict[str, Any], schedule: Schedule,
                 progress_factory: Optional[ProgressFactory], on_row_done: Optional[RowCallback]):
        self.scenario, self.model, self.images, self.store = scenario, model, images, store
        self.finished, self.meta, self.schedule = finished, meta, schedule
        self.progress_factory, self.on_row_done = progress_factory, on_row_done
        self.rows = scenario.rows()
        self.index = {r.id: i for i, r in enumerate(self.rows, 1)}

    def record(self, result: RowResult) -> None:
        self.store.write_row(result)
        self.finished[result.id] = result
        if self.on_row_done is not None:
            self.on_row_done(result, self.index[result.id], len(self.rows))

    def _bar(self, label: str) -> Any:
        return self.progress_factory(label) if self.progress_factory else None

    def run(self, pending: List[Row]) -> None:
        if self.schedule.kind == "sequential":
            for row in pending:
                bar = self._bar(f"[{self.index[row.id]}/{len(self.rows)}] {row.key}")
                try:
                    self.record(run_row(self.scenario, row, self.model, self.images, self.store,
                                        bar.update_to if bar is not None else None))
                finally:
                    if bar is not None:
                        bar.close()
            return
        for g, group in enumerate(groups(pending, lambda r: r.id.batch, self.schedule.max_live_workers)):
            self.interleave(g, group)

    def interleave(self, g: int, group: List[Row]) -> None:
        """Load every row of the group, then measure them round by round in shuffled orders."""
        sc, sched = self.scenario, self.schedule
        chunks = sched.rounds(sc.loops)
        orders = round_orders(len(group), len(chunks), sched.seed, g)
        self.meta.setdefault("groups", []).append({"rows": [r.key for r in group], "seed": sched.seed, "index": g,
                                                   "orders": orders})
        self.store.write_meta(self.meta)
        total = sum(sc.warmup + sc.loops + sched.rewarm_loops * (len(chunks) - 1) for _ in group)
        done = [0]
        bar = self._bar(f"rows {', '.join(str(self.index[r.id]) for r in group)} of {len(self.rows)}: loading")
        workers: Dict[RowId, WorkerProcess] = {}
        try:
            for row in group:
                try:
                    python = interpreter_for(row.backend.name)
                except BenchError as e:
                    self.record(RowResult.failed(row.id, "unavailable", str(e)))
                    continue
                worker = workers[row.id] = WorkerProcess(
                    make_job(sc, row, self.model, self.images), self.store.work(row.id), python,
                    (lambda d, t: bar.update_to(done[0] + d, total)) if bar else None)
                ended = worker.start()
                if ended is not None:
                    del workers[row.id]
                    self.record(RowResult(row.id, ended))
            for r, loops in enumerate(chunks):
                if bar is not None:
                    bar.set_description(f"rows {', '.join(str(self.index[x.id]) for x in group)} of "
                                        f"{len(self.rows)}: round {r + 1}/{len(chunks)}")
                for i in orders[r]:
                    row = group[i]
                    worker = workers.get(row.id)
                    if worker is None:
                        continue
                    cmd = Command("measure", loops, warmup=sc.warmup if r == 0 else 0,
                                  rewarm=0 if r == 0 else sched.rewarm_loops, round=r)
                    ended = worker.measure(cmd)
                    done[0] += cmd.warmup + cmd.rewarm + cmd.loops
                    if ended is not None:  # it died or ran out of time: its row ends, the others go on
                        del workers[row.id]
                        self.record(RowResult(row.id, ended))
            for row in group:
                worker = workers.pop(row.id, None)
                if worker is not None:
                    result = _with_samples(RowResult(row.id, worker.finish()), self.store)
                    result.group = f"s{len(self.meta['schedules']) - 1}g{g}"
                    self.record(result)
        except BaseException:
            self._stop(workers)
            raise
        finally:
            if bar is not None:
                bar.close()

    def _stop(self, workers: Dict[RowId, WorkerProcess]) -> None:
        """Interrupted mid-group: the idle workers write the rounds they finished (kept in their scratch
        folders, not used: `--resume` measures these rows again, whole), the rest are stopped."""
        kept = {}
        for rid, worker in workers.items():
            if worker.measured and worker.result is None:
                worker.limit(10.0)
                result = worker.finish()
                if result.status == "passed":
                    kept[rid.key] = worker.measured
            worker.kill()
        if kept:
            self.meta["interrupted_rows_kept_loops"] = kept


def run_scenario(scenario: Scenario, model: Path, images: List[Path], results_root: Path,
                 summarise: Summariser, resume: Optional[Path] = None,
                 progress_factory: Optional[ProgressFactory] = None,
                 on_row_done: Optional[RowCallback] = None) -> RunOutcome:
    """Run every row not already in the run folder; summarise whatever finished.

    `progress_factory(label)` makes a progress bar (update_to, set_description, close) for a row or
    an interleaved group; `on_row_done(result, index, count)` hears each finished row.
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
    schedule = Schedule.of(scenario.schedule, scenario.loops, scenario.seed if scenario.seed is not None else new_seed(),
                           scenario.round_loops, scenario.rewarm_loops, scenario.max_live_workers)
    meta.update(status="running", reason="", rows=[r.key for r in rows], row_ids=[r.id.to_json() for r in rows],
                model=str(model), model_sha256=model_sha, images=[str(p) for p in images], loops=scenario.loops,
                warmup=scenario.warmup, pid=os.getpid())
    meta.setdefault("schedules", []).append(schedule.to_json())
    meta.pop("interrupted_rows_kept_loops", None)
    store.write_meta(meta)

    finished: Dict[RowId, RowResult] = {k: v for k, v in done.items() if v.status in ("passed", "unavailable")}
    session = _Session(scenario, model, images, store, finished, meta, schedule, progress_factory, on_row_done)
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
            if missing:
                status, reason = "incomplete", interrupted or "rows missing"
            elif failed:
                status, reason = "partial", "; ".join(f"{r.key}: {r.reason}" for r in failed)
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
    return RunOutcome(store.path, ordered, status, summary)


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
