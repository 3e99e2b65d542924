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

A model our graph cannot express (an ONNX op without a converter: it runs natively elsewhere) has
no graph to take shapes from. Then the outputs are the family's layout at the row's input size,
under the file's output names: insightface's per-stride maps [B, 2A|4A|10A, ceil(H/s), ceil(W/s)]
(A from the file's cls channels where declared, else mnet.25's 2), biubug6's [B, N, 4|2|10] with N
the priors of that size, with "background" certain in the class outputs. Those are the shapes the
family decoders accept and decode (a third-party model's shapes cannot be known without running
it, and ONNX shape inference stops at the usual Shape -> Resize subgraphs), so the row measures
what it always does: the harness and the family's stages, no network. `settings().extras`
says which (`outputs_from`: graph | family layout).

Fault injection (a debugging hook for the harness's failure handling, never used in a benchmark):
option `fault` makes the worker really fail the way runtimes do, after `fault_after` infer calls
(default 0, i.e. at the first): `segfault` (a real SIGSEGV: reads address 0), `abort` (SIGABRT,
as a C++ runtime's std::terminate does), `exit` (the process exits with code 70 mid-run), `raise`
(a Python exception from the runtime). The harness must turn each into a `failed` row with the
reason, and carry on with the other rows.

Memory reservation (test-only, for the footprint figures: retinabench.harness.footprint; never used
in a benchmark): option `reserve_mib` allocates that many MiB of host memory at load and touches
every page (numpy.ones), `reserve_gpu_mib` (the `cuda` variant) that many MiB on the device (a torch
tensor, filled); both are kept alive until the backend closes, so the row's host or GPU memory must
read at least that much more than without. A row that reserves says so in its settings' extras.
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
    reserve_mib: int = 0                      # test-only: hold this many MiB of touched host memory from load
    reserve_gpu_mib: int = 0                  # test-only (variant cuda): ... of filled device memory
    stderr: str = ""                          # test-only: print this line on stderr at load (as runtimes warn)


class EmptyBackend(Backend):
    name = "empty"
    variants = VARIANTS
    Options = EmptyOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._calls = 0
        self._out: Dict[str, np.ndarray] = {}
        self._timer: Any = None
        self._outputs_from = ""
        self._reserved: Any = None
        self._reserved_gpu: Any = None

    def load(self, model, batch: int, height: int, width: int) -> None:
        from retinabench.graph.onnx_import import ConversionError
        if self.options.stderr:
            import sys
            print(self.options.stderr, file=sys.stderr, flush=True)
        self._reserve()
        if self.spec.cuda:
            self._load_cuda()
        try:
            graph = model.graph()
        except ConversionError as e:  # runs natively elsewhere: the family's layout, no graph
            self._out = _family_no_face(model, batch, height, width, str(e))
            self.output_names = list(self._out)
            self._outputs_from = "family layout"
            return
        shapes = infer_shapes(graph, (batch, 3, height, width))
        self.output_names = list(graph.outputs)
        self._out = {n: _no_face(graph, n, shapes) for n in self.output_names}
        self._outputs_from = "graph"

    def _reserve(self) -> None:
        """The test-only reservations: every host page touched, the device block filled."""
        from retinabench.errors import ConfigError
        o = self.options
        for key in ("reserve_mib", "reserve_gpu_mib"):
            if getattr(o, key) < 0:
                raise ConfigError(f"backend 'empty' options.{key}: {getattr(o, key)} is negative")
        if o.reserve_gpu_mib and not self.spec.cuda:
            raise ConfigError("backend 'empty' options.reserve_gpu_mib: only the `cuda` variant runs on the device")
        if o.reserve_mib:
            self._reserved = np.ones(o.reserve_mib << 20, np.uint8)

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
        if self.options.reserve_gpu_mib:
            self._reserved_gpu = torch.ones(self.options.reserve_gpu_mib << 20, dtype=torch.uint8, device=dev)
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
        s.extras["outputs_from"] = self._outputs_from
        for key in ("reserve_mib", "reserve_gpu_mib"):
            if getattr(self.options, key):
                s.extras[key] = getattr(self.options, key)
        return s

    def close(self) -> None:
        self._reserved = self._reserved_gpu = None


def _family_no_face(model, batch: int, height: int, width: int, reason: str) -> Dict[str, np.ndarray]:
    """No-face outputs in the family's layout under the file's output names (file order)."""
    import math

    from retinabench.errors import ModelError
    from retinabench.model import biubug6, insightface

    if model.format != "onnx":
        raise BackendUnavailable(reason)
    _, outputs = model.io()
    names = [n for n, _ in outputs]
    declared = dict(outputs)
    out: Dict[str, np.ndarray] = {}
    if model.family == "biubug6":
        roles = biubug6.output_roles(names)
        if roles is None:  # by the declared last axis, as the family's recogniser told them apart
            by_width = {s[-1]: n for n, s in declared.items() if s and len(s) == 3 and s[-1] is not None}
            roles = {role: by_width.get(w, "") for role, w in (("loc", 4), ("conf", 2), ("landmarks", 10))}
            if not all(roles.values()):
                raise BackendUnavailable(f"empty: cannot tell loc/conf/landmarks of {names} "
                                         f"without the graph ({reason})")
        count = biubug6.prior_count(height, width)
        for role, width_ in (("loc", 4), ("conf", 2), ("landmarks", 10)):
            a = np.zeros((batch, count, width_), np.float32)
            if role == "conf":
                a[..., 0] = 1.0  # background, certain
            out[roles[role]] = a
    elif model.family == "insightface":
        try:
            roles_by_stride = insightface.output_roles(names)
        except ModelError as e:
            raise BackendUnavailable(f"empty: {e} ({reason})") from None
        for stride, (cls, bbox, lmk) in roles_by_stride.items():
            gh, gw = math.ceil(height / stride), math.ceil(width / stride)
            shape = declared.get(cls)
            c = shape[1] if shape is not None and len(shape) == 4 else None
            anchors = int(c) // 2 if c else 2  # mnet.25: 2 anchors per cell
            prob = np.zeros((batch, 2 * anchors, gh, gw), np.float32)
            prob[:, :anchors] = 1.0  # background first, then face (the insightface decoder reads [A:])
            out[cls] = prob
            out[bbox] = np.zeros((batch, 4 * anchors, gh, gw), np.float32)
            out[lmk] = np.zeros((batch, 10 * anchors, gh, gw), np.float32)
    else:
        raise BackendUnavailable(f"empty: model family {model.family!r} unknown without the graph ({reason})")
    return {n: out[n] for n in names if n in out}


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
