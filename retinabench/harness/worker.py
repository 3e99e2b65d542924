"""One backend run in its own process: `python -m retinabench.harness.worker JOB.json`.

Frameworks never share a process (MXNet, Caffe, TensorRT bring their own CUDA, protobuf and
threads), a crash ends one row rather than the run, and a backend can live in another interpreter
(real pycaffe needs Python <= 3.9). The worker does its own timing, so no inter-process cost
enters a measurement. It writes result.json (+ samples.npz, outputs.npz) into the job's folder,
atomically, and prints progress lines `P <done> <total>` on stdout.

Exit codes: 0 passed, 3 unavailable (runtime or device missing), 4 failed with a known reason.
Anything else (a signal, an uncaught error) is a crash, reported by the parent with its stderr.

Stopping is the parent's job: the worker ignores SIGINT (the parent catches Ctrl-C and stops the
worker's process group with SIGTERM), and it dies with the parent (PR_SET_PDEATHSIG) if the parent
is killed without a chance to stop it, so no worker outlives its run.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

EXIT_PASSED, EXIT_UNAVAILABLE, EXIT_FAILED = 0, 3, 4


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _write_npz(path: Path, **arrays: Any) -> None:
    import numpy as np
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_images(paths: List[str]):
    import cv2
    from retinabench.errors import BenchError
    images = []
    for p in paths:
        img = cv2.imread(p, cv2.IMREAD_COLOR)
        if img is None:
            raise BenchError(f"image {p} cannot be read as an image")
        images.append(img)
    return images


def run_job(job: Dict[str, Any], out: Path) -> int:
    from backends.base import backend_class
    from retinabench.errors import BackendUnavailable
    from retinabench.harness.loop import measure
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor
    from retinabench.model.source import open_model

    spec = job["backend"]
    cls = backend_class(spec["name"])
    ok, reason = cls.available()
    if not ok:
        raise BackendUnavailable(reason)
    model = open_model(Path(job["model"]), job.get("family"))
    family = get_family(model.family)
    images = _load_images(job["images"])
    batch = int(job["batch"])
    batch_images = [images[i % len(images)] for i in range(batch)]
    inp = job["input"]
    size = (inp["width"], inp["height"]) if inp["mode"] == "fit" else None
    pre = Preprocessor(family.normalization, inp["mode"], size)
    n, c, h, w = pre.blob_shape(batch_images)

    backend = cls(variant=spec.get("variant", "default"), threads=spec.get("threads"),
                  device=spec.get("device", "cpu"),
                  # the engine's max batch: TensorRT builds its optimisation profile up to it
                  options={**(spec.get("options") or {}), "max_batch": int(job.get("max_batch", batch))})
    t_load = time.perf_counter()
    with backend:
        backend.load(model, batch, h, w)
        load_s = time.perf_counter() - t_load
        threshold = float(job["threshold"])
        pre = backend.device_preprocess(family, inp["mode"], size) or pre
        decode = (backend.device_postprocess(family, backend.output_names, threshold)
                  or family.make_decoder(backend.output_names, threshold))

        def progress(done: int, total: int) -> None:
            sys.stdout.write(f"P {done} {total}\n")
            sys.stdout.flush()

        monitor = None
        if str(backend.device).startswith("cuda") and job.get("gpu_monitor", True):
            from retinabench.harness.gpu_monitor import GpuMonitor
            monitor = GpuMonitor(int(str(backend.device).split(":")[1]) if ":" in str(backend.device) else 0)
        result = measure(pre, backend.infer, decode, batch_images, int(job["loops"]), int(job["warmup"]),
                         progress, on_measure_start=monitor.start if monitor else None)
        gpu_samples = monitor.stop() if monitor else []
        extra = backend.extra_metrics()
        record = {
            "status": "passed", "reason": "", "load_s": load_s,
            "versions": backend.versions(), "settings": backend.settings(),
            "output_names": list(backend.output_names), "model": model.describe(),
            "blob_shape": [n, c, h, w], "faces": [f.to_json()["faces"] for f in result.faces],
            "gpu_samples": gpu_samples, "gpu_monitor_error": monitor.error if monitor else "",
            "extra": extra,
        }
        if job.get("save_outputs", True):
            host = backend.host_outputs(result.outputs)
            _write_npz(out / "outputs.npz", **{k: v[:1] for k, v in host.items()})
    _write_npz(out / "samples.npz", samples=result.samples_ns, warmup=result.warmup_ns)
    _write_json(out / "result.json", record)
    return EXIT_PASSED


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
        os._exit(EXIT_FAILED)


def setup_process(job: Dict[str, Any]) -> None:
    """Signals, parent watch, memory limit and environment, all before any runtime is imported."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(job.get("parent_pid"))
    limit = job.get("memory_limit_bytes")
    if limit:  # RETINABENCH_WORKER_MEMORY_LIMIT: address space, so an allocation fails cleanly
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    for k, v in (job["backend"].get("env") or {}).items():  # validated against config.WORKER_ENV
        os.environ[k] = str(v)
    threads = job["backend"].get("threads")
    if threads:  # OpenMP (MXNet's MKLDNN, OpenCV, ...) reads this once, at the runtime's import
        os.environ["OMP_NUM_THREADS"] = str(threads)


def main(argv: List[str]) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    out = job_path.parent
    setup_process(job)
    try:
        return run_job(job, out)
    except Exception as e:  # every failure becomes a row with a status and a reason
        from retinabench.errors import BackendUnavailable, BenchError
        if isinstance(e, BackendUnavailable):
            status, code = "unavailable", EXIT_UNAVAILABLE
        else:
            status, code = "failed", EXIT_FAILED
        if not isinstance(e, BenchError):
            traceback.print_exc(file=sys.stderr)
        _write_json(out / "result.json", {"status": status, "reason": _reason(e) or status})
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
    sys.exit(main(sys.argv[1:]))
