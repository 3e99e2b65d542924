"""CUDA helpers shared by the torch backend's variants and the device pipeline stages.

- `capture`: warm a function up on a side stream, then record it into a CUDA graph on that same
  stream (cuDNN/cuBLAS handles and cudnn.benchmark choices are made before capture, never in it).
- `GpuTimer`: CUDA events around a stage's GPU work; the elapsed time is read after the stage's
  own synchronisation, so the measured host time pays one cheap query, not an extra wait. Each
  timer carries a `label` saying what its event pair covers (reported beside its times).
- `untimed`: inside it, timers record nothing (the device-stage build pass outside the measured
  loop leaves no entry, so the timers' lists stay "warmup calls, then measured calls").
- `compiled`: torch.compile with the compile time measured, so it is reported beside the loop
  instead of hiding in the first warmup iteration.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Tuple

_UNTIMED = 0  # > 0 inside `untimed()`: GpuTimer.read appends nothing


@contextmanager
def untimed() -> Iterator[None]:
    """GPU timers record no entry inside this block (events are still recorded: the work is unchanged)."""
    global _UNTIMED
    _UNTIMED += 1
    try:
        yield
    finally:
        _UNTIMED -= 1


def capture(fn: Callable[[], Any], warmup: int = 3) -> Tuple[Any, Any]:
    """(graph, outputs): `fn()` recorded into a CUDA graph; replaying it rewrites `outputs` in place.

    fn must read only tensors whose memory stays put (static inputs) and must not synchronise.
    """
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    # thread_local: the NVML sampler thread never touches CUDA, but nothing else may break capture.
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        out = fn()
    torch.cuda.current_stream().wait_stream(stream)
    return graph, out


class GpuTimer:
    """Per-call GPU time of one stage (ms), from a reused pair of CUDA events; `label`: what it covers."""

    def __init__(self, label: str = "") -> None:
        import torch

        self.label = label
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.times_ms: List[float] = []

    def start(self) -> None:
        self._start.record()

    def stop(self) -> None:
        self._end.record()

    def elapsed(self) -> float:
        """The last call's elapsed GPU time in ms (after the stream or its end event was waited for)."""
        return float(self._start.elapsed_time(self._end))

    def read(self) -> None:
        """Call after the stream was synchronised: appends this call's elapsed GPU time (not inside `untimed`)."""
        if _UNTIMED:
            return
        self.times_ms.append(self._start.elapsed_time(self._end))


def compiled(fn: Callable[..., Any], *example: Any) -> Tuple[Callable[..., Any], float]:
    """(torch.compile(fn), seconds the first call took): static shapes, whole graph or an error.

    On CUDA or the CPU (inductor's C++ backend there); inductor's caches live where
    TORCHINDUCTOR_CACHE_DIR says (the worker points it at <repo>/.cache/inductor), so a second row
    or run of the same shape reuses the compiled kernels: compile_cache_counts() tells which."""
    import torch

    out = torch.compile(fn, fullgraph=True, dynamic=False)
    t0 = time.perf_counter()
    out(*example)
    if any(getattr(x, "is_cuda", False) for x in example):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def compile_cache_counts() -> dict:
    """inductor's cache hits and misses so far in this process (FX graph and AOT autograd caches)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # an old torch: nothing to say
        return {}
    return {k: int(v) for k, v in counters["inductor"].items() if "cache" in k}
