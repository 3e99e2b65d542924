"""Serving: MLPerf LoadGen drives queries at a row's whole pipeline, inside the row's own worker.

The measured loop (retinabench.harness.loop) answers a lab question: how long one image takes when
it arrives after the previous one is done. A deployer asks another: how many requests per second
(or camera streams) the pipeline serves at a latency bound. MLPerf LoadGen (`mlperf_loadgen`, PyPI
`mlcommons-loadgen`) is the field's reference for that question; it only measures the system under
test it is given. Here the system under test is the row's preprocessing, inference and
postprocessing (and the JPEG decode with `decode: true`), run by `Server`:

- on a CPU: `in_flight` requests at once, each on its own copy of the pipeline, the row's thread
  budget split between them (a copy is another backend instance with threads/in_flight threads);
- on a GPU (or any row loaded at a batch above one): dynamic batching: a request waits at most
  `max_queue_delay_ms` for others to fill a batch of the row's size; a batch that does not fill is
  padded with copies of its last image (the copies' faces are dropped), so the loaded engine keeps
  its one shape.

The query sample library holds the scenario's images (decoded, or as JPEG bytes). A backlog beyond
`max_backlog` samples ends the test early and marks it overloaded (every waiting query is answered
at once, so LoadGen finishes and never waits on a queue that cannot drain), and `max_duration_ms`
caps every test: a run never hangs and never fills memory. LoadGen's own logs
(mlperf_log_summary.txt, mlperf_log_detail.txt) are written into the test's folder, and `run_test`
returns what they say (validity and its reasons, latency percentiles, rates) with the energy the
CPU (RAPL, /sys/class/powercap) or the GPU (NVML's total-energy counter) used, where a counter exists.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from retinabench.config import LOADGEN_SETTINGS as TEST_SETTINGS  # noqa: E402  (the names a `load:` may set)

SCENARIOS = {"singlestream": "SingleStream", "multistream": "MultiStream", "server": "Server", "offline": "Offline"}

Stepper = Callable[[List[Any]], List[Any]]   # a batch of images (the row's batch size) -> faces per image


def loadgen_available() -> Optional[str]:
    """None where mlperf_loadgen imports, else why not (one line)."""
    try:
        import mlperf_loadgen  # noqa: F401
    except ImportError as e:
        return f"MLPerf LoadGen is not installed (pip install mlcommons-loadgen): {e}"
    return None


def read_detail(path: Path) -> Dict[str, Any]:
    """LoadGen's mlperf_log_detail.txt: its ':::MLLOG {json}' lines, key -> value (the last one wins)."""
    out: Dict[str, Any] = {}
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if not line.startswith(":::MLLOG"):
            continue
        try:
            rec = json.loads(line[len(":::MLLOG"):].strip())
        except ValueError:
            continue
        if isinstance(rec, dict) and "key" in rec:
            out[str(rec["key"])] = rec.get("value")
    return out


def outcome(detail: Dict[str, Any]) -> Dict[str, Any]:
    """What a test's detail log says: validity, its reasons, latency percentiles (ms), the rates."""
    def ns(key: str) -> Optional[float]:
        v = detail.get(key)
        return float(v) / 1e6 if isinstance(v, (int, float)) else None

    out: Dict[str, Any] = {"validity": detail.get("result_validity", "UNKNOWN"),
                           "invalid_reason": str(detail.get("result_invalid_reason") or ""),
                           "early_stopping": str(detail.get("early_stopping_result") or ""),
                           "query_count": detail.get("result_query_count"),
                           "p50_ms": ns("result_50.00_percentile_latency_ns"),
                           "p90_ms": ns("result_90.00_percentile_latency_ns"),
                           "p99_ms": ns("result_99.00_percentile_latency_ns"),
                           "mean_ms": ns("result_mean_latency_ns"), "max_ms": ns("result_max_latency_ns")}
    for key in ("result_scheduled_samples_per_sec", "result_completed_samples_per_sec", "result_samples_per_second",
                "result_qps_with_loadgen_overhead", "result_qps_without_loadgen_overhead"):
        if isinstance(detail.get(key), (int, float)):
            out[key.replace("result_", "")] = float(detail[key])
    for key in ("early_stopping_latency_ss", "early_stopping_latency_ms"):
        if isinstance(detail.get(key), (int, float)):
            out[key + "_ms"] = float(detail[key]) / 1e6
    return out


class EnergyMeter:
    """Joules over a stretch of time: RAPL on a CPU (package domains under /sys/class/powercap), NVML's
    total-energy counter on a GPU; `reason` says why not where neither can be read."""

    def __init__(self, device: str):
        self.device = device
        self.reason = ""
        self._start: Optional[float] = None
        self._nv: Any = None
        self._handle: Any = None
        if device.startswith("cuda"):
            try:
                import pynvml as nv
                nv.nvmlInit()
                index = int(device.split(":", 1)[1]) if ":" in device else 0
                self._handle = nv.nvmlDeviceGetHandleByIndex(index)
                nv.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                self._nv = nv
            except Exception as e:
                self.reason = f"NVML total energy: {type(e).__name__}: {e}"
        else:
            self._files = sorted(Path("/sys/class/powercap").glob("intel-rapl:*/energy_uj"))
            if not self._files:
                self.reason = "no RAPL counter under /sys/class/powercap (a virtual machine exposes none)"
            elif not all(os.access(p, os.R_OK) for p in self._files):
                self.reason = "RAPL counters are not readable by this user"

    def _read(self) -> Optional[float]:
        if self.reason:
            return None
        try:
            if self._nv is not None:
                return self._nv.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0   # mJ -> J
            return sum(int(p.read_text()) for p in self._files) / 1e6                        # uJ -> J
        except Exception as e:
            self.reason = f"{type(e).__name__}: {e}"
            return None

    def begin(self) -> None:
        self._start = self._read()

    def end(self) -> Dict[str, Any]:
        stop = self._read()
        if self._start is None or stop is None:
            return {"energy": f"unavailable: {self.reason}"}
        return {"energy_j": round(stop - self._start, 3),
                "energy_source": "nvml total energy" if self._nv is not None else "rapl"}


class Server:
    """The system under test: queued samples served by `len(steppers)` threads, each a copy of the pipeline.

    The first copy runs on the thread that calls `serve_here` (the worker's main thread, where the
    closed loop ran it): PyTorch's CPU convolutions run on one core when called from any other
    thread (measured: 17.6 ms per image on a new thread against 7.3 ms on the main one, at 2 threads),
    so serving on a side thread would measure a different pipeline from the closed loop's.

    `batch`: the row's batch size; a thread takes up to that many queued samples (waiting at most
    `max_queue_delay_s` after the first for the rest), pads the batch, runs it, and answers them."""

    def __init__(self, steppers: Sequence[Stepper], batch: int, samples: Sequence[Any], decode: Optional[Callable] = None,
                 max_queue_delay_s: float = 0.0, max_backlog: int = 10000):
        import mlperf_loadgen as lg
        self.lg = lg
        self.steppers, self.batch, self.samples = list(steppers), int(batch), list(samples)
        self.decode = decode
        self.max_queue_delay_s, self.max_backlog = float(max_queue_delay_s), int(max_backlog)
        self.queue: "queue.Queue[Any]" = queue.Queue()
        self.overloaded = threading.Event()
        self.stop = threading.Event()
        self.errors: List[str] = []
        self.batches = 0
        self.served = 0
        self.service_s: List[float] = []      # per batch: the pipeline's own time (what the closed loop times)
        self.wait_s: List[float] = []         # per query: from LoadGen's issue to the pipeline taking it up
        self._threads = [threading.Thread(target=self._serve, args=(s, self.stop), name=f"sut-{i}", daemon=True)
                         for i, s in enumerate(self.steppers[1:], 1)]

    # -- LoadGen's callbacks (on LoadGen's threads: they only enqueue) --
    def issue_query(self, query_samples: Sequence[Any]) -> None:
        now = time.perf_counter()
        for q in query_samples:
            self.queue.put((q, now))
        if self.queue.qsize() > self.max_backlog and not self.overloaded.is_set():
            self.overloaded.set()

    def flush_queries(self) -> None:
        pass

    # -- the serving threads --
    def start(self) -> None:
        """The copies after the first, each on its own thread."""
        for t in self._threads:
            t.start()

    def serve_here(self, until: threading.Event) -> None:
        """The first copy, on the calling thread, until `until` is set (LoadGen's test has ended)."""
        self._serve(self.steppers[0], until)

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _take(self) -> List[Any]:
        try:
            first = self.queue.get(timeout=0.05)
        except queue.Empty:
            return []
        taken = [first]
        deadline = time.monotonic() + self.max_queue_delay_s
        while len(taken) < self.batch:
            wait = deadline - time.monotonic()
            try:
                taken.append(self.queue.get(timeout=wait) if wait > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return taken

    def _answer(self, taken: Sequence[Any]) -> None:
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(q.id, 0, 0) for q, _ in taken])

    def _serve(self, step: Stepper, stop: threading.Event) -> None:
        while not stop.is_set():
            taken = self._take()
            if not taken:
                continue
            if self.overloaded.is_set():   # drain: LoadGen must finish; the test is marked overloaded
                self._answer(taken)
                continue
            t0 = time.perf_counter()
            self.wait_s.extend(t0 - issued for _, issued in taken)
            try:
                images = [self.samples[q.index % len(self.samples)] for q, _ in taken]
                if self.decode is not None:
                    images = [self.decode(b) for b in images]
                images += [images[-1]] * (self.batch - len(images))
                step(images)
            except Exception as e:   # a failing pipeline: recorded, its queries answered so the test ends
                self.errors.append(f"{type(e).__name__}: {e}")
                self.overloaded.set()
            self.service_s.append(time.perf_counter() - t0)
            self._answer(taken)
            self.batches += 1
            self.served += len(taken)

    def costs(self) -> Dict[str, Any]:
        """Where a request's time went: the pipeline's own (service) time per batch, and the wait from
        LoadGen's issue to the pipeline taking the request up (queueing, dynamic batching, thread wake-up)."""
        import numpy as np
        out: Dict[str, Any] = {}
        if self.service_s:
            sv = np.asarray(self.service_s) * 1e3
            out.update(service_ms_p50=round(float(np.median(sv)), 4), service_ms_p99=round(float(np.percentile(sv, 99)), 4))
        if self.wait_s:
            wt = np.asarray(self.wait_s) * 1e3
            out.update(wait_ms_p50=round(float(np.median(wt)), 4), wait_ms_p99=round(float(np.percentile(wt, 99)), 4),
                       batch_mean=round(len(self.wait_s) / max(1, len(self.service_s)), 3))
        return out


def test_settings(lg: Any, kind: str, fields: Dict[str, Any]) -> Any:
    """LoadGen's TestSettings for a scenario kind, PerformanceOnly, with `fields` under LoadGen's names."""
    s = lg.TestSettings()
    s.scenario = getattr(lg.TestScenario, SCENARIOS[kind])
    s.mode = lg.TestMode.PerformanceOnly
    for k, v in fields.items():
        if k not in TEST_SETTINGS:
            raise ValueError(f"unknown LoadGen test setting {k!r}")
        setattr(s, k, v)
    return s


def settings_record(s: Any) -> Dict[str, Any]:
    """The TestSettings LoadGen used, as recorded in the run."""
    out = {"scenario": str(s.scenario).split(".")[-1], "mode": str(s.mode).split(".")[-1]}
    for k in TEST_SETTINGS:
        try:
            v = getattr(s, k)
        except AttributeError:
            continue
        out[k] = v if isinstance(v, (int, float, bool)) else str(v)
    return out


def run_test(steppers: Sequence[Stepper], batch: int, samples: Sequence[Any], kind: str, fields: Dict[str, Any],
             out_dir: Path, device: str, decode: Optional[Callable] = None, max_queue_delay_s: float = 0.0,
             max_backlog: int = 10000, parent_pid: Optional[int] = None) -> Dict[str, Any]:
    """One LoadGen test of the pipeline; its logs in `out_dir`; what they say, as a record."""
    import mlperf_loadgen as lg
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = test_settings(lg, kind, fields)
    server = Server(steppers, batch, samples, decode, max_queue_delay_s, max_backlog)
    log = lg.LogSettings()
    log.log_output.outdir = str(out_dir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    sut = lg.ConstructSUT(server.issue_query, server.flush_queries)
    n = len(samples)
    qsl = lg.ConstructQSL(n, n, lambda idx: None, lambda idx: None)
    energy = EnergyMeter(device)
    from retinabench.harness.cpu_load import CpuLoadMeter
    load = CpuLoadMeter(parent_pid)
    ended = threading.Event()
    failed: List[BaseException] = []

    def drive() -> None:   # LoadGen's test on a side thread: the first pipeline copy keeps this one
        try:
            lg.StartTestWithLogSettings(sut, qsl, settings, log)
        except BaseException as e:   # recorded and raised on the calling thread
            failed.append(e)
        finally:
            ended.set()

    server.start()
    t0 = time.monotonic()
    energy.begin()
    load.begin()
    driver = threading.Thread(target=drive, name="loadgen", daemon=True)
    try:
        driver.start()
        server.serve_here(ended)
        driver.join()
        if failed:
            raise failed[0]
    finally:
        machine = load.end()   # what other programs took of the CPU meanwhile (the parent judges it)
        spent = energy.end()
        wall = time.monotonic() - t0
        server.close()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    result = outcome(read_detail(out_dir / "mlperf_log_detail.txt"))
    result.update(settings=settings_record(settings), wall_s=round(wall, 3), served=server.served,
                  batches=server.batches, overloaded=server.overloaded.is_set(), errors=server.errors[:5], **spent,
                  **server.costs(), machine=machine)
    if server.overloaded.is_set():
        result["validity"] = "INVALID"
        result["invalid_reason"] = ("overloaded: the pipeline's backlog passed "
                                    f"{server.max_backlog} samples" if not server.errors else
                                    f"the pipeline failed: {server.errors[0]}")
    if "energy_j" in result and server.served:
        result["energy_per_image_j"] = result["energy_j"] / server.served
    return result
