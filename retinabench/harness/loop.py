"""The measured loop: preprocess -> infer -> postprocess, each stage timed with perf_counter_ns.

Stage boundaries are contiguous clock reads, so the three stages add up to the loop's total
exactly; a stage ends when its results exist because `Backend.infer` returns only complete host
outputs. Warmup loops run the same code and are kept separately, never mixed into the samples.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

STAGES = ("preprocess", "inference", "postprocess", "total")


@dataclass
class LoopResult:
    samples_ns: np.ndarray          # [loops, 4]: preprocess, inference, postprocess, total
    warmup_ns: np.ndarray           # [warmup, 4], same columns
    outputs: Dict[str, np.ndarray]  # raw outputs of the last loop
    faces: List[Any]                # decoded faces of the last loop, one per image


def measure(preprocess: Callable, infer: Callable, postprocess: Callable, images: Sequence[np.ndarray],
            loops: int, warmup: int, progress: Optional[Callable[[int, int], None]] = None,
            on_measure_start: Optional[Callable[[], None]] = None) -> LoopResult:
    clock = time.perf_counter_ns
    warm = np.zeros((warmup, 4), np.int64)
    samples = np.zeros((loops, 4), np.int64)
    total = warmup + loops
    step = max(1, total // 100)
    outputs: Dict[str, np.ndarray] = {}
    faces: List[Any] = []
    for i in range(total):
        if i == warmup and on_measure_start is not None:
            on_measure_start()
        t0 = clock()
        blob, metas = preprocess(images)
        t1 = clock()
        outputs = infer(blob)
        t2 = clock()
        faces = postprocess(outputs, metas)
        t3 = clock()
        row = warm[i] if i < warmup else samples[i - warmup]
        row[0] = t1 - t0; row[1] = t2 - t1; row[2] = t3 - t2; row[3] = t3 - t0
        if progress is not None and (i + 1) % step == 0:
            progress(i + 1, total)
    return LoopResult(samples, warm, outputs, faces)
