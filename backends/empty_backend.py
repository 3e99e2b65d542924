"""A backend that does no work: its inference stage measures what the harness itself costs.

It returns what a network that sees no face would, with the model's real output names and shapes
(from the graph), prepared in load(): zeros, except that probability outputs (a softmax, possibly
reshaped or transposed after it) say "background" with certainty. The family's decoder runs
unchanged and finds no faces.

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
from retinabench.graph.ir import Graph, infer_shapes
from retinabench.records import RowSettings

FAULTS = ("segfault", "abort", "exit", "raise")


@dataclass(frozen=True)
class EmptyOptions:
    fault: Optional[str] = choices(*FAULTS)   # fail this way (a debugging hook for the harness)
    fault_after: int = 0                      # ... after this many infer calls


class EmptyBackend(Backend):
    name = "empty"
    Options = EmptyOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._calls = 0
        self._out: Dict[str, np.ndarray] = {}

    def load(self, model, batch: int, height: int, width: int) -> None:
        graph = model.graph()
        shapes = infer_shapes(graph, (batch, 3, height, width))
        self.output_names = list(graph.outputs)
        self._out = {n: _no_face(graph, n, shapes) for n in self.output_names}

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        if self.options.fault:
            self._calls += 1
            if self._calls > self.options.fault_after:
                _inject(self.options.fault)
        return self._out

    def settings(self) -> RowSettings:
        s = super().settings()
        s.precision = "none"
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
