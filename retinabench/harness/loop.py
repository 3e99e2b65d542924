"""The measured loop: preprocess -> infer -> postprocess, each stage timed with perf_counter_ns.

Stage boundaries are contiguous clock reads, so the three stages add up to the loop's total
exactly; a stage ends when its results exist because `Backend.infer` returns only complete host
outputs. Warmup loops run the same code and are kept separately, never mixed into the samples.

A row may be measured in chunks (interleaved rounds: retinabench.harness.schedule): `MeasuredLoop`
keeps the pipeline between chunks and `run()` times one chunk; `measure()` is warmup + loops in one go.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

STAGES = ("preprocess", "inference", "postprocess", "total")

Progress = Callable[[int, int], None]


class MeasuredLoop:
    """The three stages of one row, and the outputs and faces of the last loop run."""

    def __init__(self, preprocess: Callable, infer: Callable, postprocess: Callable, images: Sequence[np.ndarray]):
        self.preprocess, self.infer, self.postprocess = preprocess, infer, postprocess
        self.images = images
        self.outputs: Dict[str, Any] = {}
        self.faces: List[Any] = []
        self.calls = 0          # loops run so far, every kind: per-call GPU timers line up with this

    def run(self, loops: int, progress: Optional[Progress] = None, steps: int = 100) -> np.ndarray:
        """Time `loops` loops: [loops, 4] ns (preprocess, inference, postprocess, total).

        `progress(done, loops)` is called at most `steps` times, between loops (outside every stage)."""
        clock = time.perf_counter_ns
        pre, infer, post, images = self.preprocess, self.infer, self.postprocess, self.images
        out = np.zeros((loops, 4), np.int64)
        step = max(1, loops // max(1, steps))
        outputs, faces = self.outputs, self.faces
        for i in range(loops):
            t0 = clock()
            blob, metas = pre(images)
            t1 = clock()
            outputs = infer(blob)
            t2 = clock()
            faces = post(outputs, metas)
            t3 = clock()
            row = out[i]
            row[0] = t1 - t0; row[1] = t2 - t1; row[2] = t3 - t2; row[3] = t3 - t0
            if progress is not None and ((i + 1) % step == 0 or i + 1 == loops):
                progress(i + 1, loops)
        self.outputs, self.faces = outputs, faces
        self.calls += loops
        return out


class PipelinedLoop:
    """A device pipeline timed as a whole (retinabench.model.device.pipelined): each loop is one host
    interval (the total column); the stage columns are the CUDA-event times of the batch that
    completed (upload + preprocessing, network, decode + copy back), so they need not add up to it."""

    def __init__(self, pipeline: Any, images: Sequence[np.ndarray]):
        self.pipeline, self.images = pipeline, images
        self.faces: List[Any] = []
        self.calls = 0

    @property
    def outputs(self) -> Dict[str, Any]:
        return self.pipeline.outputs

    def run(self, loops: int, progress: Optional[Progress] = None, steps: int = 100) -> np.ndarray:
        clock = time.perf_counter_ns
        step_fn, images = self.pipeline.step, self.images
        out = np.zeros((loops, 4), np.int64)
        step = max(1, loops // max(1, steps))
        faces: List[Any] = self.faces
        for i in range(loops):
            t0 = clock()
            faces, stage_ms = step_fn(images)
            t1 = clock()
            row = out[i]
            row[0] = int(stage_ms[0] * 1e6); row[1] = int(stage_ms[1] * 1e6); row[2] = int(stage_ms[2] * 1e6)
            row[3] = t1 - t0
            if progress is not None and ((i + 1) % step == 0 or i + 1 == loops):
                progress(i + 1, loops)
        self.faces = faces
        self.calls += loops
        return out


@dataclass
class LoopResult:
    samples_ns: np.ndarray          # [loops, 4]: preprocess, inference, postprocess, total
    warmup_ns: np.ndarray           # [warmup, 4], same columns
    outputs: Dict[str, np.ndarray]  # raw outputs of the last loop
    faces: List[Any]                # decoded faces of the last loop, one per image


def measure(preprocess: Callable, infer: Callable, postprocess: Callable, images: Sequence[np.ndarray],
            loops: int, warmup: int, progress: Optional[Progress] = None,
            on_measure_start: Optional[Callable[[], None]] = None) -> LoopResult:
    """Warmup loops, then measured loops, in one go (the sequential schedule's one chunk)."""
    loop = MeasuredLoop(preprocess, infer, postprocess, images)
    total = warmup + loops
    warm = loop.run(warmup, (lambda d, _: progress(d, total)) if progress else None)
    if on_measure_start is not None:
        on_measure_start()
    samples = loop.run(loops, (lambda d, _: progress(warmup + d, total)) if progress else None)
    return LoopResult(samples, warm, loop.outputs, loop.faces)
