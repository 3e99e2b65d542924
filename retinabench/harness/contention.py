"""Measuring around other programs: a contended chunk is measured again once the machine is quiet.

On a GPU row, another process that ran kernels on the row's device during the chunk (NVML's
per-process utilisation: retinabench.harness.gpu_monitor.GpuMonitor.others) makes it contended too.

Interleaved rounds cancel what hits every row alike, but a busy spell shorter than a round hits one
row and not the next, and each runtime slows by its own factor under contention. So every chunk
comes back with what other programs took while it ran (retinabench.harness.cpu_load). A chunk
during which they took more than `limit` cores (beyond the tick uncertainty) is contended: its
samples are set apart (kept in the row's files, never counted), the guard waits until the machine
has been quiet for a poll interval, and the chunk is measured again, at most `retries` times per
row. When the machine stays busy (GIVE_UP_AFTER waits in a row of QUIET_WAIT_S each), the guard
stops waiting for the rest of the unit and the chunks stay as measured, each marked contended:
the row is flagged and the run's status says so; contended samples never pass for clean ones.

The default limit (config.CONTENTION_LIMIT, 0.1 cores) sits above what a quiet machine shows
between chunks (the README's contention section gives the measured distribution) and below what
moves a ratio: a tenth of one core for the length of a chunk.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

from retinabench.harness.cpu_load import machine_others
from retinabench.records import RowId

QUIET_POLL_S = 0.25      # a quiet check looks at the machine for this long
QUIET_WAIT_S = 10.0      # the longest wait for quiet before a chunk is measured again
GIVE_UP_AFTER = 3        # waits in a row that found no quiet: the contention is not clearing


def contended(load: Dict[str, Any], limit: Optional[float]) -> bool:
    """A chunk's (or a quiet check's) reading exceeds `limit` cores beyond its tick uncertainty."""
    if limit is None or not load:
        return False
    if load.get("gpu_others_busy"):   # another process ran kernels on the row's GPU meanwhile
        return True
    if float(load.get("wall_s") or 0.0) <= 0 or "others_s" not in load:
        return False
    return float(load["others_s"]) - float(load.get("slack_s") or 0.0) > limit * float(load["wall_s"])


class ContentionGuard:
    """One unit's decisions: which chunks to measure again, how long to wait, when to give up."""

    def __init__(self, limit: Optional[float], retries: int, rows: Iterable[RowId],
                 say: Optional[Callable[[str], None]] = None, probe: Callable[[float], Dict[str, Any]] = machine_others):
        self.limit = limit
        self.left = {rid: int(retries) for rid in rows}
        self.replaced = {rid: 0 for rid in self.left}
        self.failed_waits = 0
        self.gave_up = False
        self.waits: List[Dict[str, Any]] = []
        self._say = say
        self._probe = probe
        self._last: Dict[str, Any] = {}

    def should_remeasure(self, rid: RowId, load: Dict[str, Any]) -> bool:
        """The chunk just measured was contended and the row may measure it again (counted here)."""
        if not contended(load, self.limit):
            return False
        self._last = load
        if self.gave_up or self.left.get(rid, 0) <= 0:
            return False
        self.left[rid] -= 1
        self.replaced[rid] += 1
        return True

    def waiting_text(self, key: str) -> str:
        cores = float(self._last.get("others_cores") or 0.0)
        return f"{key}: other programs used {cores:.2f} cores; waiting for quiet to measure the chunk again"

    def wait_quiet(self, stopping: Optional[threading.Event] = None) -> bool:
        """Wait until a poll interval shows others below the limit (True), or QUIET_WAIT_S (False)."""
        t0 = time.monotonic()
        deadline = t0 + QUIET_WAIT_S
        while stopping is None or not stopping.is_set():
            reading = self._probe(QUIET_POLL_S)
            if not contended(reading, self.limit):
                self.failed_waits = 0
                self.waits.append({"waited_s": round(time.monotonic() - t0, 3), "quiet": True})
                return True
            if time.monotonic() >= deadline:
                break
        self.failed_waits += 1
        self.waits.append({"waited_s": round(time.monotonic() - t0, 3), "quiet": False})
        if self.failed_waits >= GIVE_UP_AFTER and not self.gave_up:
            self.gave_up = True
            if self._say is not None:
                self._say(f"contention never cleared: other programs kept using more than {self.limit:g} cores for "
                          f"{GIVE_UP_AFTER} waits of {QUIET_WAIT_S:g} s; the remaining chunks are kept as measured "
                          "and marked contended")
        return False

    def judge(self, entries: List[Dict[str, Any]]) -> None:
        """Mark each chunk's entry (a row's `contention` list) contended or not, by this unit's limit."""
        for e in entries:
            if self.limit is not None and "wall_s" in e:
                e["contended"] = contended(e, self.limit)
