"""The parent's side of a worker process: start it without a shell, drive it, stop it.

A worker leads its own process group, so stopping it stops whatever it started. The parent and a
loaded worker talk over a pair of pipes (commands in, events out; retinabench.records), so the
worker's stdout (runtimes' chatter) goes to a file beside its stderr and never into a protocol.
Its result comes back as a `WorkerResult` in every case: the one it wrote, or one the parent makes
from how the process ended (a signal, an exit code, the last line of its stderr, a timeout).

RETINABENCH_WORKER_MEMORY_LIMIT (e.g. `4G`) caps each worker's address space: an allocation beyond
it fails inside that worker, which ends its row as `failed`, instead of the machine swapping.
"""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional

from backends.base import backend_class
from retinabench.errors import BackendUnavailable, BenchError
from retinabench.records import Command, Event, ExitCode, Job, WorkerResult
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


def worker_env(base: Optional[dict] = None) -> dict:
    """The worker's environment: `base` (default: this process's) with the project on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    # torch.compile's kernels are reused across rows and runs (a cold compile is tens of seconds per shape)
    from retinabench.defaults import cache_home  # the user's cache, never the project's folder
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_home(env) / "inductor"))
    return env


class WorkerProcess:
    """A worker started, loaded and driven through its control channel (retinabench.records).

    Every wait has a deadline: the row's `timeout_s` is a budget for the time the parent spends
    waiting on this worker (loading, its own chunks, writing its files), so the rows measured
    between its chunks never count against it. A worker that dies, or outruns its budget, ends
    with a `WorkerResult` that says how: `result` holds it, and the row is over.

    `busy` records, in Unix seconds, each stretch in which the worker worked at the parent's request
    (loading, each chunk, writing its files): what another row on the same host may have felt.
    `env`: the environment to start it with (default: this process's).
    """

    def __init__(self, job: Job, work: WorkDir, python: str, on_progress: Optional[Progress] = None,
                 env: Optional[dict] = None):
        self.job, self.work, self.python = job, work, python
        self.on_progress = on_progress
        self.env = env
        self.result: Optional[WorkerResult] = None
        self.measured = 0                 # loops measured so far (its chunks' `loops`)
        self.last_load: Dict[str, Any] = {}   # the last chunk's reading of other programs' CPU time (cpu_load)
        self.busy: List[List[float]] = []
        self._budget = float(job.timeout_s) if job.timeout_s else None
        self._proc: Optional[subprocess.Popen] = None
        self._commands: Optional[BinaryIO] = None
        self._events: Optional[int] = None
        self._buffer = b""

    # -- lifecycle
    def start(self) -> Optional[WorkerResult]:
        """Start the worker and wait until it is loaded: None when ready, else how its row ended."""
        t0 = time.time()
        try:
            return self._start()
        finally:
            self.busy.append([t0, time.time()])

    def _start(self) -> Optional[WorkerResult]:
        self.work.prepare(self.job)
        cmd_r, cmd_w = os.pipe()
        evt_r, evt_w = os.pipe()
        with open(self.work.stdout, "wb") as out, open(self.work.stderr, "wb") as err:
            self._proc = subprocess.Popen(
                [self.python, "-m", "retinabench.harness.worker", str(self.work.job), "--control", str(cmd_r),
                 str(evt_w)], cwd=ROOT, env=worker_env(self.env), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True, pass_fds=(cmd_r, evt_w))
        os.close(cmd_r)
        os.close(evt_w)
        self._commands = os.fdopen(cmd_w, "wb")
        self._events = evt_r
        return self._until("ready")

    def measure(self, command: Command) -> Optional[WorkerResult]:
        """Run one chunk: None when its loops are measured, else how the row ended."""
        if self.result is not None:
            return self.result
        t0 = time.time()
        try:
            if not self._send(command):
                return self._ended()
            ended = self._until("done")
        finally:
            self.busy.append([t0, time.time()])
        if ended is None:
            self.measured += command.loops
        return ended

    def detect(self, images: List[str], threshold: float, out: Path) -> Optional[WorkerResult]:
        """Untimed detection of `images` into the JSON file `out`: None when written, else how the row ended."""
        if self.result is not None:
            return self.result
        t0 = time.time()
        try:
            if not self._send(Command("detect", images=list(images), threshold=float(threshold), out=str(out))):
                return self._ended()
            return self._until("done")
        finally:
            self.busy.append([t0, time.time()])

    def serve(self, settings: Dict[str, Any], out: Path, limit_s: float) -> Optional[WorkerResult]:
        """One LoadGen test in the worker (retinabench.harness.serving): None when its result.json is written,
        else how the row ended. `limit_s` bounds this wait (a test never outlives its max duration by much)."""
        if self.result is not None:
            return self.result
        t0 = time.time()
        saved = self._budget
        self._budget = limit_s if self._budget is None else min(self._budget, limit_s) + 0.0
        try:
            if not self._send(Command("serve", out=str(out), settings=dict(settings))):
                return self._ended()
            return self._until("done")
        finally:
            spent = time.time() - t0
            self._budget = None if saved is None else max(0.0, saved - spent)
            self.busy.append([t0, time.time()])

    def finish(self) -> WorkerResult:
        """Ask the worker to write its files and end; its result (or how it ended)."""
        if self.result is None:
            t0 = time.time()
            try:
                if self._send(Command("finish")):
                    self._until("finished")
                self._ended()
            finally:
                self.busy.append([t0, time.time()])
        assert self.result is not None
        return self.result

    def interrupt(self) -> None:
        """Stop the worker's process group from another thread (SIGTERM, SIGKILL 5 s later): only
        signals are sent here, the thread that drives the worker owns its pipes and sees its row end."""
        if self._proc is not None:
            kill(self._proc)   # Popen.wait with a timeout is safe beside the driving thread's own waits

    def limit(self, seconds: float) -> None:
        """Wait at most `seconds` more for this worker (an interrupted run stops soon, whatever the budget)."""
        self._budget = seconds if self._budget is None else min(self._budget, seconds)

    def kill(self) -> None:
        if self._proc is not None:
            kill(self._proc)
        self._close()

    # -- the channel
    def _send(self, command: Command) -> bool:
        if self._commands is None:
            return False
        try:
            self._commands.write(command.encode())
            self._commands.flush()
            return True
        except (BrokenPipeError, OSError):  # the worker is gone: _ended() says how
            return False

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def _until(self, kind: str) -> Optional[WorkerResult]:
        """Read events until one of `kind` (None), or until the worker ends or outruns its budget."""
        while True:
            line = self._readline()
            if line is None:
                return self.result
            try:
                event = Event.decode(line)
            except (ValueError, TypeError):
                continue  # not ours (nothing else writes to this pipe; be lenient all the same)
            if event.kind == "progress" and self.on_progress is not None:
                self.on_progress(event.done, event.total)
            if event.kind == kind:
                if kind == "done":
                    self.last_load = dict(event.load or {})
                return None

    def _readline(self) -> Optional[bytes]:
        while b"\n" not in self._buffer:
            if self._events is None:
                return None
            t0 = time.monotonic()
            timeout = None if self._budget is None else max(0.0, self._budget)
            ready, _, _ = select.select([self._events], [], [], timeout)
            if self._budget is not None:
                self._budget -= time.monotonic() - t0
            if not ready:
                self._timed_out()
                return None
            chunk = os.read(self._events, 65536)
            if not chunk:  # the worker closed its end: it has exited or died
                self._ended()
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _timed_out(self) -> None:
        assert self._proc is not None
        kill(self._proc)
        code = self._proc.wait()
        self.result = WorkerResult.failure(
            "failed", f"timed out: the worker ran longer than row_timeout_s={self.job.timeout_s} and was stopped"
            + self._progress_note(), code, signal_name(-code) if code < 0 else "")
        self._close()

    def _ended(self) -> WorkerResult:
        """The worker's exit: its own result where it wrote one, else how it died."""
        if self.result is not None:
            return self.result
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # closed its channel but hangs: stop it
            kill(self._proc)
            code = self._proc.wait()
        record = self.work.read_result()
        if code == ExitCode.OK and record is not None and record.status == "passed":
            self.result = record
        elif code in (ExitCode.UNAVAILABLE, ExitCode.FAILED) and record is not None:
            self.result = record
        else:
            self.result = crash_result(code, self.work)
            self.result.reason += self._progress_note()
        self._close()
        return self.result

    def _progress_note(self) -> str:
        return f" (after {self.measured} of {self.job.loops} measured loops)" if self.measured else ""

    def _close(self) -> None:
        if self._commands is not None:
            try:
                self._commands.close()
            except OSError:  # a broken pipe on the last flush: the worker is gone already
                pass
            self._commands = None
        if self._events is not None:
            os.close(self._events)
            self._events = None


def run_worker(job: Job, work: WorkDir, python: str, on_progress: Optional[Progress] = None) -> WorkerResult:
    """One row from start to finish in one chunk (warmup, then every measured loop): the sequential way."""
    worker = WorkerProcess(job, work, python, on_progress)
    try:
        if worker.start() is None:
            worker.measure(Command("measure", job.loops, job.warmup))
        return worker.finish()
    except BaseException:
        worker.kill()
        raise


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
