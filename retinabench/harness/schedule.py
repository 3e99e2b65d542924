"""How a scenario's rows share the machine: interleaved rounds (the default) or one row after another.

Interleaved (after Google Benchmark's random interleaving and asv's interleaved sampling): the rows
of a group are loaded first, each in its own worker; then, round after round, every live row
measures one chunk of `round_loops` loops, in an order shuffled per round from a recorded seed,
one worker at a time (the others block on their pipes). A noisy stretch of a shared machine then
lands on every row alike instead of on whichever row ran then, and rows can be compared round by
round (retinabench.report.stats pairs them). Each chunk after the first starts with
`rewarm_loops` loops that are recorded and excluded: caches and clocks settle after the other
rows ran.

Groups: rows of one batch size interleave together (a table's columns stay comparable), at most
`max_live_workers` loaded at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, TypeVar

import numpy as np

from retinabench.config import SCHEDULES

TARGET_ROUNDS = 20          # a 1000-loop row: 20 rounds of 50 loops

T = TypeVar("T")


@dataclass(frozen=True)
class Schedule:
    kind: str
    round_loops: int
    rewarm_loops: int
    seed: int
    max_live_workers: Optional[int] = None

    @classmethod
    def of(cls, kind: str, loops: int, seed: int, round_loops: Optional[int] = None,
           rewarm_loops: Optional[int] = None, max_live_workers: Optional[int] = None) -> "Schedule":
        """The schedule with its defaults filled in: about TARGET_ROUNDS rounds, a tenth of a chunk re-warm."""
        if kind not in SCHEDULES:
            raise ValueError(f"schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
        n = round_loops if round_loops else max(1, math.ceil(loops / TARGET_ROUNDS))
        rewarm = rewarm_loops if rewarm_loops is not None else min(5, max(1, n // 10))
        return cls(kind, int(n), int(rewarm), int(seed), max_live_workers)

    def rounds(self, loops: int) -> List[int]:
        """The measured loops of each round: `round_loops` each, the last one what is left."""
        full, rest = divmod(loops, self.round_loops)
        return [self.round_loops] * full + ([rest] if rest else [])

    def to_json(self) -> Dict[str, object]:
        return {"kind": self.kind, "round_loops": self.round_loops, "rewarm_loops": self.rewarm_loops,
                "seed": self.seed, "max_live_workers": self.max_live_workers}


def groups(items: Sequence[T], batch_of, max_live: Optional[int]) -> List[List[T]]:
    """Items of one batch together (in the order each batch first appears), split to at most `max_live`."""
    by_batch: Dict[int, List[T]] = {}
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
