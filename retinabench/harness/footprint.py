"""What a row's worker holds in memory, and how long it took to start: the row's footprint.

The worker (retinabench.harness.worker) makes one `FootprintMeter` at its very start, before any
runtime is imported, and calls it at a few moments of the row's life:

    meter = FootprintMeter(job.backend.device)    # baselines: GPU memory (CUDA rows), then host memory
    meter.begin()                                  # the load's clock starts (RowSession)
    meter.lap("import") ... lap("read", model) ... lap("build", model) ...   # contiguous laps
    meter.loaded(model, first_call_s=..., first_call=...)                  # snapshot: ready to measure
    meter.measure_begin()                          # before the first measured chunk: peaks reset
    meter.chunk(warmup, rewarm, samples)           # after each chunk: cold start, a GPU reading
    meter.record()                                 # -> retinabench.records.Footprint (never raises)

Host memory (Linux /proc/self/status): VmRSS is the resident set, VmHWM its high-water mark.
Every host figure is given above the baseline (VmRSS when the meter was made: the interpreter, the
standard library and the harness's record modules), so it is what the runtime, the model and the
harness's own per-row work (numpy, the decoded images, the decoder) hold, not Python's. Writing "5"
to /proc/self/clear_refs (Linux >= 4.0) resets VmHWM to the current VmRSS: done before the first
measured chunk, so `host_peak_mib` is the peak during the measured loops, and `host_load_peak_mib`
(VmHWM read just before the reset) the peak through import, load and warmup. Where clear_refs cannot
be written the peak is VmHWM since the worker started; without /proc, getrusage's ru_maxrss (a
lifetime peak). `sources` says which: host `vmrss`; host_peak `vmhwm-reset` (the measured loops'),
`vmhwm-lifetime` (since the worker started) or `ru_maxrss-lifetime` (the same from getrusage).

GPU memory (CUDA rows; NVML through pynvml, nvidia-ml-py): what NVML charges this process on the
row's device, `nvmlDeviceGetComputeRunningProcesses` (v3 where the library has it) matched by pid:
the CUDA context and every allocator in the process (torch's cache, cuDNN/cuBLAS workspaces,
TensorRT's engine, anything a runtime allocates itself), not only torch's. NVML has no per-process
high-water mark (short of accounting mode), so `gpu_peak_mib` is the largest reading taken at load,
after every measured chunk and at finish. In a container whose pid namespace differs from the
driver's, NVML lists host pids and none matches ours: the figure is then the device's memory in use
minus its value before this worker's runtime made its first CUDA call (`sources["gpu"]`:
`nvml-device-delta`, else `nvml-pid`), exact only while no other process allocates on that device,
so no peak is attributed that way (other rows' workers are loaded beside this one during interleaved rounds). Where
torch has initialised CUDA in the worker, torch.cuda's memory_reserved / max_memory_reserved are
recorded too (its caching allocator only; reset with the other peaks).

Start-up (seconds, perf_counter): contiguous laps from `begin()` to `loaded()`, so they add up to
`load_whole_s` exactly: `import` (the backend's module and its runtime: Backend.available()),
`read` (open_model: finding and checking the files), `convert` (importing the model into our graph
IR, retinabench.graph, wherever it happened: ModelSource.graph_import_s), `build` (the rest of
Backend.load(): export, session creation, engine build or compile, weights to the device),
`stage_build` (rows with device stages: the pass that captures and compiles them, which is their
first call) and `harness` (the explicit remainder: image decoding, preprocessing set-up, the GPU
monitor). `load_s` = import + read + convert + build. Cold start (`first_call_ms`) is the first call
after load: the first warmup loop (or the first loop of whatever ran first), or for rows with device
stages their build pass; `first_call` says which, `first_loop_ms` is the first timed loop.

This module runs under the Caffe worker's Python 3.9 too: standard library only at the top, and
nothing here raises; a figure that cannot be had is None with a note. The NVML parts are written
against nvidia-ml-py's documented API and tested on recorded structures; they are not run here.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from retinabench.harness.device_processes import STATUS, compute_processes, own_pids  # noqa: F401
from retinabench.records import Footprint

MIB = float(2 ** 20)
CLEAR_REFS = "/proc/self/clear_refs"
STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
LAPS = ("import", "read", "convert", "build", "stage_build", "harness")
LOAD_PARTS = ("import", "read", "convert", "build")   # load_s: what the runtime and model cost before the first call


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------

def parse_status(text: str) -> Dict[str, int]:
    """/proc/<pid>/status -> {field: bytes} for its 'kB' lines ('VmRSS:\\t  15812 kB' -> 16191488)."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * 1024
    return out


def read_status(path: str = STATUS) -> Dict[str, int]:
    """This process's memory fields in bytes; {} where /proc is not there."""
    try:
        with open(path) as f:
            return parse_status(f.read())
    except OSError:
        return {}


def reset_peak(path: str = CLEAR_REFS) -> bool:
    """Reset VmHWM to the current VmRSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open(path, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rusage_peak() -> Optional[int]:
    """The process's lifetime peak resident set in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource
        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (ImportError, OSError, ValueError):
        return None
    return peak if sys.platform == "darwin" else peak * 1024


def _field(entry: Any, name: str) -> Any:
    return entry.get(name) if isinstance(entry, dict) else getattr(entry, name, None)


def process_gpu_bytes(processes: Iterable[Any], pids: Sequence[int]) -> Tuple[Optional[int], str]:
    """(bytes NVML charges the processes `pids`, '') from NVML's process entries (pid, usedGpuMemory),
    or (None, why not): none of them listed, or listed without a figure (NVML_VALUE_NOT_AVAILABLE,
    which pynvml turns into None)."""
    mine = [p for p in processes if _field(p, "pid") is not None and int(_field(p, "pid")) in set(pids)]
    if not mine:
        return None, "not listed"
    used = [_field(p, "usedGpuMemory") for p in mine]
    if any(u is None for u in used):
        return None, "listed without its memory (NVML_VALUE_NOT_AVAILABLE)"
    return sum(int(u) for u in used), ""


def gpu_reading(processes: Iterable[Any], pids: Sequence[int], used: Optional[int] = None,
                baseline_used: Optional[int] = None) -> Tuple[Optional[int], str, str]:
    """(bytes, source, note) of this process on one device: NVML's per-process figure matched by pid
    ('nvml-pid'); else the device's memory in use above its baseline ('nvml-device-delta'); else
    (None, '', why)."""
    mine, why = process_gpu_bytes(processes, pids)
    if mine is not None:
        return mine, "nvml-pid", ""
    if used is not None and baseline_used is not None:
        return max(0, int(used) - int(baseline_used)), "nvml-device-delta", (
            f"this process is {why} among NVML's compute processes (another pid namespace?): the device's "
            "memory in use above its value before the runtime's first CUDA call")
    return None, "", f"this process is {why} among NVML's compute processes, and no device baseline"


def gpu_peak(readings: Sequence[Tuple[Optional[int], str]]) -> Tuple[Optional[int], str]:
    """The largest per-process reading (bytes, 'nvml-pid') of (bytes, source) readings; device-wide
    deltas are not attributed to a peak (other processes may have allocated meanwhile)."""
    own = [b for b, source in readings if b is not None and source == "nvml-pid"]
    return (max(own), "nvml-pid") if own else (None, "")


def split_laps(laps: Sequence[Tuple[str, float, Dict[str, float]]]) -> Dict[str, float]:
    """Contiguous laps (name, seconds, {part: seconds carved out of this lap}) -> seconds per part.

    A carve-out moves time from the lap to another part (the graph import inside open_model or
    Backend.load, the stage build pass inside its lap), never more than the lap had, so the parts
    still add up to the sum of the laps."""
    parts = {name: 0.0 for name in LAPS}
    for name, seconds, within in laps:
        left = max(0.0, float(seconds))
        for part, s in within.items():
            take = min(left, max(0.0, float(s or 0.0)))
            parts[part] = parts.get(part, 0.0) + take
            left -= take
        parts[name] = parts.get(name, 0.0) + left
    return parts


def first_call(chunks: Sequence[Tuple[str, Any]]) -> Tuple[Optional[float], str]:
    """(ms, what) of the first loop among named [n, 4] ns sample arrays, in the order they ran."""
    for what, arr in chunks:
        if arr is not None and len(arr):
            return float(arr[0][3]) / 1e6, what
    return None, ""


def _mib(b: Optional[float]) -> Optional[float]:
    return None if b is None else round(float(b) / MIB, 2)


def _above(b: Optional[int], base: Optional[int]) -> Optional[float]:
    return None if b is None or base is None else _mib(max(0, b - base))


def _text(value: Any) -> str:
    return value.decode("ascii", "replace").strip("\0") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# The meter
# ---------------------------------------------------------------------------------------------

class FootprintMeter:
    """A row's memory and start-up, measured in its worker (see the module docstring). Never raises."""

    def __init__(self, device: str = "cpu", clock: Callable[[], float] = time.perf_counter, nvml: Any = None):
        self.device = str(device)
        self.cuda = self.device.startswith("cuda")
        self.clock = clock
        self.notes: List[str] = []
        self.sources: Dict[str, str] = {}
        self.snapshots: Dict[str, Dict[str, Any]] = {}
        self._nv: Any = nvml
        self._handle: Any = None
        self._uuid = ""
        self._gpu_base: Dict[str, Dict[str, Any]] = {}   # NVML uuid -> {index, used, pids} before the runtime
        self._gpu_readings: List[Tuple[Optional[int], str]] = []
        self._gpu_loaded: Tuple[Optional[int], str] = (None, "")
        self._torch_loaded: Dict[str, int] = {}
        self._torch_reset_done = False
        self._laps: List[Tuple[str, float, Dict[str, float]]] = []
        self._t0: Optional[float] = None
        self._last: Optional[float] = None
        self._whole: Optional[float] = None
        self._imports_seen = 0.0
        self._model_bytes: Optional[int] = None
        self._first: Tuple[Optional[float], str] = (None, "")
        self._first_loop: Optional[float] = None
        self._loaded_status: Dict[str, int] = {}
        self._load_peak: Optional[int] = None
        self._peak_reset: Optional[bool] = None
        self._finished: Optional[Footprint] = None
        if self.cuda:
            self._gpu_baseline()   # before the host baseline: NVML's library is the harness's, not the runtime's
        self._base = read_status()
        self._base_rusage = rusage_peak() if not self._base else None
        self._snapshot("baseline", self._base)
        if not self._base:
            self.notes.append("no /proc/self/status: host figures from getrusage (a lifetime peak only)")

    # -- start-up laps ---------------------------------------------------------------------------

    def begin(self) -> None:
        self._t0 = self._last = self.clock()

    def lap(self, name: str, model: Any = None, within: Optional[Dict[str, float]] = None) -> None:
        """Close the lap that began at the previous mark: `name`'s seconds, less any graph import
        `model` (a ModelSource) did meanwhile (-> convert) and any carve-outs in `within`."""
        now = self.clock()
        if self._last is None:   # no begin(): the lap starts now
            self._t0 = self._last = now
        last = self._last
        carve = dict(within or {})
        imported = float(getattr(model, "graph_import_s", 0.0) or 0.0) if model is not None else self._imports_seen
        if imported > self._imports_seen:
            carve["convert"] = carve.get("convert", 0.0) + imported - self._imports_seen
        self._imports_seen = max(self._imports_seen, imported)
        self._laps.append((name, now - last, carve))
        self._last = now

    def loaded(self, model: Any = None, first_call_s: Optional[float] = None, first_call: str = "") -> None:
        """The row is ready to measure: the last lap (harness) closed, memory read. A row whose first
        call ran during loading (its device stages' build pass) gives its seconds and what it was."""
        try:
            self.lap("harness", model)
            if self._t0 is not None:
                self._whole = float(self._last or self._t0) - self._t0
            if model is not None:
                self._model_bytes = sum(os.path.getsize(str(f)) for f in getattr(model, "files", []))
            if first_call_s is not None:
                self._first = (float(first_call_s) * 1e3, first_call or "the first call during loading")
            self._loaded_status = read_status()
            self._snapshot("loaded", self._loaded_status)
            if self.cuda:
                self._gpu_identify()
                self._gpu_loaded = self._gpu_read("loaded")
                self._torch_loaded = self._torch_stats()
        except Exception as e:  # never lose a row over a figure
            self.notes.append(f"loaded snapshot: {type(e).__name__}: {e}")

    # -- measured chunks -------------------------------------------------------------------------

    def measure_begin(self) -> None:
        """Before the first measured chunk (later calls do nothing): the load's peak read, peaks reset."""
        if self._peak_reset is not None:
            return
        try:
            status = read_status()
            self._load_peak = status.get("VmHWM")
            self._peak_reset = reset_peak() if status else False
            self._snapshot("measure_begin", status)
            if self.cuda:   # no NVML query here: this is right before the first measured loop
                self._torch_reset()
        except Exception as e:
            self._peak_reset = False
            self.notes.append(f"peak reset: {type(e).__name__}: {e}")

    def chunk(self, warmup: Any = None, rewarm: Any = None, samples: Any = None) -> None:
        """After a `measure` command: its loops (ns arrays) give the cold start once; a GPU reading."""
        try:
            if self._first_loop is None:
                ms, what = first_call([("first warmup loop", warmup), ("first re-warm loop", rewarm),
                                       ("first measured loop", samples)])
                if ms is not None:
                    self._first_loop = ms
                    if self._first[0] is None:
                        self._first = (ms, what)
            if self.cuda:
                self._gpu_read("chunk")
        except Exception as e:
            self.notes.append(f"chunk: {type(e).__name__}: {e}")

    # -- the record ------------------------------------------------------------------------------

    def record(self) -> Footprint:
        """The row's figures (the same object when asked again). Never raises."""
        if self._finished is not None:
            return self._finished
        fp = Footprint()
        try:
            self._fill(fp)
        except Exception as e:
            self.notes.append(f"record: {type(e).__name__}: {e}")
        fp.notes = list(dict.fromkeys(n for n in self.notes if n))
        fp.sources = dict(self.sources)
        fp.snapshots = dict(self.snapshots)
        self._finished = fp
        return fp

    def _fill(self, fp: Footprint) -> None:
        base = self._base.get("VmRSS")
        fp.host_baseline_mib = _mib(base) if base is not None else _mib(self._base_rusage)
        final = read_status()
        self._snapshot("finish", final)
        if base is not None:
            fp.host_loaded_mib = _above(self._loaded_status.get("VmRSS"), base)
            self.sources["host"] = "vmrss"
            if self._peak_reset:
                fp.host_load_peak_mib = _above(self._load_peak, base)
                fp.host_peak_mib = _above(final.get("VmHWM"), base)
                self.sources["host_peak"] = "vmhwm-reset"
            elif self._peak_reset is False:
                fp.host_peak_mib = _above(final.get("VmHWM"), base)
                self.sources["host_peak"] = "vmhwm-lifetime"
                self.notes.append("host peak includes loading: /proc/self/clear_refs could not be written")
            else:  # never measured (a row that failed or stopped first): the peak up to now is the load's
                fp.host_load_peak_mib = _above(final.get("VmHWM"), base)
        else:
            peak = rusage_peak()
            if peak is not None and self._peak_reset is not None:
                fp.host_peak_mib = _above(peak, self._base_rusage)
                self.sources["host_peak"] = "ru_maxrss-lifetime"
                self.notes.append("host peak from getrusage (no /proc): the lifetime peak above the start's")
        if self.cuda:
            self._gpu_read("finish")
            loaded, source = self._gpu_loaded
            fp.gpu_loaded_mib = _mib(loaded)
            peak, _ = gpu_peak(self._gpu_readings)
            fp.gpu_peak_mib = _mib(peak)
            if source:
                self.sources["gpu"] = source
            if source == "nvml-device-delta":
                self.notes.append("GPU peak not attributed: NVML did not list this process by pid")
            if self._torch_loaded:
                fp.torch_reserved_loaded_mib = _mib(self._torch_loaded.get("reserved"))
                after = self._torch_stats()
                if self._torch_reset_done and after:
                    fp.torch_reserved_peak_mib = _mib(after.get("max_reserved"))
                self.sources["torch"] = "torch.cuda-reserved"
        fp.model_mib = _mib(self._model_bytes)
        if self._laps:
            parts = split_laps(self._laps)
            for name in LAPS:
                setattr(fp, f"load_{name}_s", round(parts.get(name, 0.0), 6))
            fp.load_s = round(sum(parts.get(n, 0.0) for n in LOAD_PARTS), 6)
            fp.load_whole_s = None if self._whole is None else round(self._whole, 6)
        fp.first_call_ms = None if self._first[0] is None else round(self._first[0], 4)
        fp.first_call = self._first[1]
        fp.first_loop_ms = None if self._first_loop is None else round(self._first_loop, 4)

    # -- helpers ---------------------------------------------------------------------------------

    def _snapshot(self, moment: str, status: Dict[str, int]) -> None:
        if status:
            self.snapshots[moment] = {k: _mib(status[k]) for k in STATUS_FIELDS if k in status}

    def _gpu_baseline(self) -> None:
        """Every NVML device's memory in use, and its compute pids, before the runtime touches CUDA."""
        try:
            if self._nv is None:
                import pynvml
                self._nv = pynvml
            nv = self._nv
            nv.nvmlInit()
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                entry: Dict[str, Any] = {"index": i, "used": int(nv.nvmlDeviceGetMemoryInfo(h).used)}
                try:
                    entry["pids"] = [int(_field(p, "pid")) for p in compute_processes(nv, h)]
                except Exception:
                    entry["pids"] = None
                self._gpu_base[normalize(_text(nv.nvmlDeviceGetUUID(h)))] = entry
            self.snapshots["gpu_baseline"] = {k: {"index": v["index"], "used_mib": _mib(v["used"]), "pids": v["pids"]}
                                              for k, v in self._gpu_base.items()}
        except Exception as e:  # no NVML, no driver: host figures only
            self._nv = None
            self.notes.append(f"NVML unavailable: {type(e).__name__}: {e}")

    def _gpu_identify(self) -> None:
        """The NVML handle of the row's CUDA device, matched by UUID / PCI bus id (as the GPU monitor)."""
        nv = self._nv
        if nv is None or self._handle is not None:
            return
        from retinabench.harness.gpu_monitor import _nvml_str_call, identify
        entry, notes = identify(nv, self.device)
        self.notes += notes
        if entry is None:
            self.notes.append(f"{self.device}: not found by NVML; no GPU figures")
            return
        self._uuid = normalize(entry.get("uuid") or "")
        self._handle = (_nvml_str_call(nv.nvmlDeviceGetHandleByUUID, entry["uuid"]) if entry.get("uuid")
                        else nv.nvmlDeviceGetHandleByIndex(int(entry["index"])))

    def _gpu_read(self, moment: str) -> Tuple[Optional[int], str]:
        nv, h = self._nv, self._handle
        if nv is None or h is None:
            return None, ""
        try:
            procs = compute_processes(nv, h)
            used = int(nv.nvmlDeviceGetMemoryInfo(h).used)
        except Exception as e:
            self.notes.append(f"NVML read at {moment}: {type(e).__name__}: {e}")
            return None, ""
        base = self._gpu_base.get(self._uuid, {}).get("used")
        got, source, note = gpu_reading(procs, own_pids(), used, base)
        if note:
            self.notes.append(note)
        self._gpu_readings.append((got, source))
        self.snapshots.setdefault("gpu", {})[moment] = {"mib": _mib(got), "source": source,
                                                       "device_used_mib": _mib(used)}
        return got, source

    def _torch_stats(self) -> Dict[str, int]:
        """torch's caching-allocator figures on the row's device, where torch has initialised CUDA here."""
        torch = sys.modules.get("torch")
        try:
            if torch is None or not torch.cuda.is_initialized():
                return {}
            from retinabench.harness.gpu_monitor import cuda_ordinal
            i = cuda_ordinal(self.device)
            cuda = torch.cuda
            return {"reserved": int(cuda.memory_reserved(i)), "max_reserved": int(cuda.max_memory_reserved(i)),
                    "allocated": int(cuda.memory_allocated(i))}
        except Exception as e:
            self.notes.append(f"torch.cuda memory stats: {type(e).__name__}: {e}")
            return {}

    def _torch_reset(self) -> None:
        if not self._torch_loaded:
            return
        torch: Any = sys.modules.get("torch")
        try:
            from retinabench.harness.gpu_monitor import cuda_ordinal
            torch.cuda.reset_peak_memory_stats(cuda_ordinal(self.device))
            self._torch_reset_done = True
        except Exception as e:
            self.notes.append(f"torch.cuda.reset_peak_memory_stats: {type(e).__name__}: {e}")


def normalize(uuid: str) -> str:
    """NVML's 'GPU-58EB...' and torch's '58eb...' as one key (retinabench.harness.gpu_monitor.normalize_uuid)."""
    from retinabench.harness.gpu_monitor import normalize_uuid
    return normalize_uuid(uuid)
