"""GPU utilisation over a row's measured loops, from NVML's own timestamped samples (pynvml).

What NVML measures: "GPU utilisation" is the percentage of a sample period (1/6 s to 1 s, by
device) during which at least one kernel ran: it says the GPU was busy, not how much of its SMs
were used. The driver keeps a buffer of such samples, each stamped with the CPU time (microseconds)
at the end of its period; `nvmlDeviceGetSamples(NVML_GPU_UTILIZATION_SAMPLES)` reads them.

How a row is measured (the worker calls these; see GpuMonitor):
- `open()` before warmup: nvmlInit, the device handle, and a baseline read of the sample buffer
  (so no NVML initialisation gap, and no clock drop after it, sits right before the first loop);
- `begin_window()` / `end_window()` around each measured stretch of loops (a row measured in
  interleaved chunks has many windows); windows are `time.time()` seconds;
- `close()` -> a JSON-able record: the utilisation samples whose whole period lies inside a window
  (a sample that also covers warmup or a gap between chunks is left out), their mean, the windows,
  their total length `window_s`, and `short_window` when that total is under SHORT_WINDOW_S: such a
  figure rests on a few samples (the row is flagged, not extended). SM clock and memory used are
  polled every `interval_s` while a window is open and kept beside it.

Clocks: NVML's timestamps are CPU time in microseconds; on Linux the driver uses the wall clock, and
`open()` checks it against the latest sample (`timestamp_clock`): wall clock, else the monotonic
clock, else an offset fitted to the latest sample (recorded in `clock`, with a note).

Which GPU: NVML ignores CUDA_VISIBLE_DEVICES and may order GPUs differently from CUDA, so the CUDA
device of the row ("cuda:N", N a CUDA ordinal) is identified by UUID or PCI bus id (from torch when
it already runs CUDA in this process, else from the CUDA driver through ctypes) and matched to
NVML's devices (`match_nvml_device`); only when neither is known is N taken as NVML's index, with a
note. The pure functions below are tested on synthetic data, without NVML.
"""
from __future__ import annotations

import ctypes
import statistics
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

SHORT_WINDOW_S = 2.0      # utilisation measured over less than this is flagged `short_window`
MAX_SAMPLES = 500         # per list in the record: thinned evenly beyond this (the mean uses all)
DEFAULT_PERIOD_S = 1.0    # the longest NVML sample period, assumed until samples show the real one
CLOCK_TOLERANCE_S = 30.0  # the latest sample must be this close to a clock's "now" to be on that clock

Window = Tuple[float, float]


# ---------------------------------------------------------------------------------------------
# Pure functions (no NVML)
# ---------------------------------------------------------------------------------------------

def normalize_uuid(uuid: Any) -> str:
    """'GPU-58EB0D0C-...' (NVML), '58eb0d0c-...' (torch) or bytes -> '58eb0d0c-...'; '' when absent."""
    if isinstance(uuid, bytes):
        uuid = uuid.decode("ascii", "replace")
    text = str(uuid or "").strip().strip("\0").lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def normalize_pci_bus_id(bus_id: Any) -> Optional[Tuple[int, int, int, int]]:
    """'00000000:3B:00.0' (NVML), '0000:3b:00.0' (CUDA) -> (domain, bus, device, function); None if unreadable."""
    if isinstance(bus_id, bytes):
        bus_id = bus_id.decode("ascii", "replace")
    text = str(bus_id or "").strip().strip("\0")
    try:
        head, function = text.rsplit(".", 1)
        parts = head.split(":")
        if len(parts) == 2:
            parts = ["0"] + parts
        domain, bus, device = parts
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except ValueError:
        return None


def format_pci_bus_id(domain: int, bus: int, device: int, function: int = 0) -> str:
    """NVML's format (NVML_DEVICE_PCI_BUS_ID_FMT): '%08X:%02X:%02X.%X'."""
    return f"{domain:08X}:{bus:02X}:{device:02X}.{function:X}"


def match_nvml_device(cuda: Dict[str, Any], nvml: Sequence[Dict[str, Any]]) -> Tuple[Optional[int], str]:
    """(position in `nvml`, 'uuid' | 'pci_bus_id') of the CUDA device `cuda` ({'uuid', 'pci_bus_id'}),
    or (None, '') when neither identifies exactly one NVML device."""
    uuid = normalize_uuid(cuda.get("uuid"))
    if uuid:
        hits = [i for i, d in enumerate(nvml) if normalize_uuid(d.get("uuid")) == uuid]
        if len(hits) == 1:
            return hits[0], "uuid"
    bus = normalize_pci_bus_id(cuda.get("pci_bus_id"))
    if bus is not None:
        hits = [i for i, d in enumerate(nvml) if normalize_pci_bus_id(d.get("pci_bus_id")) == bus]
        if len(hits) == 1:
            return hits[0], "pci_bus_id"
    return None, ""


def cuda_ordinal(device: Any) -> int:
    """'cuda' -> 0, 'cuda:3' -> 3; an int is taken as the ordinal."""
    if isinstance(device, int):
        return device
    text = str(device)
    return int(text.split(":", 1)[1]) if ":" in text else 0


def timestamp_clock(latest_us: Optional[float], wall_s: float, monotonic_s: float,
                    tolerance_s: float = CLOCK_TOLERANCE_S) -> Tuple[str, float]:
    """(clock, offset_s) mapping NVML timestamps to time.time(): t_wall = ts_us / 1e6 + offset_s.

    'wall' when the latest sample is within `tolerance_s` of the wall clock, 'monotonic' when of the
    monotonic clock, 'fitted' otherwise (offset from the latest sample: off by up to one period),
    'assumed-wall' when there is no sample to check.
    """
    if latest_us is None:
        return "assumed-wall", 0.0
    t = latest_us / 1e6
    if abs(wall_s - t) <= tolerance_s:
        return "wall", 0.0
    if abs(monotonic_s - t) <= tolerance_s:
        return "monotonic", wall_s - monotonic_s
    return "fitted", wall_s - t


def sample_period(timestamps_s: Sequence[float]) -> Optional[float]:
    """The median spacing of consecutive samples (NVML samples at a fixed period); None below 2 samples."""
    ts = sorted(timestamps_s)
    gaps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
    return statistics.median(gaps) if gaps else None


def in_windows(t: float, windows: Sequence[Window], period_s: float = 0.0) -> bool:
    """Whether the interval (t - period_s, t] lies inside one window [t0, t1]."""
    return any(t0 <= t - period_s and t <= t1 for t0, t1 in windows)


def thin(items: List[Any], max_n: int = MAX_SAMPLES) -> List[Any]:
    """At most `max_n` items, evenly spaced, the first and last kept."""
    if len(items) <= max_n:
        return list(items)
    if max_n < 2:
        return list(items[-max_n:]) if max_n > 0 else []
    step = (len(items) - 1) / (max_n - 1)
    return [items[round(i * step)] for i in range(max_n)]


def summarize(util: Sequence[Tuple[float, float]], windows: Sequence[Window],
              clocks: Sequence[Dict[str, float]] = (), period_s: Optional[float] = None,
              error: str = "", device: Optional[Dict[str, Any]] = None, notes: Sequence[str] = (),
              clock: str = "", max_samples: int = MAX_SAMPLES) -> Dict[str, Any]:
    """The record of one row: util = (time.time() seconds, percent) samples; windows in the same clock.

    A utilisation sample counts when its whole period lies inside a window; a clock sample (a point
    in time, `t_unix`) when it falls inside one. `t_s` in the record: seconds since the first window.
    """
    wins = [(float(a), float(b)) for a, b in windows if b >= a]
    period = period_s if period_s is not None else sample_period([t for t, _ in util])
    period = DEFAULT_PERIOD_S if period is None else float(period)
    t_first = wins[0][0] if wins else 0.0
    kept = [(t, v) for t, v in sorted(util) if in_windows(t, wins, period)]
    window_s = sum(b - a for a, b in wins)
    notes = list(notes)
    if wins and not kept:
        notes.append(f"no utilisation sample period ({period:.3f} s) lies wholly inside a window")
    clock_kept = [c for c in clocks if in_windows(float(c["t_unix"]), wins)]
    return {
        "samples": [{"t_s": round(t - t_first, 6), "t_unix": t, "gpu_util_pct": float(v)} for t, v in thin(kept, max_samples)],
        "samples_in_windows": len(kept),
        "clock_samples": [dict(c, t_s=round(float(c["t_unix"]) - t_first, 6)) for c in thin(clock_kept, max_samples)],
        "windows": [[a, b] for a, b in wins],
        "window_s": round(window_s, 6),
        "sample_period_s": round(period, 6),
        "util_mean_pct": (sum(v for _, v in kept) / len(kept)) if kept else None,
        "short_window": window_s < SHORT_WINDOW_S,
        "clock": clock,
        "error": error,
        "note": "; ".join(notes),
        "device": dict(device or {}),
    }


# ---------------------------------------------------------------------------------------------
# Which GPU: the CUDA device's UUID / PCI bus id, and NVML's devices
# ---------------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    return value.decode("ascii", "replace").strip("\0") if isinstance(value, bytes) else str(value)


def _uuid_string(raw: bytes) -> str:
    h = raw.hex()
    return f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def cuda_device_ids(ordinal: int) -> Tuple[Dict[str, str], str]:
    """({'uuid', 'pci_bus_id', 'name'}, note) of CUDA device `ordinal` as this process sees it
    (CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER applied): from torch when it already initialised
    CUDA here, else from the CUDA driver (libcuda, through ctypes: no context is created)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                p = torch.cuda.get_device_properties(ordinal)
                ids = {"uuid": str(getattr(p, "uuid", "") or ""), "name": str(p.name), "pci_bus_id": ""}
                if all(hasattr(p, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
                    ids["pci_bus_id"] = format_pci_bus_id(p.pci_domain_id, p.pci_bus_id, p.pci_device_id)
                if ids["uuid"] or ids["pci_bus_id"]:
                    return ids, ""
        except Exception:  # fall through to the driver
            pass
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return {}, f"no CUDA driver to identify cuda:{ordinal} ({e})"
    if cuda.cuInit(0) != 0:
        return {}, f"cuInit failed: cannot identify cuda:{ordinal}"
    dev = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(dev), int(ordinal)) != 0:
        return {}, f"cuDeviceGet({ordinal}) failed: no such CUDA device"
    ids = {"uuid": "", "pci_bus_id": "", "name": ""}
    bus = ctypes.create_string_buffer(64)
    if cuda.cuDeviceGetPCIBusId(bus, 64, dev) == 0:
        ids["pci_bus_id"] = bus.value.decode("ascii", "replace")
    raw = (ctypes.c_ubyte * 16)()
    if cuda.cuDeviceGetUuid(ctypes.byref(raw), dev) == 0:
        ids["uuid"] = _uuid_string(bytes(raw))
    name = ctypes.create_string_buffer(256)
    if cuda.cuDeviceGetName(name, 256, dev) == 0:
        ids["name"] = name.value.decode("ascii", "replace")
    return ids, ""


def nvml_devices(nv: Any) -> List[Dict[str, Any]]:
    """Every GPU NVML sees (after nvmlInit): index, uuid, pci_bus_id, name."""
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        entry: Dict[str, Any] = {"index": i, "uuid": "", "pci_bus_id": "", "name": ""}
        for key, fn in (("uuid", lambda: nv.nvmlDeviceGetUUID(h)), ("name", lambda: nv.nvmlDeviceGetName(h)),
                        ("pci_bus_id", lambda: nv.nvmlDeviceGetPciInfo(h).busId)):
            try:
                entry[key] = _text(fn())
            except Exception:
                pass
        out.append(entry)
    return out


def identify(nv: Any, device: Any) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """(NVML's entry for the row's CUDA device, with `cuda_ordinal` and `matched_by`, or None; notes)."""
    ordinal = cuda_ordinal(device)
    gpus = nvml_devices(nv)
    ids, note = cuda_device_ids(ordinal)
    notes = [note] if note else []
    pos, how = match_nvml_device(ids, gpus)
    if pos is None:
        if ordinal >= len(gpus):
            return None, notes + [f"cuda:{ordinal} not identified and NVML has {len(gpus)} GPU(s)"]
        pos, how = ordinal, "index (assumed: CUDA and NVML orders may differ)"
        notes.append(f"cuda:{ordinal} not identified by UUID or PCI bus id; NVML index {ordinal} assumed")
    entry = dict(gpus[pos], cuda_ordinal=ordinal, matched_by=how)
    return entry, notes


def _nvml_str_call(fn: Any, text: str) -> Any:
    """pynvml takes str (newer nvidia-ml-py) or bytes (older)."""
    try:
        return fn(text)
    except TypeError:
        return fn(text.encode())


# ---------------------------------------------------------------------------------------------
# The monitor
# ---------------------------------------------------------------------------------------------

class GpuMonitor:
    """Utilisation (NVML samples), SM clock and memory of one CUDA device over measured windows.

    m = GpuMonitor("cuda:1"); m.open()  # before warmup
    m.begin_window(); ...loops...; m.end_window()   # as many windows as measured stretches
    record = m.close()                              # JSON-able; never raises, failures in record["error"]
    """

    def __init__(self, device: Any = "cuda", interval_s: float = 0.1, fetch_s: float = 0.5):
        self.device = f"cuda:{device}" if isinstance(device, int) else str(device)
        self.interval_s = interval_s
        self.fetch_s = fetch_s
        self.error = ""
        self.notes: List[str] = []
        self.info: Dict[str, Any] = {}
        self.windows: List[Window] = []
        self._open_since: Optional[float] = None
        self._util: Dict[int, float] = {}          # NVML timestamp (us) -> percent
        self._clocks: List[Dict[str, float]] = []
        self._last_seen = 0
        self._clock, self._offset = "", 0.0
        self._nv: Any = None
        self._handle: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._record: Optional[Dict[str, Any]] = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """nvmlInit, the handle of this device (by UUID / PCI bus id), the sample baseline. Never raises."""
        try:
            import pynvml as nv
            nv.nvmlInit()
            entry, notes = identify(nv, self.device)
            self.notes += notes
            if entry is None:
                raise RuntimeError("; ".join(notes) or f"{self.device} not found by NVML")
            self.info = {k: entry.get(k) for k in ("uuid", "pci_bus_id", "name", "index", "cuda_ordinal", "matched_by")}
            self._handle = (_nvml_str_call(nv.nvmlDeviceGetHandleByUUID, entry["uuid"]) if entry.get("uuid")
                            else nv.nvmlDeviceGetHandleByIndex(int(entry["index"])))
            self._nv = nv
        except Exception as e:  # no NVML, no driver: the row goes on without utilisation
            self.error = f"NVML unavailable: {type(e).__name__}: {e}"
            return
        latest = self._fetch()
        self._clock, self._offset = timestamp_clock(latest, time.time(), time.monotonic())
        if self._clock == "fitted":
            self.notes.append("NVML timestamps are on neither the wall nor the monotonic clock: aligned to the "
                              "latest sample (up to one sample period off)")
        self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
        self._thread.start()

    def begin_window(self) -> None:
        with self._lock:
            if self._open_since is None:
                self._open_since = time.time()

    def end_window(self) -> None:
        with self._lock:
            if self._open_since is not None:
                self.windows.append((self._open_since, time.time()))
                self._open_since = None

    def close(self, wait: bool = True) -> Dict[str, Any]:
        """Stop sampling and return the record. With `wait`, first waits (at most one sample period
        and a bit) for the sample that covers the end of the last window."""
        if self._record is not None:
            return self._record
        self.end_window()
        if self._thread is not None:
            if wait and self.windows:
                self._wait_for_sample_after(self.windows[-1][1])
            self._stop.set()
            self._thread.join()
            self._fetch()
        with self._lock:
            util = [(ts / 1e6 + self._offset, v) for ts, v in sorted(self._util.items())]
            clocks = list(self._clocks)
        self._record = summarize(util, self.windows, clocks, error=self.error, device=self.info,
                                 notes=self.notes, clock=self._clock)
        return self._record

    # -- other processes on the device (retinabench.harness.contention) -------------------

    def others(self, since: float, own: Sequence[int] = ()) -> Dict[str, Any]:
        """What other processes did on this device since `since` (time.time()): NVML's compute processes
        that are not this one, with their SM utilisation samples from nvmlDeviceGetProcessUtilization.
        `gpu_others_busy`: one of them ran kernels meanwhile. {} without NVML; never raises."""
        nv, h = self._nv, self._handle
        if nv is None:
            return {}
        try:
            from retinabench.harness.device_processes import compute_processes, own_pids
            mine = set(own) | set(own_pids())
            listed = [int(getattr(p, "pid", 0)) for p in compute_processes(nv, h)]
        except Exception as e:
            return {"gpu_others_note": f"nvmlDeviceGetComputeRunningProcesses: {type(e).__name__}: {e}"}
        out: Dict[str, Any] = {"gpu_processes": len(listed)}
        if listed and not mine & set(listed):
            out["gpu_others_note"] = ("NVML lists pids of another pid namespace: this process cannot be told apart "
                                      "from others on the device")
            return out
        others = [p for p in listed if p not in mine]
        out["gpu_others"] = others
        busy: Dict[int, float] = {}
        if others:
            try:
                samples = nv.nvmlDeviceGetProcessUtilization(h, int((since - self._offset) * 1e6))
            except Exception:   # NVML_ERROR_NOT_FOUND: no process sample in the window
                samples = []
            for smp in samples:
                pid = int(getattr(smp, "pid", 0))
                if pid in others:
                    busy[pid] = max(busy.get(pid, 0.0), float(getattr(smp, "smUtil", 0) or 0))
        out["gpu_others_sm_pct"] = {str(k): v for k, v in busy.items()}
        out["gpu_others_busy"] = any(v > 0 for v in busy.values())
        return out

    # -- compatibility with the worker's former calls (start at the measured loop, stop after) --

    def start(self) -> None:
        if self._nv is None and not self.error:
            self.open()
        self.begin_window()

    def stop(self) -> List[Dict[str, Any]]:
        return self.close()["samples"]

    def __enter__(self) -> "GpuMonitor":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sampling --------------------------------------------------------------------------

    def _fetch(self) -> Optional[float]:
        """Read the utilisation samples newer than the last seen; returns the newest timestamp (us)."""
        nv, h = self._nv, self._handle
        if nv is None:
            return None
        try:
            _, samples = nv.nvmlDeviceGetSamples(h, nv.NVML_GPU_UTILIZATION_SAMPLES, self._last_seen)
        except Exception as e:
            not_found = getattr(nv, "NVMLError_NotFound", None)
            if (not_found is not None and isinstance(e, not_found)) or "Not Found" in str(e):
                return None  # NVML_ERROR_NOT_FOUND: no sample newer than the last seen yet
            with self._lock:
                if not self.error:
                    self.error = f"nvmlDeviceGetSamples: {type(e).__name__}: {e}"
            return None
        newest = None
        with self._lock:
            for s in samples:
                ts = int(s.timeStamp)
                self._util[ts] = float(s.sampleValue.uiVal)
                newest = ts if newest is None else max(newest, ts)
            if newest is not None:
                self._last_seen = max(self._last_seen, newest)
        return None if newest is None else float(newest)

    def _poll_clocks(self) -> None:
        nv, h = self._nv, self._handle
        try:
            sm = float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
            used = nv.nvmlDeviceGetMemoryInfo(h).used / 2**20
        except Exception:
            return
        with self._lock:
            self._clocks.append({"t_unix": time.time(), "sm_clock_mhz": sm, "mem_used_mib": round(used, 1)})

    def _run(self) -> None:
        next_fetch = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                window_open = self._open_since is not None
            if window_open:
                self._poll_clocks()
            if now >= next_fetch:  # the driver's buffer holds a limited history: read it regularly
                self._fetch()
                next_fetch = now + self.fetch_s
            self._stop.wait(self.interval_s)

    def _wait_for_sample_after(self, t_end: float) -> None:
        with self._lock:
            period = sample_period([ts / 1e6 for ts in self._util]) or DEFAULT_PERIOD_S
        deadline = time.monotonic() + min(period, DEFAULT_PERIOD_S) + 0.2
        while time.monotonic() < deadline:
            self._fetch()
            with self._lock:
                latest = (self._last_seen / 1e6 + self._offset) if self._last_seen else None
            if latest is not None and latest >= t_end:
                return
            time.sleep(0.05)
