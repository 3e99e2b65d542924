"""The parent's side of a worker process: start it without a shell, stream its progress, stop it.

A worker leads its own process group, so stopping it stops whatever it started. Its result comes
back as a `WorkerResult` in every case: the one it wrote, or one the parent makes from how the
process ended (a signal, an exit code, the last line of its stderr, a timeout).

RETINABENCH_WORKER_MEMORY_LIMIT (e.g. `4G`) caps each worker's address space: an allocation beyond
it fails inside that worker, which ends its row as `failed`, instead of the machine swapping.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

from backends.base import backend_class
from retinabench.errors import BackendUnavailable, BenchError
from retinabench.records import ExitCode, Job, WorkerResult, parse_progress
from retinabench.store import WorkDir

ROOT = Path(__file__).resolve().parents[2]
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

Progress = Callable[[int, int], None]


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
    python = cls.interpreter()
    if python and not Path(python).exists():
        ok, reason = cls.available()  # the backend says best what is missing and how to get it
        raise BackendUnavailable(reason if not ok and reason else f"{name}: worker interpreter {python} not found")
    return python or sys.executable


def worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_worker(job: Job, work: WorkDir, python: str, on_progress: Optional[Progress] = None) -> WorkerResult:
    """Start the worker, stream its progress, return its result record."""
    work.prepare(job)
    with open(work.stderr, "wb") as err:
        proc = subprocess.Popen([python, "-m", "retinabench.harness.worker", str(work.job)],
                                cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        timed_out = threading.Event()

        def stop_on_timeout() -> None:
            timed_out.set()
            kill(proc)

        timer = threading.Timer(float(job.timeout_s), stop_on_timeout) if job.timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # other stdout chatter from a runtime is ignored
                progress = parse_progress(line)
                if progress is not None and on_progress is not None:
                    on_progress(*progress)
            code = proc.wait()
        except BaseException:
            kill(proc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
    if timed_out.is_set():
        return WorkerResult.failure("failed", f"timed out: the worker ran longer than row_timeout_s={job.timeout_s} "
                                              "and was stopped", code, signal_name(-code) if code < 0 else "")
    record = work.read_result()
    if code == ExitCode.OK and record is not None and record.status == "passed":
        return record
    if code in (ExitCode.UNAVAILABLE, ExitCode.FAILED) and record is not None:
        return record
    return crash_result(code, work)


def crash_result(code: int, work: WorkDir) -> WorkerResult:
    """How a worker that wrote no result of its own ended, with the last line of its stderr."""
    tail = last_line(work.stderr)
    sig = ""
    if code < 0:
        sig = signal_name(-code)
        reason = f"worker killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
    else:
        reason = f"worker exited with code {code}"
    reason += f": {tail}" if tail else f" (its stderr: {work.stderr})"
    return WorkerResult.failure("failed", reason, code, sig)


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def kill(proc: subprocess.Popen) -> None:
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


def last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
