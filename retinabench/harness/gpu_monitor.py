"""GPU utilisation during the measured loop, from NVML (pynvml), in a background thread.

NVML's "GPU utilisation" is the percentage of the last sample period (1/6 s to 1 s, by device) in
which at least one kernel was running on the GPU: it says the GPU was busy, not how much of its
SMs were used. Samples are kept with the run so the figure can be re-derived.
"""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional


class GpuMonitor:
    """Context manager: samples utilisation, SM clock and memory every `interval_s` while active."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.02):
        self.device_index = device_index
        self.interval_s = interval_s
        self.samples: List[Dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.error = ""

    def start(self) -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception as e:  # no NVML, no driver: the run goes on without GPU samples
            self.error = f"NVML unavailable: {e}"
            return
        self._nvml = pynvml
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nv, h = self._nvml, self._handle
        t0 = time.perf_counter()
        while not self._stop.is_set():
            util = nv.nvmlDeviceGetUtilizationRates(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            self.samples.append({
                "t_s": time.perf_counter() - t0, "gpu_util_pct": float(util.gpu),
                "sm_clock_mhz": float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                "mem_used_mib": mem.used / 2**20,
            })
            self._stop.wait(self.interval_s)

    def stop(self) -> List[Dict[str, float]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples

    def __enter__(self) -> "GpuMonitor":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
