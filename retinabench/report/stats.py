"""Summary statistics of one stage's samples (after torch.utils.benchmark's Measurement), and the
confidence intervals of medians and of ratios between rows (bootstrap over rounds, paired where
rows were measured in the same rounds)."""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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


# ---------------------------------------------------------------------------------------------
# Confidence intervals that respect rounds (interleaved schedules) and pair rows round by round
# ---------------------------------------------------------------------------------------------

CI_LEVEL = 0.95
RESAMPLES = 2000
SEED = 20240607          # fixed: the same samples always give the same interval (byte-identical reports)
BLOCKS = 20              # a row measured in one go is cut into this many contiguous blocks to resample
ROUND_SPREAD_LIMIT = 2.0  # rounds-disagree: round medians spread this many times what their samples explain
MIN_ROUNDS_FOR_SPREAD = 5


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    paired: bool = False
    # two-sided bootstrap p-value of "the ratio is 1" (ratios only; None where not computed)
    p_value: Optional[float] = None


def p_value(resamples: np.ndarray, null: float = 1.0) -> float:
    """Two-sided bootstrap p-value of `null`: twice the smaller share of resamples on either side of it
    (each share counted with one more resample, so it is never 0)."""
    v = np.asarray(resamples, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 1.0
    below = (np.sum(v <= null) + 1) / (v.size + 1)
    above = (np.sum(v >= null) + 1) / (v.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def clusters(samples: np.ndarray, rounds: Optional[np.ndarray] = None) -> Tuple[List[int], np.ndarray]:
    """(cluster ids, [clusters, longest] float matrix padded with NaN): one cluster per round.

    Noise on a shared machine is correlated in time, so a bootstrap resamples whole rounds (the
    chunk of loops a row measured between other rows), never single loops. A row measured in one
    go has one round: it is cut into BLOCKS contiguous blocks instead (a block bootstrap)."""
    x = np.asarray(samples, np.float64)
    if rounds is None or len(np.unique(rounds)) < 2:
        parts = [p for p in np.array_split(x, min(BLOCKS, max(1, x.size))) if p.size]
        ids = list(range(len(parts)))
    else:
        ids = sorted(int(r) for r in np.unique(rounds))
        parts = [x[np.asarray(rounds) == r] for r in ids]
    m = np.full((len(parts), max(p.size for p in parts)), np.nan)
    for i, p in enumerate(parts):
        m[i, :p.size] = p
    return ids, m


def _pooled_median(m: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Median of the samples of the resampled clusters: idx [..., n] -> [...]."""
    picked = m[np.asarray(idx, np.int64)]                  # [..., n, L]
    flat = picked.reshape(*picked.shape[:-2], -1)
    return np.nanmedian(flat, axis=-1) if np.isnan(m).any() else np.median(flat, axis=-1)


def _bootstrap(data: Tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray]) -> Tuple[float, float]:
    """A percentile interval from scipy.stats.bootstrap over cluster indices, with the fixed seed."""
    lo, hi, _ = _bootstrap_with_p(data, statistic)
    return lo, hi


def _bootstrap_with_p(data: Tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray]) -> Tuple[float, float, float]:
    """The interval and the p-value of a ratio of 1, from one scipy.stats.bootstrap."""
    from scipy import stats
    params = inspect.signature(stats.bootstrap).parameters
    rng = {"rng" if "rng" in params else "random_state": np.random.default_rng(SEED)}
    res = stats.bootstrap(data, statistic, n_resamples=RESAMPLES, batch=250, vectorized=True, axis=-1,
                          confidence_level=CI_LEVEL, method="percentile", **rng)
    return (float(res.confidence_interval.low), float(res.confidence_interval.high),
            p_value(res.bootstrap_distribution))


def median_ci(samples: np.ndarray, rounds: Optional[np.ndarray] = None,
              processes: Optional[np.ndarray] = None) -> Interval:
    """The median and its 95% interval, resampling processes, then rounds (or blocks) within each."""
    estimate = float(np.median(np.asarray(samples, np.float64)))
    if several(processes):
        grid = Nested.of(samples, rounds, processes)
        (meds,) = nested_resamples([grid], grid.cells)
        lo, hi = _percentiles(meds, estimate, len(grid.cells))
        return Interval(estimate, lo, hi)
    _, m = clusters(samples, rounds)
    if len(m) < 2:
        return Interval(estimate, estimate, estimate)
    lo, hi = _bootstrap((np.arange(len(m)),), lambda i, axis=-1: _pooled_median(m, i))
    return Interval(estimate, lo, hi)


def can_pair(a_rounds: Optional[np.ndarray], b_rounds: Optional[np.ndarray]) -> bool:
    """Rows measured in the same rounds (of one interleaved group) can be compared round by round."""
    if a_rounds is None or b_rounds is None:
        return False
    ra, rb = set(np.unique(a_rounds).tolist()), set(np.unique(b_rounds).tolist())
    return len(ra & rb) >= 2


def ratio_ci(a: np.ndarray, b: np.ndarray, a_rounds: Optional[np.ndarray] = None,
             b_rounds: Optional[np.ndarray] = None, paired: bool = False,
             a_processes: Optional[np.ndarray] = None, b_processes: Optional[np.ndarray] = None,
             run_spread: float = 0.0) -> Interval:
    """median(a) / median(b) with a 95% interval.

    `paired`: a and b were measured in the same rounds (one interleaved group): a resample draws
    rounds, and takes both rows' samples of those rounds, so a slowdown that hit a round hit both
    sides of the ratio and cancels. Otherwise each side's rounds (or blocks) are drawn independently.
    Rows measured by several processes are resampled in two levels: processes first (process k of
    both rows, which measured the same block of rounds, when paired), then rounds within each, and
    `run_spread` (a relative standard deviation) adds the variation between runs that one run cannot
    see (retinabench.config.RUN_SPREAD says how it was measured)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    estimate = float(np.median(a) / np.median(b)) if np.median(b) > 0 else float("inf")
    if several(a_processes) or several(b_processes):
        return _nested_ratio(a, b, a_rounds, b_rounds, a_processes, b_processes, paired, estimate, run_spread)
    if paired and can_pair(a_rounds, b_rounds):
        common = sorted(set(np.unique(a_rounds).tolist()) & set(np.unique(b_rounds).tolist()))
        keep_a, keep_b = np.isin(a_rounds, common), np.isin(b_rounds, common)
        _, ma = clusters(a[keep_a], np.asarray(a_rounds)[keep_a])
        _, mb = clusters(b[keep_b], np.asarray(b_rounds)[keep_b])
        lo, hi, p = _bootstrap_with_p((np.arange(len(common)),),
                                      lambda i, axis=-1: _pooled_median(ma, i) / _pooled_median(mb, i))
        return Interval(estimate, lo, hi, paired=True, p_value=p)
    _, ma = clusters(a, a_rounds)
    _, mb = clusters(b, b_rounds)
    if len(ma) < 2 or len(mb) < 2:
        return Interval(estimate, estimate, estimate, p_value=1.0 if estimate == 1.0 else None)
    lo, hi, p = _bootstrap_with_p((np.arange(len(ma)), np.arange(len(mb))),
                                  lambda i, j, axis=-1: _pooled_median(ma, i) / _pooled_median(mb, j))
    return Interval(estimate, lo, hi, p_value=p)


def round_stats(samples: np.ndarray, rounds: Optional[np.ndarray]) -> Dict[str, float]:
    """Per-round checks of a row measured in rounds: the median round's CV and head drift, and how far
    the rounds' medians spread beyond what their own samples explain ({} for a row of one round)."""
    if rounds is None or len(np.unique(rounds)) < 2:
        return {}
    x = np.asarray(samples, np.float64)
    meds, ses, cvs, drifts = [], [], [], []
    for r in np.unique(rounds):
        y = x[np.asarray(rounds) == r]
        med = float(np.median(y))
        mad = 1.4826 * float(np.median(np.abs(y - med)))
        meds.append(med)
        ses.append(1.2533 * mad / np.sqrt(y.size))        # the standard error of a median, from its MAD
        cvs.append(float(y.std(ddof=1) / y.mean()) if y.size > 1 and y.mean() > 0 else 0.0)
        drifts.append(drift(y, head=max(1, y.size // 4)))
    meds_a = np.asarray(meds)
    between = 1.4826 * float(np.median(np.abs(meds_a - np.median(meds_a))))
    within = float(np.median(ses))
    spread = between / within if within > 0 else (0.0 if between == 0 else float("inf"))
    return {"rounds": float(len(meds)), "round_cv": float(np.median(cvs)), "round_drift": float(np.median(drifts)),
            "round_spread": spread}


# ---------------------------------------------------------------------------------------------
# Rows measured by several worker processes: a two-level bootstrap, processes then rounds
# ---------------------------------------------------------------------------------------------
# A process is one draw of memory layout, thread placement and the runtime's start-up choices (pyperf's
# reason for its worker processes): samples of one process share it, so the processes are the
# independent units, and rounds within a process the next level (Davison & Hinkley 1997, section 3.8,
# two-stage sampling: resampling both stages with replacement errs on the wide side, never the narrow
# one). scipy.stats.bootstrap resamples one level only and no maintained package resamples nested
# clusters, so the two levels are drawn here with numpy's Generator, from the same fixed SEED.

PROCESS_SPREAD_LIMIT = 2.0   # process-spread: the processes' medians spread this many times what each explains
PROCESS_WIDTH_LIMIT = 0.025  # ... and that spread alone makes the median's 95% interval wider than +-2.5%


def several(processes: Optional[np.ndarray]) -> bool:
    return processes is not None and len(np.unique(processes)) > 1


@dataclass(frozen=True)
class Nested:
    """A row's samples as cells (process, round), in a [process, round slot, loop] grid padded with NaN."""

    grid: np.ndarray                       # [K, R, L]
    cells: Tuple[Tuple[Tuple[int, int], ...], ...]   # per process k, the (process, round) of each slot

    @classmethod
    def of(cls, samples: np.ndarray, rounds: Optional[np.ndarray], processes: Optional[np.ndarray],
           cells: Optional[Tuple[Tuple[Tuple[int, int], ...], ...]] = None) -> "Nested":
        x = np.asarray(samples, np.float64)
        procs = np.zeros(x.size, np.int64) if processes is None else np.asarray(processes, np.int64)
        rnds = np.zeros(x.size, np.int64) if rounds is None else np.asarray(rounds, np.int64)
        if cells is None:
            cells = tuple(tuple((int(k), int(r)) for r in sorted(np.unique(rnds[procs == k]).tolist()))
                          for k in sorted(np.unique(procs).tolist()))
        parts = [[x[(procs == k) & (rnds == r)] for k, r in slots] for slots in cells]
        width = max((p.size for slots in parts for p in slots), default=1)
        depth = max(len(slots) for slots in parts)
        grid = np.full((len(parts), depth, max(1, width)), np.nan)
        for i, slots in enumerate(parts):
            for j, p in enumerate(slots):
                grid[i, j, :p.size] = p
        return cls(grid, cells)


def _nanmedian_rows(flat: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (rows hold different numbers of values): sort, then index."""
    s = np.sort(flat, axis=1)                      # NaN sorts last
    n = np.sum(~np.isnan(flat), axis=1)
    n = np.maximum(n, 1)
    rows = np.arange(flat.shape[0])
    return 0.5 * (s[rows, (n - 1) // 2] + s[rows, n // 2])


def nested_resamples(grids: List[Nested], cells: Tuple[Tuple[Tuple[int, int], ...], ...],
                     resamples: int = RESAMPLES, seed: int = SEED, batch: int = 250) -> List[np.ndarray]:
    """For grids laid out on the same `cells`, the pooled median of each grid in each resample: processes
    drawn with replacement, then, within each drawn process, its rounds with replacement; every grid takes
    the same draws (pairing)."""
    rng = np.random.default_rng(seed)
    counts = np.array([len(slots) for slots in cells])
    k_n, r_n = len(cells), int(counts.max())
    out: List[List[np.ndarray]] = [[] for _ in grids]
    done = 0
    while done < resamples:
        b = min(batch, resamples - done)
        ks = rng.integers(0, k_n, size=(b, k_n))                       # processes
        nr = counts[ks]                                                 # rounds each drawn process has
        js = np.minimum((rng.random((b, k_n, r_n)) * nr[..., None]).astype(np.int64), r_n - 1)
        keep = np.arange(r_n)[None, None, :] < nr[..., None]
        for g, grid in enumerate(grids):
            picked = grid.grid[ks[..., None], js]                       # [b, K, R, L]
            picked = np.where(keep[..., None], picked, np.nan)
            out[g].append(_nanmedian_rows(picked.reshape(b, -1)))
        done += b
    return [np.concatenate(o) for o in out]


def _percentiles(values: np.ndarray, estimate: float, clusters: int) -> Tuple[float, float]:
    """The percentile interval of bootstrap `values`, widened about `estimate` for the few clusters it
    rests on: a bootstrap over K clusters sees (K-1)/K of their variance and a normal quantile where
    Student's t with K-1 degrees of freedom applies (K processes: 10 widens it by 22%)."""
    alpha = (1 - CI_LEVEL) / 2
    lo, hi = np.percentile(values[np.isfinite(values)], [100 * alpha, 100 * (1 - alpha)])
    if not clusters:   # 0: already widened
        return float(lo), float(hi)
    factor = small_sample_factor(clusters)
    # widened on the log scale: times and ratios are positive, and their bounds stay so
    if estimate > 0 and lo > 0:
        return float(estimate * (lo / estimate) ** factor), float(estimate * (hi / estimate) ** factor)
    return float(estimate - (estimate - lo) * factor), float(estimate + (hi - estimate) * factor)


def _widened(values: np.ndarray, estimate: float, clusters: int) -> np.ndarray:
    """Resamples spread about the estimate by the small-sample factor (on the log scale: they stay positive):
    the distribution the interval and the p-value are read from."""
    v = np.asarray(values, np.float64)
    factor = small_sample_factor(clusters)
    if estimate > 0 and np.all(v[np.isfinite(v)] > 0):
        return estimate * (v / estimate) ** factor
    return estimate + (v - estimate) * factor


def small_sample_factor(clusters: int) -> float:
    """sqrt(K / (K - 1)) * t(0.975, K - 1) / z(0.975): how much wider a K-cluster bootstrap interval must be."""
    from scipy import stats
    k = max(2, int(clusters))
    z = float(stats.norm.ppf(0.5 + CI_LEVEL / 2))
    return float(np.sqrt(k / (k - 1)) * stats.t.ppf(0.5 + CI_LEVEL / 2, k - 1) / z)


def cell_ratios(a: Nested, b: Nested) -> np.ndarray:
    """[process, round slot] ratios of the two rows' cell medians (NaN where a process has fewer rounds)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmedian(a.grid, axis=2) / np.nanmedian(b.grid, axis=2)


def paired_cells(a: np.ndarray, b: np.ndarray, a_rounds: Optional[np.ndarray], b_rounds: Optional[np.ndarray],
                 a_processes: Optional[np.ndarray], b_processes: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The cell ratios of two rows measured in the same (process, round) cells, or None (fewer than two
    processes in common)."""
    ga, gb = Nested.of(a, a_rounds, a_processes), Nested.of(b, b_rounds, b_processes)
    common = tuple(tuple(c for c in slots if c in set(sb)) for slots, sb in zip(ga.cells, gb.cells))
    common = tuple(slots for slots in common if slots)
    if len(common) < 2:
        return None
    return cell_ratios(Nested.of(a, a_rounds, a_processes, common), Nested.of(b, b_rounds, b_processes, common))


def nested_cell_medians(cells: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The median of the cells [process, round slot] (NaN padded) in each two-level resample."""
    rng = np.random.default_rng(seed)
    k_n, r_n = cells.shape
    counts = np.sum(~np.isnan(cells), axis=1)
    ks = rng.integers(0, k_n, size=(resamples, k_n))
    nr = counts[ks]
    js = np.minimum((rng.random((resamples, k_n, r_n)) * nr[..., None]).astype(np.int64), r_n - 1)
    keep = np.arange(r_n)[None, None, :] < nr[..., None]
    picked = np.where(keep, cells[ks[..., None], js], np.nan)
    return _nanmedian_rows(picked.reshape(resamples, -1))


def _nested_ratio(a: np.ndarray, b: np.ndarray, a_rounds: Optional[np.ndarray], b_rounds: Optional[np.ndarray],
                  a_processes: Optional[np.ndarray], b_processes: Optional[np.ndarray], paired: bool,
                  estimate: float, run_spread: float = 0.0) -> Interval:
    """Rows of several processes. Paired (one group): the estimate is the median, over the (process, round)
    cells both rows measured, of the ratio of their cell medians: each cell's ratio cancels what the machine
    did in that cell to both rows, and the median over cells ignores the few cells a disturbance hit one row
    in more than the other. Its interval resamples processes, then rounds within them. Unpaired (two runs,
    two groups): the ratio of the rows' medians, each row resampled on its own."""
    if paired:
        cells = paired_cells(a, b, a_rounds, b_rounds, a_processes, b_processes)
        if cells is not None:
            est = float(np.nanmedian(cells))
            values = with_run_term(_widened(nested_cell_medians(cells), est, cells.shape[0]), run_spread)
            lo, hi = _percentiles(values, est, 0)
            return Interval(est, lo, hi, paired=True, p_value=p_value(values))
    ga, gb = Nested.of(a, a_rounds, a_processes), Nested.of(b, b_rounds, b_processes)
    (ma,) = nested_resamples([ga], ga.cells, seed=SEED)
    (mb,) = nested_resamples([gb], gb.cells, seed=SEED + 1)
    k = min(len(ga.cells), len(gb.cells))
    values = with_run_term(_widened(ma / mb, estimate, k), run_spread)
    lo, hi = _percentiles(values, estimate, 0)
    return Interval(estimate, lo, hi, p_value=p_value(values))


def with_run_term(values: np.ndarray, spread: float, seed: int = SEED + 7) -> np.ndarray:
    """Ratio resamples each multiplied by exp(N(0, spread^2)): the run-to-run variation added to the
    within-run one (a fixed seed: the same samples always give the same interval)."""
    v = np.asarray(values, np.float64)
    if spread <= 0:
        return v
    noise = np.random.default_rng(seed).standard_normal(v.shape)
    return v * np.exp(spread * noise)


def process_stats(samples: np.ndarray, rounds: Optional[np.ndarray],
                  processes: Optional[np.ndarray]) -> Dict[str, float]:
    """How far the processes' medians spread, against what each process's own data explains.

    `process_spread`: the robust standard deviation (1.4826 MAD) of the processes' medians, relative to
    the row's median; `process_within`: the typical standard error of one process's median from its own
    data (its rounds' medians where it has several, else its loops' MAD), relative likewise;
    `process_ratio` = spread / within. {} for a row of one process."""
    if not several(processes):
        return {}
    x = np.asarray(samples, np.float64)
    procs = np.asarray(processes)
    rnds = np.zeros(x.size, np.int64) if rounds is None else np.asarray(rounds)
    overall = float(np.median(x))
    meds, ses = [], []
    for k in np.unique(procs):
        y, yr = x[procs == k], rnds[procs == k]
        meds.append(float(np.median(y)))
        by_round = [float(np.median(y[yr == r])) for r in np.unique(yr)]
        if len(by_round) >= 3:
            ses.append(float(np.std(by_round, ddof=1)) / np.sqrt(len(by_round)))
        else:
            mad = 1.4826 * float(np.median(np.abs(y - np.median(y))))
            ses.append(1.2533 * mad / np.sqrt(max(1, y.size)))
    m = np.asarray(meds)
    between = 1.4826 * float(np.median(np.abs(m - np.median(m))))
    within = float(np.median(ses))
    ratio = between / within if within > 0 else (0.0 if between == 0 else float("inf"))
    spread = between / overall if overall > 0 else 0.0
    z = 1.959963984540054
    width = z * small_sample_factor(len(meds)) * spread / np.sqrt(len(meds))
    return {"processes": float(len(meds)), "process_spread": spread,
            "process_within": within / overall if overall > 0 else 0.0, "process_ratio": ratio,
            "process_width": width}


def process_spread_matters(stats: Dict[str, float]) -> bool:
    """The processes differ by more than their own loops explain, and by enough to widen the interval
    past +-PROCESS_WIDTH_LIMIT: more processes would narrow it (the `process-spread` flag)."""
    return bool(stats) and stats["process_ratio"] > PROCESS_SPREAD_LIMIT and stats["process_width"] > PROCESS_WIDTH_LIMIT
