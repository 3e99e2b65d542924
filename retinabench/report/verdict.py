"""Verdicts derived from intervals, never from point estimates alone.

"X is fastest" is said only where the interval of the runner-up's ratio to X lies wholly above 1;
otherwise the rows are "tied within noise", with the interval that says so. The runner-up's ratio
to the fastest row is computed from both rows' samples (retinabench.report.stats.ratio_ci: paired
round by round, processes first, where both were measured in one group), so the sentence rests on
the same resampling as the tables.

`compare` runs many checks at once; `holm` adjusts their bootstrap p-values (Holm 1979) so that the
chance of calling any unchanged row changed stays at 5% however many rows and stages are checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from retinabench.report.stats import Interval

LEVEL = 0.95


@dataclass(frozen=True)
class Verdict:
    """The outcome of ranking rows at one stage: the fastest (or the tied set's first), the runner-up,
    and the runner-up's time over the fastest's with its interval."""

    stage: str
    best: str
    runner_up: str
    ratio: Interval
    decided: bool             # the interval lies wholly above 1: the fastest is named

    def sentence(self, unit_ms: Optional[float] = None) -> str:
        iv = self.ratio
        ci = f"95% CI {iv.low:.2f}-{iv.high:.2f}"
        if self.decided:
            return (f"{self.stage}: {self.best} is fastest; {self.runner_up}, the next, takes {iv.estimate:.2f}x "
                    f"as long ({ci})")
        return (f"{self.stage}: {self.best} and {self.runner_up} are tied within noise ({self.runner_up} / "
                f"{self.best} = {iv.estimate:.2f}, {ci})")


def decide(stage: str, best: str, runner_up: str, ratio: Interval) -> Verdict:
    """A verdict from the runner-up's time over the best's: decided only when the interval excludes 1."""
    return Verdict(stage, best, runner_up, ratio, decided=ratio.low > 1.0)


def rank(stage: str, names: Sequence[str], medians: Sequence[float],
         pair: Callable[[int, int], Interval]) -> Optional[Verdict]:
    """The verdict over rows at one stage: the lowest median against the next (`pair(i, j)`: row j's time
    over row i's, with its interval); None with fewer than two rows."""
    if len(names) < 2:
        return None
    order = sorted(range(len(names)), key=lambda i: (medians[i], names[i]))
    best, nxt = order[0], order[1]
    return decide(stage, names[best], names[nxt], pair(best, nxt))


# ---------------------------------------------------------------------------------------------
# Many checks at once: Holm's step-down adjustment of bootstrap p-values
# ---------------------------------------------------------------------------------------------

def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values, in the input's order: the k-th smallest times (m - k + 1), kept monotone."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank_, i in enumerate(order):
        running = max(running, min(1.0, (m - rank_) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def expected_by_chance(checks: int, level: float = LEVEL) -> float:
    """How many of `checks` unchanged rows a test at `level` would call changed on average, uncorrected."""
    return checks * (1 - level)


def describe_checks(checks: int, changed: int, level: float = LEVEL) -> str:
    """One line: how many checks, how many would look changed by chance uncorrected, and what was done."""
    return (f"{checks} checks; uncorrected, about {expected_by_chance(checks, level):.1f} of them would look changed by "
            f"chance at {level:.0%}; with Holm's correction the chance that any unchanged one is called changed stays "
            f"at {1 - level:.0%}: {changed} changed")


def summarise(verdicts: Sequence[Optional[Verdict]]) -> List[str]:
    return [v.sentence() for v in verdicts if v is not None]


def as_dict(v: Verdict) -> Dict[str, Any]:
    return {"stage": v.stage, "best": v.best, "runner_up": v.runner_up, "ratio": v.ratio.estimate,
            "low": v.ratio.low, "high": v.ratio.high, "decided": v.decided}
