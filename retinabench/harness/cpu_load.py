"""What other programs did to the machine while a chunk was measured: their CPU time, and steal.

Over a chunk's wall time W, the machine's busy CPU time (every CPU's user, nice, system, irq,
softirq and steal time: psutil.cpu_times, from /proc/stat) minus the worker process tree's own
(psutil's Process.cpu_times of the worker and of its live children) minus the harness's (the
parent bench.py process, which only reads progress lines meanwhile) is the CPU time that other
programs took; steal is the time the hypervisor gave this VM's CPUs to other guests (counted in
the busy time too, so in `others_s`). All in CPU-seconds; divided by W, in cores.

/proc/stat counts in ticks of 1/USER_HZ (10 ms on Linux), so a reading is uncertain by about one
tick per CPU at each end, plus the worker's own reading's: `slack_s` is that uncertainty, and a
chunk counts as contended only when what others took exceeds it by more than the scenario's
`contention_limit` (in cores) times W (`contended`). A 1 ms chunk says little either way; a run's
chunks are tens to hundreds of milliseconds long.

The worker process reads this around each measured chunk (never inside the timed loops). It runs
under the Caffe worker's Python 3.9 too: standard library at the top; psutil is imported when a
meter is made, and without psutil the readings are absent (`available` False, with the reason).
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

TICK_S = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def busy_seconds(times: Any) -> Tuple[float, float]:
    """(busy, steal) CPU-seconds of a psutil.cpu_times() reading: everything but idle and iowait.

    guest and guest_nice are already inside user and nice (Linux counts them twice), so they are not
    added again."""
    names = ("user", "nice", "system", "irq", "softirq", "steal")
    busy = sum(float(getattr(times, n, 0.0) or 0.0) for n in names)
    return busy, float(getattr(times, "steal", 0.0) or 0.0)


def process_seconds(proc: Any, children: bool = True) -> float:
    """User + system CPU-seconds of a psutil.Process and, with `children`, of its live descendants."""
    total = 0.0
    procs = [proc]
    if children:
        try:
            procs += proc.children(recursive=True)
        except Exception:  # it ended meanwhile: what could be read
            pass
    for p in procs:
        try:
            t = p.cpu_times()
            total += float(t.user) + float(t.system)
        except Exception:  # a child that ended between the listing and the reading
            continue
    return total


def others(wall_s: float, busy_s: float, own_s: float, harness_s: float, steal_s: float,
           cpus: int, limit_cores: Optional[float]) -> Dict[str, Any]:
    """A chunk's reading: what others took (CPU-seconds, and in cores over the wall time), and whether
    that exceeds `limit_cores` beyond the tick uncertainty (None: not judged)."""
    other = max(0.0, busy_s - own_s - harness_s)
    slack = (cpus + 2) * TICK_S
    cores = other / wall_s if wall_s > 0 else 0.0
    record: Dict[str, Any] = {"wall_s": round(wall_s, 6), "others_s": round(other, 4), "steal_s": round(steal_s, 4),
                              "own_s": round(own_s, 4), "harness_s": round(harness_s, 4),
                              "others_cores": round(cores, 4), "slack_s": round(slack, 4)}
    if limit_cores is not None:
        record["contended"] = bool(wall_s > 0 and other - slack > limit_cores * wall_s)
    return record


class CpuLoadMeter:
    """Reads the machine's, the worker's and the harness's CPU time at a chunk's start and end."""

    def __init__(self, parent_pid: Optional[int] = None):
        self.reason = ""
        self._psutil: Any = None
        self._self: Any = None
        self._parent: Any = None
        self._start: Optional[Tuple[float, float, float, float, float]] = None
        try:
            import psutil
            self._psutil = psutil
            self._self = psutil.Process()
            self.cpus = psutil.cpu_count() or 1
            if parent_pid:
                try:
                    self._parent = psutil.Process(parent_pid)
                except Exception:   # the parent is gone: the worker will end soon anyway
                    self._parent = None
        except ImportError:
            self.reason = "psutil is not installed in this worker's interpreter: contention not measured"
            self.cpus = os.cpu_count() or 1

    @property
    def available(self) -> bool:
        return self._psutil is not None

    def _read(self) -> Tuple[float, float, float, float, float]:
        busy, steal = busy_seconds(self._psutil.cpu_times())
        own = process_seconds(self._self)
        harness = process_seconds(self._parent, children=False) if self._parent is not None else 0.0
        return time.monotonic(), busy, steal, own, harness

    def begin(self) -> None:
        self._start = self._read() if self.available else None

    def end(self) -> Dict[str, Any]:
        """The chunk's reading ({} without psutil); the contended/not judgement is the parent's."""
        if self._start is None:
            return {}
        t1, b1, s1, o1, h1 = self._read()
        t0, b0, s0, o0, h0 = self._start
        self._start = None
        return others(t1 - t0, b1 - b0, o1 - o0, h1 - h0, s1 - s0, self.cpus, None)


def machine_others(interval_s: float, exclude: Any = ()) -> Dict[str, Any]:
    """What every process but `exclude` (psutil.Process objects; this one is always excluded) took over
    `interval_s` seconds from now: the parent's check that the machine is quiet before a chunk is measured
    again. {} without psutil."""
    try:
        import psutil
    except ImportError:
        return {}
    procs = [psutil.Process(), *exclude]
    t0, (b0, s0) = time.monotonic(), busy_seconds(psutil.cpu_times())
    o0 = sum(process_seconds(p, children=False) for p in procs)
    time.sleep(interval_s)
    t1, (b1, s1) = time.monotonic(), busy_seconds(psutil.cpu_times())
    o1 = sum(process_seconds(p, children=False) for p in procs)
    return others(t1 - t0, b1 - b0, o1 - o0, 0.0, s1 - s0, psutil.cpu_count() or 1, None)
