"""ONNX Runtime backend: the model's own .onnx, or our export of its graph (cached per input shape).

CPUExecutionProvider here; CUDAExecutionProvider when the device is cuda and this onnxruntime
build has it (the GPU machine's onnxruntime is CPU-only: that is a clear "unavailable").
`session.run` returns host arrays, so inference is complete when it returns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np

from backends.base import Backend, choices
from retinabench.errors import BackendUnavailable
from retinabench.records import RowSettings

OPT_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    graph_optimization_level: str = choices(*OPT_LEVELS, default="ORT_ENABLE_ALL")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    runtime_module = "onnxruntime"
    Options = OnnxRuntimeOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._session: Any = None
        self._providers: List[str] = []
        self._input = ""
        self._opt_level = self.options.graph_optimization_level
        # ORT's own default (0) means "one per physical core"; we pick the usable cores and record it.
        self.intra_threads = int(self.threads) if self.threads else len(os.sched_getaffinity(0))

    def load(self, model, batch: int, height: int, width: int) -> None:
        import onnxruntime as ort
        from retinabench.graph.onnx_export import onnx_for

        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                                         f"(providers: {', '.join(ort.get_available_providers())})")
            idx = int(self.device.split(":")[1]) if ":" in self.device else 0
            providers: list = [("CUDAExecutionProvider", {"device_id": idx}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self._opt_level)
        path = onnx_for(model, (batch, 3, height, width))
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self._providers = self._session.get_providers()
        self._input = self._session.get_inputs()[0].name
        self.output_names = [o.name for o in self._session.get_outputs()]

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        outs = self._session.run(self.output_names, {self._input: blob})
        return dict(zip(self.output_names, outs))

    def versions(self) -> Dict[str, str]:
        import onnxruntime as ort
        return {"onnxruntime": ort.__version__}

    def settings(self) -> RowSettings:
        s = super().settings()
        s.threads, s.precision = self.intra_threads, "f32"
        s.extras.update(intra_op_num_threads=self.intra_threads, graph_optimization_level=self._opt_level,
                        providers=list(self._providers))
        return s

    def close(self) -> None:
        self._session = None
