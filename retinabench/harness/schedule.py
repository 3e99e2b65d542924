"""How a scenario's rows share the machine: interleaved rounds (the default) or one row after another.

Interleaved (after Google Benchmark's random interleaving and asv's interleaved sampling): the rows
of a group are loaded first, each in its own worker; then, round after round, every live row
measures one chunk of `round_loops` loops, in an order shuffled per round from a recorded seed,
one worker at a time (the others block on their pipes). A noisy stretch of a shared machine then
lands on every row alike instead of on whichever row ran then, and rows can be compared round by
round (retinabench.report.stats pairs them). Each chunk after the first starts with
`rewarm_loops` loops that are recorded and excluded: caches and clocks settle after the other
rows ran.

Groups: rows of one input size and batch size interleave together (a table's columns stay
comparable; a sweep over sizes runs one group per size), at most `max_live_workers` loaded at once.

Processes (after pyperf): each row is measured by `processes` worker processes in turn, process k
taking a contiguous block of the rounds (`process_blocks`), loaded at the block's start and
finished at its end, with a share of the warmup of its own (`process_warmup`). `loops` stays the
row's total. A round is never shorter than MIN_ROUND_LOOPS (a short run has fewer rounds), and a
row never has more processes than rounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, TypeVar

import numpy as np

from retinabench.config import SCHEDULES

TARGET_ROUNDS = 20          # a 1000-loop row: 20 rounds of 50 loops
MIN_ROUND_LOOPS = 5         # shorter rounds are mostly re-warm and clock reads: short runs get fewer rounds
MIN_PROCESS_WARMUP = 5      # a fresh process's first calls allocate and pick kernels: at least this many warmup loops
# Worker processes per row when the scenario does not say (`processes`): on a CPU, enough that the
# ratio of two rows moves less than its interval between runs (the README's interval coverage table,
# benchmarks/interval_coverage.py); on a GPU fewer: a process loads a CUDA context and, for compiled
# rows, its kernels, and the H200's rows moved less between processes (see the README).
DEFAULT_PROCESSES = {"cpu": 10, "cuda": 3}

T = TypeVar("T")


@dataclass(frozen=True)
class Schedule:
    kind: str
    round_loops: int
    rewarm_loops: int
    seed: int
    max_live_workers: Optional[int] = None
    processes: Optional[int] = None     # per row; None: DEFAULT_PROCESSES by the unit's device
    warmup: Optional[int] = None        # the scenario's warmup: split between a row's processes

    @classmethod
    def of(cls, kind: str, loops: int, seed: int, round_loops: Optional[int] = None,
           rewarm_loops: Optional[int] = None, max_live_workers: Optional[int] = None,
           processes: Optional[int] = None, warmup: Optional[int] = None) -> "Schedule":
        """The schedule with its defaults filled in: about TARGET_ROUNDS rounds of at least MIN_ROUND_LOOPS
        loops (a short run has fewer, longer rounds), a tenth of a chunk re-warm."""
        if kind not in SCHEDULES:
            raise ValueError(f"schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
        n = round_loops if round_loops else max(min(MIN_ROUND_LOOPS, loops), math.ceil(loops / TARGET_ROUNDS))
        rewarm = rewarm_loops if rewarm_loops is not None else min(5, max(1, n // 10))
        return cls(kind, int(n), int(rewarm), int(seed), max_live_workers, processes, warmup)

    def rounds(self, loops: int) -> List[int]:
        """The measured loops of each round: `round_loops` each, the last one what is left."""
        full, rest = divmod(loops, self.round_loops)
        return [self.round_loops] * full + ([rest] if rest else [])

    def processes_for(self, devices: Sequence[str], rounds: int) -> int:
        """A unit's worker processes per row: the scenario's, else the default for its rows' devices (a
        unit with a CPU row gets the CPU's); never more than it has rounds (each process measures whole rounds)."""
        if self.processes:
            wanted = self.processes
        else:
            wanted = DEFAULT_PROCESSES["cuda" if devices and all(d.startswith("cuda") for d in devices) else "cpu"]
        return max(1, min(int(wanted), rounds))

    def process_warmup(self, warmup: int, processes: int) -> int:
        """Warmup loops per process: the scenario's warmup split between them, at least MIN_PROCESS_WARMUP
        each (a fresh process is cold whatever its share), never more than the scenario's warmup."""
        if processes <= 1:
            return warmup
        return min(warmup, max(MIN_PROCESS_WARMUP, math.ceil(warmup / processes)))

    def to_json(self) -> Dict[str, object]:
        return {"kind": self.kind, "round_loops": self.round_loops, "rewarm_loops": self.rewarm_loops,
                "seed": self.seed, "max_live_workers": self.max_live_workers, "processes": self.processes}


def process_blocks(rounds: int, processes: int) -> List[int]:
    """The first round of each process's block of consecutive rounds (as even as the rounds allow)."""
    return [(k * rounds) // processes for k in range(processes)]


def groups(items: Sequence[T], batch_of, max_live: Optional[int]) -> List[List[T]]:
    """Items of one batch (or one input size and batch: whatever `batch_of` gives) together, in the order each
    first appears, split to at most `max_live`."""
    by_batch: Dict[Any, List[T]] = {}
    for it in items:
        by_batch.setdefault(batch_of(it), []).append(it)
    out: List[List[T]] = []
    for members in by_batch.values():
        size = max_live or len(members)
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out


def round_orders(n_rows: int, n_rounds: int, seed: int, group: int) -> List[List[int]]:
    """For each round, the order the group's rows measure in: a permutation, reproducible from (seed, group)."""
    rng = np.random.default_rng([seed, group])
    return [rng.permutation(n_rows).tolist() for _ in range(n_rounds)]


def new_seed() -> int:
    """A fresh seed when the scenario names none (it is recorded in run.json, so the order can be replayed)."""
    return int(np.random.SeedSequence().entropy % (2**31))
