"""One backend row in its own process: `python -m retinabench.harness.worker JOB.json [--control R W]`.

Frameworks never share a process (MXNet, Caffe, TensorRT bring their own CUDA, protobuf and
threads), a crash ends one row rather than the run, and a backend can live in another interpreter
(real pycaffe needs Python <= 3.9). The worker does its own timing, so no inter-process cost
enters a measurement. It reads its `Job`, loads the backend, and then obeys `Command`s on its
control channel (file descriptors R and W; retinabench.records): each `measure` runs a chunk of
loops (the row's warmup first, a few re-warm loops at the start of later chunks, recorded apart),
each `finish` writes its `WorkerResult`, samples and outputs into its scratch folder
(retinabench.store.WorkDir), atomically, and ends the process. Between commands it blocks on its
pipe and does nothing, so the one worker measuring at a time has the machine to itself.
Without --control it measures warmup + loops in one chunk and finishes (for running it by hand).
A row may be measured by several such workers in turn (retinabench.harness.processes): each is
told its index (`Job.process`), tags its samples with it, and writes into its own scratch folder.
Around each measured chunk the worker reads what other programs took of the CPU meanwhile
(retinabench.harness.cpu_load) and reports it with `done`; a `measure` command with `replace`
sets the previous chunk apart (kept in samples.npz as `replaced`, never counted): the parent found
it contended (retinabench.harness.contention). Progress lines are throttled (PROGRESS_EVERY_S).

Footprint (retinabench.harness.footprint): `main` makes the row's meter first, before any runtime is
imported (its host and GPU memory baselines); the session marks its loading's laps, reads memory
once loaded, resets the peaks before the first measured chunk, and the record goes into the row's
`WorkerResult.footprint`.

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
from typing import Any, BinaryIO, Dict, List, Optional

from retinabench.harness.cpu_load import CpuLoadMeter
from retinabench.harness.footprint import FootprintMeter
from retinabench.records import Command, Event, ExitCode, Job, WorkerResult
from retinabench.store import WorkDir

PROGRESS_EVERY_S = 0.25      # the most often a worker wakes its parent with a progress line
UTILISATION_WINDOW_S = 2.5   # of extra loops where the measured chunks were too short for NVML's samples
# Per-call metric lists a backend records (one entry per loop run, of every kind): sliced to the measured loops.
PER_CALL_METRICS = ("gpu_time_ms", "gpu_preprocess_ms", "gpu_postprocess_ms")


def _load_images(paths: List[str]) -> List[Any]:
    # The main process checked them (cli.common.resolve_images); the same function decodes them
    # here, so a file damaged since then fails this row with the same one line.
    from retinabench.model.images import load_image
    return [load_image(p) for p in paths]


class Channel:
    """The worker's end of the control channel: commands in, events out (one JSON line each)."""

    def __init__(self, commands: BinaryIO, events: BinaryIO):
        self._commands, self._events = commands, events

    def send(self, event: Event) -> None:
        self._events.write(event.encode())
        self._events.flush()

    def receive(self) -> Optional[Command]:
        line = self._commands.readline()
        return Command.decode(line) if line else None   # None: the parent closed the channel


class RowSession:
    """A loaded row: its backend, stages and measured loop, and every sample it has measured so far."""

    def __init__(self, job: Job, work: WorkDir, footprint: Optional[FootprintMeter] = None):
        self.footprint = fp = footprint if footprint is not None else FootprintMeter(job.backend.device)
        fp.begin()
        from backends.base import backend_class
        from retinabench.errors import BackendUnavailable
        from retinabench.harness.loop import MeasuredLoop
        from retinabench.model.family import get_family
        from retinabench.model.preprocess import Preprocessor
        from retinabench.model.source import open_model

        self.job, self.work = job, work
        spec = job.backend
        cls = backend_class(spec.name)
        ok, reason = cls.available()
        if not ok:
            raise BackendUnavailable(reason)
        fp.lap("import")
        self.model = open_model(Path(job.model), job.family)
        fp.lap("read", self.model)
        family = get_family(self.model.family)
        images = _load_images(list(job.images))
        batch = job.row.batch
        batch_images = [images[i % len(images)] for i in range(batch)]
        pre = Preprocessor(family.normalization, job.input.mode, job.input.size)
        self._detect_pre = Preprocessor(family.normalization, job.input.mode, job.input.size)  # untimed, its own buffers
        self.blob_shape = list(pre.blob_shape(batch_images))
        _, _, h, w = self.blob_shape
        self.backend = cls(variant=spec.variant, threads=spec.threads, device=spec.device, options=spec.options,
                           max_batch=job.row.max_batch)
        fp.lap("harness", self.model)
        t_load = time.perf_counter()
        self.backend.load(self.model, batch, h, w)
        self.load_s = time.perf_counter() - t_load
        fp.lap("build", self.model)
        be = self.backend
        self.stage_build_s: Optional[float] = None
        self.pipeline = (be.device_pipeline(family, job.input.mode, job.input.size, be.output_names, job.threshold)
                         if be.stages_on_device else None)
        if self.pipeline is not None:  # e2e / throughput: one synchronisation per loop, stages from CUDA events
            from retinabench.harness.loop import PipelinedLoop
            self.loop: Any = PipelinedLoop(self.pipeline, batch_images)
            self.stage_build_s = self.pipeline.build(batch_images)
        else:
            pre = be.device_preprocess(family, job.input.mode, job.input.size) or pre
            decode = (be.device_postprocess(family, be.output_names, job.threshold)
                      or family.make_decoder(be.output_names, job.threshold))
            self.loop = MeasuredLoop(pre, be.infer, decode, batch_images)
            if be.stages_on_device:
                # Device stages capture (and compile) on their first call: do that here, not in a loop.
                from retinabench.model.device.pipeline import build_device_stages
                self.stage_build_s = build_device_stages(pre, be.infer, decode, batch_images)
        # the device stages' build pass is their first call: the row's cold start
        fp.lap("harness", self.model, {"stage_build": self.stage_build_s or 0.0})
        self.monitor: Any = None
        if be.device.startswith("cuda") and job.gpu_monitor:
            from retinabench.harness.gpu_monitor import GpuMonitor
            self.monitor = GpuMonitor(be.device)   # matched to NVML by UUID / PCI bus id, not by index
            self.monitor.open()  # before warmup: NVML's start-up never lands next to a measured loop
        fp.loaded(self.model, self.stage_build_s, "device-stage build pass" if self.pipeline is None else
                  f"pipeline build ({getattr(self.pipeline, 'depth', 1) + 1} steps, graphs captured)")
        import numpy as np
        self._np = np
        self.warmup = np.zeros((0, 4), np.int64)
        self.chunks: List[Any] = []        # measured samples per chunk
        self.rounds: List[int] = []        # the round of each chunk
        self.rewarm: List[Any] = []        # re-warm samples per chunk
        self.windows: List[List[float]] = []
        self.measured_calls: List[List[int]] = []  # per chunk, the loop-call indices whose per-call metrics are kept
        # chunks measured while other programs were busy and measured again (the parent's call): kept apart
        self.replaced: List[Any] = []
        self.replaced_rounds: List[int] = []
        self.load = CpuLoadMeter(job.parent_pid)
        self.contention: List[Dict[str, Any]] = []   # per chunk measured, kept or replaced

    def measure(self, cmd: Command, progress: Any) -> Dict[str, Any]:
        """One chunk: warmup, re-warm, then the measured loops; what other programs took meanwhile."""
        np, loop = self._np, self.loop
        if cmd.replace and self.chunks:
            self._replace_last()
        total = cmd.warmup + cmd.rewarm + cmd.loops
        warm = loop.run(cmd.warmup, lambda d, _: progress(d, total))
        if cmd.warmup:
            self.warmup = np.concatenate([self.warmup, warm])
        rewarm = loop.run(cmd.rewarm, lambda d, _: progress(cmd.warmup + d, total))
        first = loop.calls
        self.footprint.measure_begin()   # the first time: load's peak read, the peaks reset
        if self.monitor is not None:
            self.monitor.begin_window()
        self.load.begin()
        start = time.time()
        samples = loop.run(cmd.loops, lambda d, _: progress(cmd.warmup + cmd.rewarm + d, total))
        end = time.time()
        load = self.load.end()
        if len(samples):   # the chunk's median total: a serving run starts its search from it
            load["median_total_ms"] = round(float(np.median(samples[:, 3])) / 1e6, 6)
        self.windows.append([cmd.round, start, end])
        if self.monitor is not None:
            self.monitor.end_window()
            load.update(self.monitor.others(start, self._harness_pids()))
        self.chunks.append(samples)
        self.rounds.append(cmd.round)
        self.rewarm.append(rewarm)
        self.measured_calls.append(list(range(first, first + cmd.loops)))
        self.footprint.chunk(warm, rewarm, samples)
        entry = {"process": self.job.process, "round": cmd.round, "loops": cmd.loops, "start": start, **load,
                 "replaced": False}
        if not load and self.load.reason:
            entry["note"] = self.load.reason
        self.contention.append(entry)
        return load

    def detect(self, cmd: Command) -> None:
        """Untimed: every image of `cmd` through the row's preprocessing, network and a decoder that keeps
        faces down to `cmd.threshold` (the speed rows' threshold stays as it is); the faces to `cmd.out`."""
        import json
        from retinabench.model.family import get_family
        from retinabench.store import atomic_write
        be = self.backend
        family = get_family(self.model.family)
        pre = self._detect_pre
        decode = family.make_decoder(be.output_names, cmd.threshold)
        if getattr(decode, "input_size", 0) is None:   # a decoder that needs the network's input size (biubug6's
            decode.input_size = tuple(self.blob_shape[2:])  # priors): the canvas, which `pad` fills on no side
        found = {}
        for path in cmd.images:
            image = _load_images([path])[0]
            batch = [image] * self.job.row.batch    # a row built for batch N runs N copies; the first counts
            blob, metas = pre(batch)
            faces = decode(be.host_outputs(be.infer(blob)), metas)[0]
            found[path] = faces.to_json()["faces"]
        atomic_write(Path(cmd.out), json.dumps(found))

    def serve(self, cmd: Command) -> None:
        """One LoadGen test of this row's pipeline (retinabench.harness.serving), untimed by us: LoadGen
        keeps the clock. Its logs and what they say go to `cmd.out`."""
        import json
        from retinabench.harness import serving
        from retinabench.store import atomic_write
        st = dict(cmd.settings)
        out = Path(cmd.out)
        in_flight = int(st.get("in_flight", 1))
        steppers, split = self._steppers(in_flight)
        decode = None
        if st.get("decode"):
            import cv2
            import numpy as np
            samples = [Path(p).read_bytes() for p in self.job.images]
            decode = lambda raw: cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)  # noqa: E731
        else:
            samples = _load_images(list(self.job.images))
        result = serving.run_test(steppers, self.job.row.batch, samples, st["kind"], dict(st.get("fields") or {}),
                                  out, self.job.backend.device, decode=decode,
                                  max_queue_delay_s=float(st.get("max_queue_delay_ms", 0.0)) / 1000.0,
                                  max_backlog=int(st.get("max_backlog", 10000)), parent_pid=self.job.parent_pid)
        result.update(split)
        atomic_write(out / "result.json", json.dumps(result, indent=1))

    def _steppers(self, in_flight: int) -> Any:
        """The pipeline copies that serve requests: the loaded row itself for one request in flight; else
        `in_flight` fresh copies of the backend sharing the row's threads (recorded as the split)."""
        loop = self.loop
        if in_flight <= 1:
            if hasattr(loop, "pipeline"):
                if getattr(loop.pipeline, "depth", 1) != 1:
                    from retinabench.errors import BenchError
                    raise BenchError("serving runs pipelines of one batch in flight: a throughput variant keeps "
                                     "two and answers the previous batch (serve its e2e or staged variant)")
                return [lambda images: loop.pipeline.step(images)[0]], {"in_flight": 1, "threads_each": self.backend.threads}
            return [_stepper(loop.preprocess, loop.infer, loop.postprocess)], \
                {"in_flight": 1, "threads_each": self.backend.threads}
        from backends.base import backend_class
        from retinabench.model.family import get_family
        from retinabench.model.preprocess import Preprocessor
        spec, job = self.job.backend, self.job
        threads = max(1, (spec.threads or os.cpu_count() or 1) // in_flight)
        family = get_family(self.model.family)
        out = []
        self._copies = []
        _, _, h, w = self.blob_shape
        images = _load_images(list(job.images))
        batch_images = [images[i % len(images)] for i in range(job.row.batch)]
        for _ in range(in_flight):
            be = backend_class(spec.name)(variant=spec.variant, threads=threads, device=spec.device,
                                          options=spec.options, max_batch=job.row.max_batch)
            be.load(self.model, job.row.batch, h, w)
            self._copies.append(be)
            # each copy as the row itself is built: its own device stages (captured, compiled) where it has them
            pre = be.device_preprocess(family, job.input.mode, job.input.size) or \
                Preprocessor(family.normalization, job.input.mode, job.input.size)
            decode = (be.device_postprocess(family, be.output_names, job.threshold)
                      or family.make_decoder(be.output_names, job.threshold))
            if be.stages_on_device:
                from retinabench.model.device.pipeline import build_device_stages
                build_device_stages(pre, be.infer, decode, batch_images)
            out.append(_stepper(pre, be.infer, decode))
        return out, {"in_flight": in_flight, "threads_each": threads, "threads_row": spec.threads}

    def _harness_pids(self) -> List[int]:
        """This run's other workers (the parent's children): idle while this one measures, but NVML's
        per-process samples are coarse enough to straddle a hand-over; they are not other programs."""
        try:
            import psutil
            return [p.pid for p in psutil.Process(self.job.parent_pid).children(recursive=True)] \
                if self.job.parent_pid else []
        except Exception:
            return []

    def _replace_last(self) -> None:
        """The last chunk was measured while others were busy: its samples move apart (kept, not counted)."""
        self.replaced.append(self.chunks.pop())
        self.replaced_rounds.append(self.rounds.pop())
        self.rewarm.pop()
        self.windows.pop()
        self.measured_calls.pop()
        for entry in reversed(self.contention):
            if not entry["replaced"]:
                entry["replaced"] = True
                break

    def finish(self) -> WorkerResult:
        np, be = self._np, self.backend
        if self.pipeline is not None:
            self.pipeline.drain()   # the batch still in flight, not timed
        samples, rounds = _stack(np, self.chunks, self.rounds)
        rewarm, rewarm_rounds = _stack(np, self.rewarm, self.rounds)
        replaced, replaced_rounds = _stack(np, self.replaced, self.replaced_rounds)
        gpu = dict(self.monitor.close()) if self.monitor is not None else {}
        if gpu and gpu.get("util_mean_pct") is None and not gpu.get("error") and self.chunks:
            gpu = self._utilisation_window(gpu)
        settings = be.settings()
        if hasattr(os, "sched_getaffinity"):   # where the row's threads could run (pinned by a threads sweep)
            settings.extras["affinity"] = sorted(os.sched_getaffinity(0))
            settings.extras["pinned"] = bool(self.job.backend.pin)
        if self.stage_build_s is not None:
            settings.extras["stage_build_s"] = round(self.stage_build_s, 3)
        record = WorkerResult(
            "passed", load_s=self.load_s, versions=be.versions(), settings=settings,
            output_names=list(be.output_names), model=self.model.describe(), blob_shape=self.blob_shape,
            faces=[f.to_json()["faces"] for f in self.loop.faces], gpu_samples=gpu.pop("samples", []),
            gpu_monitor_error=gpu.pop("error", ""), gpu_monitor=gpu,
            metrics=measured_metrics(be.metrics(), self.loop.calls, [c for chunk in self.measured_calls for c in chunk]),
            windows=self.windows, footprint=self.footprint.record(), contention=self.contention)
        if self.job.save_outputs:
            host = be.host_outputs(self.loop.outputs)
            self.work.write_outputs({k: v[:1] for k, v in host.items()})
        self.work.write_samples(samples=samples, warmup=self.warmup, rounds=rounds, rewarm=rewarm,
                                rewarm_rounds=rewarm_rounds, processes=np.full(len(samples), self.job.process, np.int32),
                                replaced=replaced, replaced_rounds=replaced_rounds)
        return record

    def _utilisation_window(self, measured: Dict[str, Any]) -> Dict[str, Any]:
        """NVML's samples each cover 1/6 s to 1 s: no sample fits inside a row's measured chunks when
        they are short (interleaved rounds of a fast GPU row last tens of milliseconds). Then the row
        runs UTILISATION_WINDOW_S more of its loops, alone (the other rows' workers wait), for its
        utilisation only: those loops are not timed into its samples."""
        from retinabench.harness.gpu_monitor import GpuMonitor
        monitor = GpuMonitor(self.backend.device)
        monitor.open()
        per_loop_s = max(1e-4, float(self._np.median(self.chunks[-1][:, 3])) / 1e9)
        loops = max(1, int(UTILISATION_WINDOW_S / per_loop_s) + 1)
        monitor.begin_window()
        self.loop.run(loops)
        monitor.end_window()
        extra = dict(monitor.close())
        extra["measured_windows"] = {k: measured.get(k) for k in ("windows", "window_s", "short_window", "note")}
        extra["utilisation_from"] = (f"{loops} loops ({extra.get('window_s') or 0:.2f} s) run after the measured ones "
                                     "for utilisation only: no NVML sample fitted inside the measured chunks")
        return extra

    def close(self) -> None:
        for copy in getattr(self, "_copies", []):
            copy.close()
        self.backend.close()


def _stepper(pre: Any, infer: Any, post: Any) -> Any:
    """One pass of a host pipeline over a batch of images: its faces per image."""
    def step(images: List[Any]) -> List[Any]:
        blob, metas = pre(images)
        return post(infer(blob), metas)
    return step


def _stack(np: Any, chunks: List[Any], rounds: List[int]) -> Any:
    """(samples [n, 4], the round of each) of chunks measured in `rounds`."""
    if not chunks:
        return np.zeros((0, 4), np.int64), np.zeros((0,), np.int32)
    return (np.concatenate(chunks).astype(np.int64),
            np.concatenate([np.full(len(c), r, np.int32) for c, r in zip(chunks, rounds)]))


def measured_metrics(metrics: Dict[str, Any], calls: int, measured: List[int]) -> Dict[str, Any]:
    """Per-call metric lists cut to the measured loops (warmup and re-warm calls dropped).

    A list's last `calls` entries are the loops' (a backend may have recorded calls of its own first,
    e.g. while loading); anything shorter does not line up with the loops and is kept as it is."""
    out = dict(metrics)
    for key in PER_CALL_METRICS:
        values = metrics.get(key)
        if isinstance(values, list) and len(values) >= calls:
            tail = values[len(values) - calls:]
            out[key] = [tail[i] for i in measured]
    out.pop("gpu_times_include_warmup", None)
    return out


def serve(job: Job, work: WorkDir, channel: Optional[Channel],
          footprint: Optional[FootprintMeter] = None) -> WorkerResult:
    """Load, then obey the parent's commands until `finish` (or measure all at once without a channel)."""
    session = RowSession(job, work, footprint)
    try:
        if channel is None:
            session.measure(Command("measure", job.loops, job.warmup), _print_progress)
            return session.finish()
        channel.send(Event("ready"))
        while True:
            cmd = channel.receive()
            if cmd is None:
                raise RuntimeError("the parent closed the control channel before `finish`")
            if cmd.kind == "finish":
                return session.finish()
            if cmd.kind == "detect":
                session.detect(cmd)
                channel.send(Event("done", len(cmd.images), len(cmd.images)))
                continue
            if cmd.kind == "serve":
                session.serve(cmd)
                channel.send(Event("done"))
                continue
            load = session.measure(cmd, _Throttled(channel, cmd.round))
            channel.send(Event("done", cmd.loops, cmd.loops, cmd.round, load=load))
    finally:
        session.close()


class _Throttled:
    """Progress events at most every PROGRESS_EVERY_S (and the last one): each wakes the parent, whose
    CPU time a measured chunk shares, so a fast row must not send a hundred of them per chunk."""

    def __init__(self, channel: Channel, round_: int):
        self.channel, self.round = channel, round_
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.channel.send(Event("progress", done, total, self.round))


def _print_progress(done: int, total: int) -> None:
    sys.stdout.write(f"{done}/{total} loops\n")
    sys.stdout.flush()


def _die_with_parent(parent_pid: Optional[int]) -> None:
    """Ask Linux to SIGKILL this process when the parent dies (a SIGKILLed harness cannot stop us)."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere the next event fails with a broken pipe and ends the worker
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
    if job.backend.pin and job.backend.threads and hasattr(os, "sched_setaffinity"):
        # a threads sweep: the row's threads on that many cores (the first of those this process may use),
        # so 1 and 2 threads mean 1 and 2 cores whatever the runtime's own thread placement
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, allowed[:max(1, int(job.backend.threads))])
    if job.backend.threads:  # OpenMP (MXNet's MKLDNN, OpenCV, ...) reads this once, at the runtime's import
        os.environ["OMP_NUM_THREADS"] = str(job.backend.threads)
        # OpenBLAS (inside pycaffe, numpy) sizes its pool when it loads: before available() imports caffe
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(job.backend.threads))


def main(argv: List[str]) -> int:
    work = WorkDir(Path(argv[0]).parent)
    channel = None
    if len(argv) == 4 and argv[1] == "--control":
        channel = Channel(os.fdopen(int(argv[2]), "rb"), os.fdopen(int(argv[3]), "wb"))
    job = work.read_job()
    setup_process(job)
    meter = FootprintMeter(job.backend.device)  # the baselines: before any runtime is imported
    try:
        work.write_result(serve(job, work, channel, meter))
        if channel is not None:
            channel.send(Event("finished"))
        return ExitCode.OK
    except Exception as e:  # every failure becomes a row with a status and a reason
        from retinabench.errors import BackendUnavailable, BenchError
        if isinstance(e, BackendUnavailable):
            status, code = "unavailable", ExitCode.UNAVAILABLE
        else:
            status, code = "failed", ExitCode.FAILED
        if not isinstance(e, BenchError):
            traceback.print_exc(file=sys.stderr)
        result = WorkerResult.failure(status, _reason(e))
        result.footprint = meter.record()   # as far as it got: a failed allocation's attempt shows in its load peak
        work.write_result(result)
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
