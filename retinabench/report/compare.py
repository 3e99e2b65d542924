"""Two runs side by side: per matching row and stage, the ratio of medians B/A with a bootstrap CI.

Shared machines drift from run to run, so a ratio alone says little: resampling each run's processes
and rounds (or contiguous blocks of a row measured in one go: retinabench.report.stats, the same
machinery as a run's own ratios to its reference row; two runs cannot be paired round by round)
gives a 95% interval for the ratio. A comparison makes many checks at once (rows x stages), and at
95% one in twenty unchanged checks would look changed by chance: so a change counts only when its
bootstrap p-value, adjusted by Holm's method over all the checks (retinabench.report.verdict.holm),
is below 5%, and the ratio moves by at least 2%. The text says how many checks were made and how
many would have looked changed by chance without the correction.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
from tabulate import tabulate

from retinabench.harness.env import machine_label
from retinabench.harness.loop import STAGES
from retinabench.records import RowId
from retinabench.report.format import ms
from retinabench.report.run_data import RunData
from retinabench.report.stats import CI_LEVEL, RESAMPLES, SEED, ratio_ci
from retinabench.report.verdict import describe_checks, holm

MIN_CHANGE = 0.02        # below this a change is "same" even when the interval excludes 1.0

MatchKey = Tuple[RowId, str]   # row, stage


@dataclass(frozen=True)
class StageComparison:
    row: RowId
    stage: str
    a_median_ms: float
    b_median_ms: float
    ratio: float          # B / A: below 1.0 means B is faster
    ci_low: float
    ci_high: float
    verdict: str
    p_value: float = 1.0       # bootstrap p-value of B/A = 1
    p_holm: float = 1.0        # ... adjusted over every check of the comparison


@dataclass
class RunComparison:
    a: RunData
    b: RunData
    rows: List[StageComparison]
    only_a: List[str]
    only_b: List[str]


def verdict(ratio: float, lo: float, hi: float, min_change: float = MIN_CHANGE, p_holm: Optional[float] = None) -> str:
    """'faster', 'slower' or 'same (within noise)': a change needs its interval (and, where given, its
    Holm-adjusted p-value) to exclude no change, and a move of at least `min_change`."""
    if lo <= 1.0 <= hi or abs(ratio - 1.0) < min_change or not np.isfinite(ratio):
        return "same (within noise)"
    if p_holm is not None and p_holm >= 1 - CI_LEVEL:
        return "same (within noise)"
    return "faster" if ratio < 1.0 else "slower"


def _row_name(k: MatchKey) -> str:
    r = k[0]
    return f"{r.backend}/{r.variant} {r.input} b{r.batch}" + (f" on {r.device}" if r.device != "cpu" else "")


Samples = Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]   # ms, rounds, processes


def _stage_samples(run: RunData) -> Dict[MatchKey, Samples]:
    """MatchKey -> that stage's samples in ms, their rounds and processes, for every passed row with samples."""
    out: Dict[MatchKey, Samples] = {}
    for r in run.ordered_rows():
        if not r.passed:
            continue
        for i, stage in enumerate(STAGES):
            out[(r.id, stage)] = (r.samples_ns[:, i] / 1e6, r.rounds, r.processes)
    return out


def run_spread(run: RunData) -> float:
    """The run-to-run term a run's scenario declared (retinabench.config.RUN_SPREAD; 0 in older runs)."""
    try:
        return float(run.config.get("run_spread") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def compare_runs(a: RunData, b: RunData) -> RunComparison:
    sa, sb = _stage_samples(a), _stage_samples(b)
    spread = float(np.hypot(run_spread(a), run_spread(b)))   # two runs: each its own state of the machine
    rows = []
    for key, (xa, ra, pa) in sa.items():
        if key not in sb:
            continue
        xb, rb, pb = sb[key]
        # B / A, each run's processes and rounds drawn independently
        iv = ratio_ci(xb, xa, rb, ra, a_processes=pb, b_processes=pa, run_spread=spread)
        rows.append(StageComparison(key[0], key[1], float(np.median(xa)), float(np.median(xb)), iv.estimate,
                                    iv.low, iv.high, "", 1.0 if iv.p_value is None else iv.p_value))
    adjusted = holm([r.p_value for r in rows])
    rows = [replace(r, p_holm=p, verdict=verdict(r.ratio, r.ci_low, r.ci_high, p_holm=p)) for r, p in zip(rows, adjusted)]
    only_a = sorted({_row_name(k) for k in sa if k not in sb})
    only_b = sorted({_row_name(k) for k in sb if k not in sa})
    return RunComparison(a, b, rows, only_a, only_b)


def _run_line(tag: str, run: RunData) -> str:
    env = run.env
    return (f"{tag}: {run.path} (scenario {run.scenario}, {env.get('timestamp_utc', 'unknown time')}, "
            f"{machine_label(env) if env else 'unrecorded machine'})")


def comparison_text(c: RunComparison, fmt: str = "simple") -> str:
    lines = [_run_line("A", c.a), _run_line("B", c.b)]
    if c.a.env and c.b.env and machine_label(c.a.env) != machine_label(c.b.env):
        lines.append("warning: the runs were measured on different machines")
    if not c.rows:
        lines.append("no matching rows (backend, variant, device, input, batch, max batch) with samples in both runs")
    else:
        table = [[r.row.backend, r.row.variant, r.row.device, r.row.input, r.row.batch, r.stage, ms(r.a_median_ms),
                  ms(r.b_median_ms), f"{r.ratio:.3f}", f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", r.verdict] for r in c.rows]
        lines += ["", tabulate(table, headers=["backend", "variant", "device", "input", "batch", "stage", "A median ms",
                                               "B median ms", "B/A", "95% CI", "B is"],
                               tablefmt=fmt, disable_numparse=True), "",
                  f"B/A: ratio of medians; CI: {CI_LEVEL:.0%} bootstrap percentile interval ({RESAMPLES} resamples "
                  f"of each run's processes and rounds, or of blocks of loops where a row ran in one go; seed {SEED}); "
                  f"'same' when the interval holds 1.0, the change is under {MIN_CHANGE:.0%}, or its Holm-adjusted "
                  "p-value is 5% or more.",
                  describe_checks(len(c.rows), sum(r.verdict != "same (within noise)" for r in c.rows))]
    if c.only_a:
        lines.append("only in A: " + ", ".join(c.only_a))
    if c.only_b:
        lines.append("only in B: " + ", ".join(c.only_b))
    return "\n".join(lines)


def summarise_verdicts(c: RunComparison, stage: Optional[str] = "total") -> str:
    """One line: how many rows got faster, slower or stayed the same at a stage."""
    rows = [r for r in c.rows if stage is None or r.stage == stage]
    counts = {v: sum(r.verdict == v for r in rows) for v in ("faster", "slower", "same (within noise)")}
    return f"{stage or 'all stages'}: " + ", ".join(f"{n} {v}" for v, n in counts.items())


# ---------------------------------------------------------------------------------------------
# The regression gate: `compare OLD NEW --fail-if-slower PCT`
# ---------------------------------------------------------------------------------------------

def slower_rows(c: RunComparison, pct: float, stage: str = "total") -> List[StageComparison]:
    """Rows whose B/A interval at `stage` lies entirely above 1 + pct/100: slower beyond doubt and beyond
    the threshold (after asv's `continuous --factor` and pytest-benchmark's compare-fail, which test a
    point estimate; here the interval must clear the threshold, so noise alone never fails a gate)."""
    bound = 1.0 + pct / 100.0
    return [r for r in c.rows if r.stage == stage and r.ci_low > bound]


def gate_text(slower: List[StageComparison], pct: float, stage: str, checked: int) -> str:
    if not slower:
        return (f"gate: no row's {stage} is slower by more than {pct:g}% beyond its 95% interval "
                f"({checked} row(s) checked)")
    names = ", ".join(f"{_row_name((r.row, r.stage))} ({r.ratio:.3f}, 95% CI [{r.ci_low:.3f}, {r.ci_high:.3f}])"
                      for r in slower)
    return f"gate: {len(slower)} of {checked} row(s) slower than {1 + pct / 100:g}x at {stage}: {names}"
