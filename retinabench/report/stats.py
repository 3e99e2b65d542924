"""Summary statistics of one stage's samples (after torch.utils.benchmark's Measurement)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np

NOISY_CV = 0.10  # rows whose coefficient of variation exceeds this are flagged as noisy


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
