"""Summary statistics of one stage's samples (after torch.utils.benchmark's Measurement)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Sequence

import numpy as np

NOISY_CV = 0.10         # rows whose coefficient of variation exceeds this are flagged as noisy
DRIFT_LIMIT = 0.10      # the first measured loops may differ from the rest by this much
DRIFT_MIN_MS = 0.05     # ...unless the stage is too short for a relative change to mean anything
STAGE_SUM_TOL = 0.02    # stage times must add up to the loop's total within this fraction


@dataclass(frozen=True)
class Measurement:
    n: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray) -> "Measurement":
        ms = np.asarray(samples_ns, np.float64) / 1e6
        if ms.size == 0:
            raise ValueError("no samples")
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(int(ms.size), float(ms.mean()), float(p50), float(p90), float(p99),
                   float(ms.min()), float(ms.max()), float(ms.std(ddof=1)) if ms.size > 1 else 0.0)

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean)."""
        return self.std_ms / self.mean_ms if self.mean_ms > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.cv > NOISY_CV

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def drift(samples_ns: np.ndarray, head: int = 50) -> float:
    """Relative change of the first `head` measured loops' median against the rest's median.

    A large value means warmup was too short (caches, JIT, clocks still settling).
    """
    x = np.asarray(samples_ns, np.float64)
    if x.size < 2 * head:
        head = max(1, x.size // 4)
    if x.size < 2:
        return 0.0
    rest = np.median(x[head:])
    return float((np.median(x[:head]) - rest) / rest) if rest > 0 else 0.0


def drifting(samples_ns: np.ndarray) -> bool:
    """True when the first measured loops were still settling (see drift)."""
    x = np.asarray(samples_ns, np.float64)
    return x.size > 1 and abs(drift(x)) > DRIFT_LIMIT and float(np.median(x)) / 1e6 > DRIFT_MIN_MS


def stage_sum_error(samples_ns: np.ndarray) -> float:
    """Largest |preprocess + inference + postprocess - total| / total over the loops ([loops, 4] ns).

    The loop reads the clock contiguously, so this is 0 unless a stage's time was lost or counted
    twice; a run whose stages do not add up cannot explain its own total.
    """
    x = np.asarray(samples_ns, np.float64)
    if x.size == 0:
        return 0.0
    total = x[:, 3]
    err = np.abs(x[:, :3].sum(axis=1) - total) / np.where(total > 0, total, 1.0)
    return float(err.max())


def host_below_gpu(inference_ns: np.ndarray, gpu_time_ms: Sequence[float]) -> bool:
    """True when the host-clock inference median is below the GPU's own (CUDA-event) median.

    The host interval contains the GPU work if inference waited for it, so it can never be
    shorter; when it is, the stage returned before the outputs existed.
    """
    gpu = np.asarray(gpu_time_ms, np.float64)
    host = np.asarray(inference_ns, np.float64) / 1e6
    if gpu.size == 0 or host.size == 0:
        return False
    return float(np.median(host)) < float(np.median(gpu))
