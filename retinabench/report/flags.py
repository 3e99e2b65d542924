"""Validity flags: each marks something a reader should act on, and says what to do about it.

A flag that every row carries tells the reader nothing, so each threshold is set against what a
quiet run shows (the README's "How to read the numbers" gives the measured distributions):

- spread is judged against the `empty` row measured in the same rounds where the run has one (it
  runs the same shared pre- and post-processing with no network: the machine's own jitter), and
  against a fixed floor otherwise;
- what the intervals already cover (rounds that disagree, processes that differ) is a column of
  summary.csv, not a flag, unless it dominates the row's uncertainty.

`FLAGS` holds, per flag, what it means and what to do. `LEGACY_FLAGS` keeps the words of flags
that runs recorded before this calibration carry (their reports regenerate unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from retinabench.report.stats import (DRIFT_LIMIT, DRIFT_MIN_MS, NOISY_CV, PROCESS_SPREAD_LIMIT, PROCESS_WIDTH_LIMIT,
                                      ROUND_SPREAD_LIMIT, STAGE_SUM_TOL)

SHORT_WINDOW_S = 2.0        # GPU utilisation over less than this many seconds of measured loops is flagged
UNSTEADY_FACTOR = 3.0       # unsteady: a stage's loops spread this many times as widely as the empty row's ...
UNSTEADY_FLOOR = 0.10       # ... and by more than this (relative IQR); the floor alone where the run has no empty row
WARMUP_LIMIT = DRIFT_LIMIT  # warmup-short / rewarm-short: the first loops differ from the rest by this much ...
WARMUP_MIN_MS = DRIFT_MIN_MS   # ... in a stage at least this long


@dataclass(frozen=True)
class Flag:
    meaning: str
    action: str

    def line(self, name: str) -> str:
        return f"{name}: {self.meaning}. {self.action}"


FLAGS: Dict[str, Flag] = {
    "contended": Flag("some of its chunks were measured while other programs used more than the scenario's "
                      "contention_limit of CPU, and could not be measured again (the machine never quietened)",
                      "Rerun when the machine is quiet, or raise contention_retries; its numbers are slower than "
                      "the row's own."),
    "process-spread": Flag(f"its worker processes' medians differ by more than {PROCESS_SPREAD_LIMIT:g}x what each "
                           "process's own loops explain (memory layout, thread placement, what the runtime chose at "
                           f"start-up), enough to widen its interval past +-{PROCESS_WIDTH_LIMIT:.1%}",
                           "The interval includes it; raise `processes` for a narrower one."),
    "unsteady": Flag(f"its loops spread (interquartile range / median) over {UNSTEADY_FLOOR:.0%} and "
                     f"{UNSTEADY_FACTOR:g}x as widely as the empty row's in the same rounds",
                     "Read its p90 and p99 rather than its median alone; the runtime's own timing is erratic here."),
    "warmup-short": Flag(f"the first loops after each process's warmup differ from its later ones by more than "
                         f"{WARMUP_LIMIT:.0%}", "Raise `warmup`."),
    "rewarm-short": Flag(f"the first loops of a round differ from the round's later ones by more than "
                         f"{WARMUP_LIMIT:.0%} (caches and clocks settle after the other rows ran)",
                         "Raise `rewarm_loops`."),
    "stages!=total": Flag(f"preprocess + inference + postprocess differ from the loop's total by more than "
                          f"{STAGE_SUM_TOL:.0%}", "A bug in the harness: report it."),
    "host<gpu": Flag("host-clock inference median below the CUDA-event GPU time: the stage did not wait for the GPU",
                     "A bug in the backend: report it."),
    "short-window": Flag(f"GPU utilisation measured over less than {SHORT_WINDOW_S:g} s of measured loops (NVML's "
                         "samples cover 1/6 s to 1 s each: few of them)", "Run more loops for a utilisation figure."),
    "overlap": Flag("other rows worked on the same host while this row measured (the row file's `overlaps` names "
                    "them): they shared its CPU, memory bandwidth and PCIe",
                    "Give the Dask cluster one measuring slot per host."),
}

# The words of flags that runs recorded before this calibration carry, as their reports have always shown them.
LEGACY_FLAGS: Dict[str, str] = {
    "noisy": f"coefficient of variation above {NOISY_CV:.0%}",
    "drift": f"the first 50 measured loops' median differs from the rest's by more than {DRIFT_LIMIT:.0%} "
             "(warmup too short)",
    "stages!=total": f"preprocess + inference + postprocess differ from the loop's total by more than {STAGE_SUM_TOL:.0%}",
    "host<gpu": "host-clock inference median below the CUDA-event GPU time: the stage did not wait for the GPU",
    "round-noisy": f"the median round's coefficient of variation is above {NOISY_CV:.0%}",
    "round-drift": f"the first quarter of a round differs from the rest by more than {DRIFT_LIMIT:.0%} in the median "
                   "round (re-warm too short)",
    "rounds-disagree": f"the rounds' medians spread more than {ROUND_SPREAD_LIMIT:g}x what their own samples explain "
                       "(the machine's speed changed between rounds)",
    "short-window": f"GPU utilisation measured over less than {SHORT_WINDOW_S:g} s of measured loops (NVML's samples "
                    "cover 1/6 s to 1 s each: few of them)",
    "overlap": "other rows worked on the same host while this row measured (the row file's `overlaps` names them): "
               "they shared its CPU, memory bandwidth and PCIe",
}


def describe(name: str, legacy: bool = False) -> str:
    """A flag's legend entry: the recorded run's words for old flags, meaning and action for current ones."""
    if legacy or name not in FLAGS:
        return LEGACY_FLAGS.get(name, "see summary.md")
    flag = FLAGS[name]
    return f"{flag.meaning}. {flag.action}"


def relative_iqr(x: np.ndarray) -> float:
    """Interquartile range over the median: a spread that a few slow loops do not move."""
    x = np.asarray(x, np.float64)
    med = float(np.median(x)) if x.size else 0.0
    if med <= 0:
        return 0.0
    q1, q3 = np.percentile(x, [25, 75])
    return float(q3 - q1) / med


def unsteady(spread: float, baseline: Optional[float]) -> bool:
    """A stage's relative IQR beyond the floor and, where the run has an empty row, beyond its multiple."""
    if spread <= UNSTEADY_FLOOR:
        return False
    return baseline is None or spread > UNSTEADY_FACTOR * baseline


def head_drift(samples: np.ndarray, starts: np.ndarray, head: int) -> float:
    """The median, over the chunks that start at `starts` (indices into samples), of how far their first
    `head` loops' median lies from the rest of the chunk's, relative to the rest: warmup or re-warm too short
    shows as a positive value in most chunks; a single slow chunk does not move it."""
    x = np.asarray(samples, np.float64)
    edges = list(starts) + [x.size]
    out = []
    for a, b in zip(edges, edges[1:]):
        chunk = x[a:b]
        if chunk.size < head + 3:
            continue
        rest = float(np.median(chunk[head:]))
        if rest > 0:
            out.append((float(np.median(chunk[:head])) - rest) / rest)
    return float(np.median(out)) if out else 0.0
