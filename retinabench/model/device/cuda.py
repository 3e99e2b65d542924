"""CUDA helpers shared by the torch backend's variants and the device pipeline stages.

- `capture`: warm a function up on a side stream, then record it into a CUDA graph on that same
  stream (cuDNN/cuBLAS handles and cudnn.benchmark choices are made before capture, never in it).
- `GpuTimer`: CUDA events around a stage's GPU work; the elapsed time is read after the stage's
  own synchronisation, so the measured host time pays one cheap query, not an extra wait.
- `compiled`: torch.compile with the compile time measured, so it is reported beside the loop
  instead of hiding in the first warmup iteration.
"""
from __future__ import annotations

import time
from typing import Any, Callable, List, Tuple


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
    """Per-call GPU time of one stage (ms), from a reused pair of CUDA events."""

    def __init__(self) -> None:
        import torch

        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.times_ms: List[float] = []

    def start(self) -> None:
        self._start.record()

    def stop(self) -> None:
        self._end.record()

    def read(self) -> None:
        """Call after the stream was synchronised: appends this call's elapsed GPU time."""
        self.times_ms.append(self._start.elapsed_time(self._end))


def compiled(fn: Callable[..., Any], *example: Any) -> Tuple[Callable[..., Any], float]:
    """(torch.compile(fn), seconds the first call took): static shapes, whole graph or an error."""
    import torch

    out = torch.compile(fn, fullgraph=True, dynamic=False)
    t0 = time.perf_counter()
    out(*example)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0
