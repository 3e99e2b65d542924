"""One backend run in its own process: `python -m retinabench.harness.worker JOB.json`.

Frameworks never share a process (MXNet, Caffe, TensorRT bring their own CUDA, protobuf and
threads), a crash ends one row rather than the run, and a backend can live in another interpreter
(real pycaffe needs Python <= 3.9). The worker does its own timing, so no inter-process cost
enters a measurement. It reads its `Job` and writes its `WorkerResult` (retinabench.records), its
samples and its outputs into its scratch folder (retinabench.store.WorkDir), atomically, and prints
progress lines (retinabench.records.progress_line) on stdout.

Exit codes (retinabench.records.ExitCode): OK, UNAVAILABLE (runtime or device missing), FAILED (a
known reason). Anything else (a signal, an uncaught error) is a crash, reported by the parent with
its stderr.

Stopping is the parent's job: the worker ignores SIGINT (the parent catches Ctrl-C and stops the
worker's process group with SIGTERM), and it dies with the parent (PR_SET_PDEATHSIG) if the parent
is killed without a chance to stop it, so no worker outlives its run.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, List, Optional

from retinabench.records import ExitCode, Job, WorkerResult, progress_line
from retinabench.store import WorkDir


def _load_images(paths: List[str]) -> List[Any]:
    # The main process checked them (cli.common.resolve_images); the same function decodes them
    # here, so a file damaged since then fails this row with the same one line.
    from retinabench.model.images import load_image
    return [load_image(p) for p in paths]


def _progress(done: int, total: int) -> None:
    sys.stdout.write(progress_line(done, total))
    sys.stdout.flush()


def run_job(job: Job, work: WorkDir) -> WorkerResult:
    from backends.base import backend_class
    from retinabench.errors import BackendUnavailable
    from retinabench.harness.loop import measure
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor
    from retinabench.model.source import open_model

    spec = job.backend
    cls = backend_class(spec.name)
    ok, reason = cls.available()
    if not ok:
        raise BackendUnavailable(reason)
    model = open_model(Path(job.model), job.family)
    family = get_family(model.family)
    images = _load_images(list(job.images))
    batch = job.row.batch
    batch_images = [images[i % len(images)] for i in range(batch)]
    pre = Preprocessor(family.normalization, job.input.mode, job.input.size)
    n, c, h, w = pre.blob_shape(batch_images)

    backend = cls(variant=spec.variant, threads=spec.threads, device=spec.device, options=spec.options,
                  max_batch=job.row.max_batch)
    t_load = time.perf_counter()
    with backend:
        backend.load(model, batch, h, w)
        load_s = time.perf_counter() - t_load
        pre = backend.device_preprocess(family, job.input.mode, job.input.size) or pre
        decode = (backend.device_postprocess(family, backend.output_names, job.threshold)
                  or family.make_decoder(backend.output_names, job.threshold))
        monitor = None
        if backend.device.startswith("cuda") and job.gpu_monitor:
            from retinabench.harness.gpu_monitor import GpuMonitor
            from retinabench.records import device_index
            monitor = GpuMonitor(device_index(backend.device))
        result = measure(pre, backend.infer, decode, batch_images, job.loops, job.warmup, _progress,
                         on_measure_start=monitor.start if monitor else None)
        gpu_samples = monitor.stop() if monitor else []
        record = WorkerResult(
            "passed", load_s=load_s, versions=backend.versions(), settings=backend.settings(),
            output_names=list(backend.output_names), model=model.describe(), blob_shape=[n, c, h, w],
            faces=[f.to_json()["faces"] for f in result.faces], gpu_samples=gpu_samples,
            gpu_monitor_error=monitor.error if monitor else "", metrics=backend.metrics())
        if job.save_outputs:
            host = backend.host_outputs(result.outputs)
            work.write_outputs({k: v[:1] for k, v in host.items()})
    work.write_samples(samples=result.samples_ns, warmup=result.warmup_ns)
    return record


def _die_with_parent(parent_pid: Optional[int]) -> None:
    """Ask Linux to SIGKILL this process when the parent dies (a SIGKILLed harness cannot stop us)."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere the next progress line fails with a broken pipe and ends the worker
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(ExitCode.FAILED)


def setup_process(job: Job) -> None:
    """Signals, parent watch, memory limit and environment, all before any runtime is imported."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(job.parent_pid)
    if job.memory_limit_bytes:  # RETINABENCH_WORKER_MEMORY_LIMIT: address space, so an allocation fails cleanly
        import resource
        limit = int(job.memory_limit_bytes)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for k, v in job.backend.env.items():  # validated against config.WORKER_ENV
        os.environ[k] = str(v)
    if job.backend.threads:  # OpenMP (MXNet's MKLDNN, OpenCV, ...) reads this once, at the runtime's import
        os.environ["OMP_NUM_THREADS"] = str(job.backend.threads)


def main(argv: List[str]) -> int:
    work = WorkDir(Path(argv[0]).parent)
    job = work.read_job()
    setup_process(job)
    try:
        work.write_result(run_job(job, work))
        return ExitCode.OK
    except Exception as e:  # every failure becomes a row with a status and a reason
        from retinabench.errors import BackendUnavailable, BenchError
        if isinstance(e, BackendUnavailable):
            status, code = "unavailable", ExitCode.UNAVAILABLE
        else:
            status, code = "failed", ExitCode.FAILED
        if not isinstance(e, BenchError):
            traceback.print_exc(file=sys.stderr)
        work.write_result(WorkerResult.failure(status, _reason(e)))
        return code


def _reason(e: BaseException) -> str:
    """One line saying what went wrong. Runtimes wrap C++ errors in a message that starts with a
    C++ traceback (MXNet: 'Traceback ... MXNetError: Failed to allocate CPU Memory'): take its last line."""
    from retinabench.errors import BenchError
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line[:500] if isinstance(e, BenchError) or line.startswith(type(e).__name__) else f"{type(e).__name__}: {line[:500]}"


if __name__ == "__main__":
    sys.exit(int(main(sys.argv[1:])))
