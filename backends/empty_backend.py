"""A backend that does no work: its inference stage measures what the harness itself costs.

It returns what a network that sees no face would, with the model's real output names and shapes
(from the graph), prepared in load(): zeros, except that probability outputs (a softmax, possibly
reshaped or transposed after it) say "background" with certainty. The family's decoder runs
unchanged and finds no faces.

Variants: `default` is the CPU floor (infer returns at once). `cuda` is the GPU floor, so GPU rows
have theirs in the same table: each infer records one CUDA event pair around a 16-byte
device-to-host copy into pinned memory, synchronises the stream and returns the same outputs;
`gpu_time_ms` gives the event pair's time. It needs torch with CUDA and a CUDA device (unavailable,
with the reason, otherwise).

Fault injection (a debugging hook for the harness's failure handling, never used in a benchmark):
option `fault` makes the worker really fail the way runtimes do, after `fault_after` infer calls
(default 0, i.e. at the first): `segfault` (a real SIGSEGV: reads address 0), `abort` (SIGABRT,
as a C++ runtime's std::terminate does), `exit` (the process exits with code 70 mid-run), `raise`
(a Python exception from the runtime). The harness must turn each into a `failed` row with the
reason, and carry on with the other rows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from backends.base import Backend, choices
from retinabench.errors import BackendUnavailable
from retinabench.graph.ir import Graph, infer_shapes
from retinabench.records import RowSettings

FAULTS = ("segfault", "abort", "exit", "raise")
FLOOR_BYTES = 16  # copied back per call by the `cuda` variant
CUDA_FLOOR_TIMER = f"GPU floor: one CUDA event pair around a {FLOOR_BYTES}-byte device-to-host copy (pinned)"


@dataclass(frozen=True)
class EmptyVariant:
    cuda: bool = False   # the GPU floor: an event pair, a tiny copy back and a synchronisation per call


VARIANTS = {"default": EmptyVariant(), "cuda": EmptyVariant(cuda=True)}


@dataclass(frozen=True)
class EmptyOptions:
    fault: Optional[str] = choices(*FAULTS)   # fail this way (a debugging hook for the harness)
    fault_after: int = 0                      # ... after this many infer calls


class EmptyBackend(Backend):
    name = "empty"
    variants = VARIANTS
    Options = EmptyOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._calls = 0
        self._out: Dict[str, np.ndarray] = {}
        self._timer: Any = None

    def load(self, model, batch: int, height: int, width: int) -> None:
        if self.spec.cuda:
            self._load_cuda()
        graph = model.graph()
        shapes = infer_shapes(graph, (batch, 3, height, width))
        self.output_names = list(graph.outputs)
        self._out = {n: _no_face(graph, n, shapes) for n in self.output_names}

    def _load_cuda(self) -> None:
        if not self.device.startswith("cuda"):
            raise BackendUnavailable(f"empty variant 'cuda' needs a CUDA device (device is {self.device!r})")
        try:
            import torch
        except Exception as e:
            raise BackendUnavailable(f"empty variant 'cuda' needs torch ({type(e).__name__}: {e})") from None
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"torch {torch.__version__}: no CUDA device")
        from retinabench.model.device.cuda import GpuTimer

        dev = torch.device(self.device)
        if dev.index is not None:
            torch.cuda.set_device(dev)
        self._torch = torch
        self._src = torch.zeros(FLOOR_BYTES, dtype=torch.uint8, device=dev)
        self._dst = torch.empty(FLOOR_BYTES, dtype=torch.uint8, pin_memory=True)
        self._timer = GpuTimer(CUDA_FLOOR_TIMER)
        torch.cuda.synchronize()

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        if self.options.fault:
            self._calls += 1
            if self._calls > self.options.fault_after:
                _inject(self.options.fault)
        if self._timer is not None:  # the GPU floor: what every CUDA backend's inference stage pays at least
            self._timer.start()
            self._dst.copy_(self._src, non_blocking=True)
            self._timer.stop()
            self._torch.cuda.current_stream().synchronize()
            self._timer.read()
        return self._out

    def metrics(self) -> Dict[str, Any]:
        if self._timer is None:
            return {}
        return {"gpu_time_ms": list(self._timer.times_ms), "gpu_times_include_warmup": True,
                "gpu_timer_coverage": {"gpu_time_ms": self._timer.label}}

    def versions(self) -> Dict[str, str]:
        if self._timer is None:
            return {}
        torch = self._torch
        return {"torch": torch.__version__, "cuda": str(torch.version.cuda),
                "gpu": torch.cuda.get_device_name(torch.device(self.device))}

    def settings(self) -> RowSettings:
        s = super().settings()
        s.precision = "none"
        if self.spec.cuda:
            s.extras["floor"] = CUDA_FLOOR_TIMER
        return s


def _no_face(graph: Graph, name: str, shapes: Dict[str, Tuple[int, ...]]) -> np.ndarray:
    """Zeros; for an output computed by a softmax (then reshapes/transposes), class 0 with probability 1."""
    by_name = {n.name: n for n in graph.nodes}
    chain = []
    node = by_name.get(name)
    while node is not None and node.op in ("reshape", "transpose"):
        chain.append(node)
        node = by_name.get(node.inputs[0])
    if node is None or node.op != "softmax":
        return np.zeros(shapes[name], np.float32)
    out = np.zeros(shapes[node.name], np.float32)
    index = [slice(None)] * out.ndim
    index[int(node.attrs["axis"])] = 0
    out[tuple(index)] = 1.0
    for n in reversed(chain):  # replay the reshapes and transposes after the softmax
        out = out.reshape(shapes[n.name]) if n.op == "reshape" else out.transpose(n.attrs["perm"])
    return np.ascontiguousarray(out)


def _inject(fault: str) -> None:
    if fault == "segfault":
        import ctypes
        ctypes.string_at(0)  # dereferences NULL: the kernel sends SIGSEGV
    elif fault == "abort":
        os.abort()
    elif fault == "exit":
        os._exit(70)
    raise RuntimeError("injected fault: the runtime raised during inference")
