"""GPU utilisation during the measured loops, from NVML (pynvml), in a background thread.

NVML's "GPU utilisation" is the percentage of the last sample period (1/6 s to 1 s, by device) in
which at least one kernel was running on the GPU: it says the GPU was busy, not how much of its
SMs were used. Samples are kept with the run so the figure can be re-derived.

The worker opens the monitor before warmup, marks each measured chunk with begin_window() and
end_window() (a row measured in interleaved rounds has many), and closes it at the end; only
samples taken inside a window count.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional


class GpuMonitor:
    """Samples utilisation, SM clock and memory every `interval_s` while a window is open."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.02):
        self.device_index = device_index
        self.interval_s = interval_s
        self.samples: List[Dict[str, float]] = []
        self.windows: List[List[float]] = []
        self.error = ""
        self._nvml: Any = None
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def open(self) -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception as e:  # no NVML, no driver: the run goes on without GPU samples
            self.error = f"NVML unavailable: {e}"
            return
        self._nvml = pynvml

    def begin_window(self) -> None:
        self.windows.append([time.time(), time.time()])
        if self._nvml is None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def end_window(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self.windows:
            self.windows[-1][1] = time.time()

    def _run(self) -> None:
        nv, h = self._nvml, self._handle
        while not self._stop.is_set():
            util = nv.nvmlDeviceGetUtilizationRates(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            self.samples.append({
                "t_s": time.time(), "gpu_util_pct": float(util.gpu),
                "sm_clock_mhz": float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                "mem_used_mib": mem.used / 2**20,
            })
            self._stop.wait(self.interval_s)

    def close(self) -> Dict[str, Any]:
        self.end_window()
        utils = [s["gpu_util_pct"] for s in self.samples]
        window_s = sum(b - a for a, b in self.windows)
        return {"samples": self.samples, "windows": self.windows, "window_s": window_s,
                "util_mean_pct": sum(utils) / len(utils) if utils else None, "short_window": window_s < 2.0,
                "error": self.error, "device": {"index": self.device_index}}
