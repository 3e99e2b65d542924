"""Device pipelines timed as a whole: end to end (one batch at a time) or for throughput (two in flight).

A staged row synchronises at every stage boundary, as the original tables did, so its stage
columns are host intervals. The pipelines here synchronise once per loop, when the faces are needed:
- `e2e` (depth 1): upload + preprocessing, the network and decode + NMS + copy back are queued on
  one stream, and the loop waits for the faces; the loop's host interval is the latency from the
  uint8 image in host memory to the faces in host memory;
- `throughput` (depth 2): two slots, each with its own buffers, CUDA graphs and stream; while the
  GPU works on batch i in one slot, the host prepares batch i+1 (its copy into pinned memory, its
  upload) in the other; each loop queues a batch and then waits for the one before it, so a loop's
  interval is the time between two batches' completions and their mean is wall time / batches.
Either way the stage breakdown comes from CUDA events on the stream of the batch that completed
(as trtexec reports H2D, compute and D2H beside its host latency).

A slot is built from a backend's network for one input tensor (`Slot.run_model` replays it on the
current stream without waiting). On a CPU device everything runs eagerly and the times are zero:
the tests use that to check the pipelining logic.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

TIMINGS = ("staged", "e2e", "throughput")
MODEL_TIMER = "network: one CUDA event pair around the graph's replay on the slot's stream"


@dataclass
class Slot:
    """One batch in flight: its preprocessing (writing its input), network and decoder, and its stream."""

    pre: Any                                  # DevicePreprocessor writing this slot's input tensor
    run_model: Callable[[], Dict[str, Any]]   # queues the network on the current stream: outputs by name
    model_timer: Any                          # GpuTimer around the network (None on a CPU device)
    post: Any                                 # DevicePostprocessor reading this slot's outputs
    stream: Any = None                        # torch.cuda.Stream (None on a CPU device)
    metas: Any = None
    outputs: Dict[str, Any] = field(default_factory=dict)


class PipelinedStages:
    """`step(images)`: queue a batch, wait for the one that completes now, return its faces and stage times."""

    def __init__(self, slots: Sequence[Slot], depth: int):
        if depth not in (1, 2) or len(slots) != depth:
            raise ValueError(f"a pipeline of depth {depth} needs {depth} slots, got {len(slots)}")
        self.slots, self.depth = list(slots), depth
        self.calls = 0
        self.pending: Optional[Slot] = None
        self.last_done: Optional[Slot] = None
        self.timing = "e2e" if depth == 1 else "throughput"
        self.times: Dict[str, List[float]] = {"gpu_preprocess_ms": [], "gpu_time_ms": [], "gpu_postprocess_ms": []}
        self._record = True

    def _context(self, slot: Slot) -> Any:
        if slot.stream is None:
            return contextlib.nullcontext()
        import torch
        return torch.cuda.stream(slot.stream)

    def _enqueue(self, slot: Slot, images: Sequence[Any]) -> None:
        import torch
        with torch.inference_mode(), self._context(slot):
            if slot.stream is not None:
                # the slot's buffers were last read by its previous batch, collected already
                slot.stream.wait_stream(torch.cuda.current_stream())
            _, slot.metas = slot.pre.enqueue(images)
            slot.outputs = slot.run_model()
            slot.post.enqueue(slot.outputs, slot.metas)

    def _collect(self, slot: Slot) -> Tuple[List[Any], Tuple[float, float, float]]:
        faces = slot.post.collect(slot.outputs, slot.metas)   # waits for the slot's last event
        self.last_done = slot
        if slot.model_timer is None:
            return faces, (0.0, 0.0, 0.0)
        times = (slot.pre.timer.elapsed(), slot.model_timer.elapsed(), slot.post.timer.elapsed())
        if self._record:
            for key, ms in zip(self.times, times):
                self.times[key].append(ms)
        return faces, times

    def step(self, images: Sequence[Any]) -> Tuple[List[Any], Tuple[float, float, float]]:
        slot = self.slots[self.calls % self.depth]
        self.calls += 1
        self._enqueue(slot, images)
        if self.depth == 1:
            return self._collect(slot)
        done, self.pending = self.pending, slot
        if done is None:  # filling the pipeline (build() does it, untimed): nothing has completed yet
            return [], (0.0, 0.0, 0.0)
        return self._collect(done)

    @property
    def outputs(self) -> Dict[str, Any]:
        """The raw outputs of the batch that completed last (for the accuracy comparison)."""
        return self.last_done.outputs if self.last_done is not None else {}

    def build(self, images: Sequence[Any]) -> float:
        """Every slot's graphs captured (and compiled) outside the measured loops, and the pipeline
        filled; returns the seconds it took. Its calls record no stage times."""
        t0 = time.perf_counter()
        self._record = False
        try:
            for _ in range(self.depth + 1):
                self.step(images)
        finally:
            self._record = True
        self.calls = 0
        return time.perf_counter() - t0

    def drain(self) -> None:
        """Wait for the batch still in flight (after the last measured loop; not timed)."""
        if self.pending is not None:
            self._record = False
            slot, self.pending = self.pending, None
            self._collect(slot)
            self._record = True

    def metrics(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {k: list(v) for k, v in self.times.items() if v}
        if out:
            s = self.slots[0]
            out["gpu_timer_coverage"] = {"gpu_preprocess_ms": s.pre.timer.label, "gpu_time_ms": MODEL_TIMER,
                                         "gpu_postprocess_ms": s.post.timer.label}
        out["postprocess_host_fallbacks"] = sum(s.post.fallbacks for s in self.slots)
        return out
