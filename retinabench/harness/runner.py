"""Run a scenario: one worker process per backend row, results written as each row finishes.

A crash, an out-of-memory kill or a missing runtime ends one row with a status and a reason, never
the run. Ctrl-C / SIGTERM stops the current worker, keeps the finished rows and marks the run
incomplete; `--resume RUN` then runs only the rows that are missing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

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
    pass


def interpreter_for(name: str) -> str:
    """The Python a backend's worker runs under (Caffe's may be another interpreter)."""
    cls = backend_class(name)
    get = getattr(cls, "interpreter", None)
    python = get() if get else None
    if python and not Path(python).exists():
        raise BackendUnavailable(f"{name}: worker interpreter {python} not found")
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
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                parts = line.split()
                if len(parts) == 3 and parts[0] == b"P" and on_progress is not None:
                    on_progress(int(parts[1]), int(parts[2]))
            code = proc.wait()
        except BaseException:
            _kill(proc)
            raise
    record: Dict[str, Any] = {}
    if (work / "result.json").exists():
        record = json.loads((work / "result.json").read_text())
    if code == 0 and record.get("status") == "passed":
        return record
    if code in (EXIT_UNAVAILABLE, EXIT_FAILED) and record:
        return record
    tail = _last_line(work / "stderr.txt")
    if code < 0:
        sig = signal.Signals(-code).name
        reason = f"worker killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    else:
        reason = f"worker exited with code {code}"
    return {"status": "failed", "reason": reason + (f": {tail}" if tail else ""), "exit_code": code}


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
        "backend": {"name": b.name, "variant": b.variant, "threads": b.threads, "device": b.device, "options": b.options},
        "model": str(model), "family": scenario.family, "images": [str(p) for p in images],
        "input": {"mode": scenario.input.mode, "width": scenario.input.width, "height": scenario.input.height},
        "batch": row.batch, "max_batch": row.max_batch, "loops": scenario.loops, "warmup": scenario.warmup,
        "threshold": scenario.threshold, "save_outputs": save_outputs,
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
        with np.load(work / "samples.npz") as z:
            result.samples_ns, result.warmup_ns = z["samples"], z["warmup"]
    return result


def run_scenario(scenario: Scenario, model: Path, images: List[Path], results_root: Path,
                 resume: Optional[Path] = None, progress_factory: Optional[Callable[..., Any]] = None) -> RunOutcome:
    """Run every row not already in the run folder; summarise whatever finished."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "run.json").exists():
            raise BenchError(f"--resume {run_dir}: not a results folder (no run.json)")
        done = res.read_rows(run_dir)
    else:
        run_dir = res.create_run_dir(results_root, scenario.name)
        done = {}
        res.write_config(run_dir, scenario.to_dict())
        res.atomic_text(run_dir / "env.json", json.dumps(envmod.fingerprint(), indent=1))
    rows = scenario.rows()
    meta = {"scenario": scenario.name, "status": "running", "reason": "", "rows": [r.key for r in rows],
            "model": str(model), "images": [str(p) for p in images]}
    res.write_run_meta(run_dir, meta)

    # SIGTERM behaves like Ctrl-C: stop the worker, keep what finished.
    def on_term(signum, frame):  # noqa: ARG001
        raise Interrupted("terminated (SIGTERM)")
    old_term = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None

    finished: Dict[str, res.RowResult] = {k: v for k, v in done.items() if v.status in ("passed", "unavailable")}
    status, reason = "complete", ""
    try:
        for row in rows:
            if row.key in finished:
                continue
            bar = progress_factory(row) if progress_factory else None
            try:
                r = run_row(scenario, row, model, images, run_dir / ".work" / row.key,
                            on_progress=(bar.update_to if bar is not None else None))
            finally:
                if bar is not None:
                    bar.close()
            res.write_row(run_dir, r)
            finished[row.key] = r
    except (KeyboardInterrupt, Interrupted) as e:
        status = "incomplete"
        reason = str(e) or "interrupted (SIGINT)"
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    ordered = [finished[r.key] for r in rows if r.key in finished]
    if status == "complete" and any(r.status == "failed" for r in ordered):
        status, reason = "partial", "; ".join(f"{r.key}: {r.reason}" for r in ordered if r.status == "failed")
    summarise(run_dir, ordered, scenario)
    meta.update(status=status, reason=reason,
                missing=[r.key for r in rows if r.key not in finished])
    res.write_run_meta(run_dir, meta)
    return RunOutcome(run_dir, ordered, status)


def summarise(run_dir: Path, rows: List[res.RowResult], scenario: Scenario) -> None:
    res.write_summary(run_dir, rows)
    res.write_samples(run_dir, rows)
    res.write_detections(run_dir, rows)
    from retinabench.report.run_accuracy import write_accuracy
    write_accuracy(run_dir, rows, scenario.reference)
