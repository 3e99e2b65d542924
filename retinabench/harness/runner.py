"""Run a scenario: one worker process per backend row, results written as each row finishes.

A crash, an out-of-memory kill or a missing runtime ends one row with a status and a reason, never
the run. Ctrl-C / SIGTERM stops the current worker, keeps the finished rows and marks the run
incomplete; `--resume RUN` then runs only the rows that are missing (and re-runs failed ones).
A run folder is locked while a process works in it, so two processes never write one folder.

RETINABENCH_WORKER_MEMORY_LIMIT (e.g. `4G`) caps each worker's address space: an allocation beyond
it fails inside that worker, which ends its row as `failed`, instead of the machine swapping.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import yaml

from backends.base import backend_class
from retinabench.config import Row, Scenario
from retinabench.errors import BackendUnavailable, BenchError
from retinabench.harness import env as envmod
from retinabench.report import results as res

ROOT = Path(__file__).resolve().parents[2]
EXIT_UNAVAILABLE, EXIT_FAILED = 3, 4


@dataclass
class RunOutcome:
    run_dir: Path
    rows: List[res.RowResult]
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


def _lock(run_dir: Path) -> Any:
    """An exclusive lock on the run folder, released when the process ends however it ends.

    The lock file lives in .work/ (git-ignored), beside the workers' scratch folders."""
    (run_dir / ".work").mkdir(exist_ok=True)
    f = open(run_dir / ".work" / "lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise BenchError(f"{run_dir}: another bench.py process is working in this run folder") from None
    return f


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def worker_memory_limit() -> Optional[int]:
    """RETINABENCH_WORKER_MEMORY_LIMIT in bytes ('4G', '512M', '1073741824'), or None."""
    text = os.environ.get("RETINABENCH_WORKER_MEMORY_LIMIT", "").strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d{1,15})\s*([KMGT]?)(?:i?B)?", text, re.IGNORECASE)
    if not m:
        raise BenchError(f"RETINABENCH_WORKER_MEMORY_LIMIT={text!r}: expected a size such as 4G or 512M")
    n = int(m[1]) * _UNITS[m[2].upper()]
    if n < 64 * 2**20:
        raise BenchError(f"RETINABENCH_WORKER_MEMORY_LIMIT={text!r}: below 64M no Python runtime starts")
    return n


def interpreter_for(name: str) -> str:
    """The Python a backend's worker runs under (Caffe's may be another interpreter)."""
    cls = backend_class(name)
    get = getattr(cls, "interpreter", None)
    python = get() if get else None
    if python and not Path(python).exists():
        ok, reason = cls.available()  # the backend says best what is missing and how to get it
        raise BackendUnavailable(reason if not ok and reason else f"{name}: worker interpreter {python} not found")
    return python or sys.executable


def run_worker(job: Dict[str, Any], work: Path, python: str,
               on_progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Start the worker without a shell, stream its progress, return its result record."""
    work.mkdir(parents=True, exist_ok=True)
    res.atomic_text(work / "job.json", json.dumps(job, indent=1))
    (work / "result.json").unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    with open(work / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([python, "-m", "retinabench.harness.worker", str(work / "job.json")],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        timed_out = threading.Event()

        def stop_on_timeout() -> None:
            timed_out.set()
            _kill(proc)

        timer = threading.Timer(float(job["timeout_s"]), stop_on_timeout) if job.get("timeout_s") else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # other stdout chatter from a runtime is ignored
                parts = line.split()
                if len(parts) == 3 and parts[0] == b"P" and parts[1].isdigit() and parts[2].isdigit() \
                        and on_progress is not None:
                    on_progress(int(parts[1]), int(parts[2]))
            code = proc.wait()
        except BaseException:
            _kill(proc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
    if timed_out.is_set():
        return {"status": "failed", "reason": f"timed out: the worker ran longer than row_timeout_s={job['timeout_s']} "
                                              "and was stopped", "exit_code": code, "signal": _signal_name(-code) if code < 0 else ""}
    record: Dict[str, Any] = {}
    if (work / "result.json").exists():
        record = json.loads((work / "result.json").read_text())
    if code == 0 and record.get("status") == "passed":
        return record
    if code in (EXIT_UNAVAILABLE, EXIT_FAILED) and record:
        return record
    tail = _last_line(work / "stderr.txt")
    sig = ""
    if code < 0:
        sig = _signal_name(-code)
        reason = f"worker killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    else:
        reason = f"worker exited with code {code}"
    reason += f": {tail}" if tail else f" (its stderr: {work / 'stderr.txt'})"
    return {"status": "failed", "reason": reason, "exit_code": code, "signal": sig}


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _kill(proc: subprocess.Popen) -> None:
    """Stop a worker and anything it started (it leads its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def make_job(scenario: Scenario, row: Row, model: Path, images: List[Path], save_outputs: bool = True) -> Dict[str, Any]:
    b = row.backend
    return {
        "backend": {"name": b.name, "variant": b.variant, "threads": b.threads, "device": b.device,
                    "options": b.options, "env": b.env},
        "model": str(model), "family": scenario.family, "images": [str(p) for p in images],
        "input": {"mode": scenario.input.mode, "width": scenario.input.width, "height": scenario.input.height},
        "batch": row.batch, "max_batch": row.max_batch, "loops": scenario.loops, "warmup": scenario.warmup,
        "threshold": scenario.threshold, "save_outputs": save_outputs,
        "parent_pid": os.getpid(), "memory_limit_bytes": worker_memory_limit(),
        "timeout_s": scenario.row_timeout_s,
    }


def run_row(scenario: Scenario, row: Row, model: Path, images: List[Path], work: Path,
            on_progress: Optional[Callable[[int, int], None]] = None) -> res.RowResult:
    b = row.backend
    result = res.RowResult(row.key, b.name, b.variant, scenario.input.label, row.batch, row.max_batch, "failed")
    try:
        python = interpreter_for(b.name)
    except BenchError as e:
        result.status, result.reason = "unavailable", str(e)
        return result
    record = run_worker(make_job(scenario, row, model, images), work, python, on_progress)
    result.status, result.reason = record.get("status", "failed"), record.get("reason", "")
    result.info = {k: v for k, v in record.items() if k not in ("status", "reason")}
    if result.status == "passed":
        with np.load(work / "samples.npz", allow_pickle=False) as z:
            result.samples_ns, result.warmup_ns = z["samples"], z["warmup"]
    return result


RowCallback = Callable[[res.RowResult, int, int], None]


def run_scenario(scenario: Scenario, model: Path, images: List[Path], results_root: Path,
                 resume: Optional[Path] = None, progress_factory: Optional[Callable[..., Any]] = None,
                 on_row_done: Optional[RowCallback] = None) -> RunOutcome:
    """Run every row not already in the run folder; summarise whatever finished.

    `progress_factory(row, index, count)` makes a progress bar (update_to, close) for one row;
    `on_row_done(result, index, count)` hears each finished row.
    """
    from retinabench.model.source import open_model
    model_sha = open_model(model, scenario.family).sha256()
    rows = scenario.rows()
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "run.json").is_file():
            raise BenchError(f"--resume {run_dir}: not a results folder (no run.json)")
        lock = _lock(run_dir)
        meta = res.read_run_meta(run_dir)
        _check_resumable(run_dir, meta, scenario, model_sha)
        done = res.read_rows(run_dir)
        meta.setdefault("resumed_utc", []).append(_now())
    else:
        run_dir = res.create_run_dir(results_root, scenario.name)
        lock = _lock(run_dir)
        done = {}
        res.write_config(run_dir, scenario.to_dict())
        res.atomic_text(run_dir / "env.json", json.dumps(envmod.fingerprint(), indent=1))
        meta = {"scenario": scenario.name, "started_utc": _now()}
    meta.update(status="running", reason="", rows=[r.key for r in rows], model=str(model),
                model_sha256=model_sha, images=[str(p) for p in images], loops=scenario.loops,
                warmup=scenario.warmup, pid=os.getpid())
    res.write_run_meta(run_dir, meta)

    finished: Dict[str, res.RowResult] = {k: v for k, v in done.items() if v.status in ("passed", "unavailable")}
    interrupted = ""
    try:
        with _StopSignals() as stop:
            try:
                for i, row in enumerate(rows, 1):
                    if row.key in finished:
                        continue
                    r = _run_one(scenario, row, model, images, run_dir, progress_factory, i, len(rows))
                    res.write_row(run_dir, r)
                    finished[row.key] = r
                    if on_row_done is not None:
                        on_row_done(r, i, len(rows))
                stop.armed = False  # from here on a signal waits for the summary to be written
            except (KeyboardInterrupt, Interrupted) as e:  # KeyboardInterrupt: off the main thread
                interrupted = str(e) or "interrupted (SIGINT)"
            ordered = [finished[r.key] for r in rows if r.key in finished]
            missing = [r.key for r in rows if r.key not in finished]
            failed = [r for r in ordered if r.status == "failed"]
            if missing:
                status, reason = "incomplete", interrupted or "rows missing"
            elif failed:
                status, reason = "partial", "; ".join(f"{r.key}: {r.reason}" for r in failed)
            else:
                status, reason = "complete", ""
            summarise(run_dir, ordered, scenario)
            meta.update(status=status, reason=reason, missing=missing, finished_utc=_now())
            res.write_run_meta(run_dir, meta)
    except Exception as e:  # a bug or a full disk: say so in run.json, then let it surface
        meta.update(status="incomplete", reason=f"harness error: {type(e).__name__}: {e}")
        res.write_run_meta(run_dir, meta)
        raise
    finally:
        lock.close()
    return RunOutcome(run_dir, ordered, status)


def _run_one(scenario: Scenario, row: Row, model: Path, images: List[Path], run_dir: Path,
             progress_factory: Optional[Callable[..., Any]], index: int, count: int) -> res.RowResult:
    bar = progress_factory(row, index, count) if progress_factory else None
    try:
        return run_row(scenario, row, model, images, run_dir / ".work" / row.key,
                       on_progress=(bar.update_to if bar is not None else None))
    finally:
        if bar is not None:
            bar.close()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_resumable(run_dir: Path, meta: Dict[str, Any], scenario: Scenario, model_sha: str) -> None:
    """Rows of one run must come from one scenario and one model: refuse to mix them."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        raise BenchError(f"--resume {run_dir}: its config.yaml is missing or unreadable") from None
    now = yaml.safe_load(yaml.safe_dump(scenario.to_dict()))
    if not isinstance(saved, dict):
        raise BenchError(f"--resume {run_dir}: its config.yaml is not a scenario")
    for k, v in now.items():
        if k != "source" and saved.get(k) != v:
            raise BenchError(f"--resume {run_dir}: the scenario differs from the run's in {k!r} "
                             f"({saved.get(k)!r} there, {v!r} now)")
    if meta.get("model_sha256") and meta["model_sha256"] != model_sha:
        raise BenchError(f"--resume {run_dir}: the model's files changed since the run started")


def summarise(run_dir: Path, rows: List[res.RowResult], scenario: Scenario) -> None:
    res.write_summary(run_dir, rows)
    res.write_samples(run_dir, rows)
    res.write_detections(run_dir, rows)
    from retinabench.report.run_accuracy import write_accuracy
    write_accuracy(run_dir, rows, scenario.reference)
