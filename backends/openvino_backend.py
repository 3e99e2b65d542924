"""OpenVINO backend (CPU): compiles the model's ONNX (or our cached export) for a fixed input shape.

OpenVINO picks bf16 by itself on CPUs with bf16 units (AMX/AVX512-BF16), which costs accuracy
(FACTS.md). So the default variant asks for f32 (the parity row) and `bf16` is its own row; the
precision the compiled model actually uses is read back from it and recorded, because a CPU
without bf16 silently runs the bf16 request in f32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np

from backends.base import Backend, choices
from retinabench.errors import BackendUnavailable
from retinabench.records import RowSettings


@dataclass(frozen=True)
class OpenVINOVariant:
    precision: str          # INFERENCE_PRECISION_HINT asked for


VARIANTS = {"default": OpenVINOVariant("f32"), "bf16": OpenVINOVariant("bf16")}


@dataclass(frozen=True)
class OpenVINOOptions:
    performance_hint: str = choices("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT", default="LATENCY")


class OpenVINOBackend(Backend):
    name = "openvino"
    runtime_module = "openvino"
    variants = VARIANTS
    Options = OpenVINOOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._compiled: Any = None
        self._request: Any = None
        self._outputs: List[Any] = []
        self._actual: Dict[str, str] = {}

    def load(self, model, batch: int, height: int, width: int) -> None:
        import openvino as ov
        from retinabench.graph.onnx_export import onnx_for

        if self.device != "cpu":
            raise BackendUnavailable(f"openvino backend runs on the CPU only (asked for {self.device!r})")
        core = ov.Core()
        ov_model = core.read_model(str(onnx_for(model, (batch, 3, height, width))))
        ov_model.reshape([batch, 3, height, width])  # a no-op for our exports; fixes dynamic ONNX inputs
        config: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.spec.precision,
                                  "PERFORMANCE_HINT": self.options.performance_hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        self._compiled = core.compile_model(ov_model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        # Outputs keep their ONNX tensor names, which the family decoders look up.
        self._outputs = list(self._compiled.outputs)
        self.output_names = [o.get_any_name() for o in self._outputs]
        self._actual = {k: str(self._compiled.get_property(k)) for k in
                        ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT")}

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        # share_inputs avoids a copy of the contiguous blob; outputs are copied (the request reuses them).
        res = self._request.infer({0: blob}, share_inputs=True, share_outputs=False)
        return {name: res[o] for name, o in zip(self.output_names, self._outputs)}

    def versions(self) -> Dict[str, str]:
        import openvino as ov
        return {"openvino": ov.get_version()}

    def settings(self) -> RowSettings:
        s = super().settings()
        a = self._actual
        if a:  # read back from the compiled model: a CPU without bf16 silently runs f32
            s.threads, s.precision = int(a["INFERENCE_NUM_THREADS"]), _short(a["INFERENCE_PRECISION_HINT"])
            s.extras.update(requested_precision=self.spec.precision, num_streams=int(a["NUM_STREAMS"]),
                            performance_hint=a["PERFORMANCE_HINT"])
        return s

    def close(self) -> None:
        self._request = None
        self._compiled = None


def _short(ov_type: str) -> str:
    """'<Type: 'float32'>' / 'f32' / 'bf16' -> 'f32' / 'bf16'."""
    text = ov_type.lower()
    for long, short in (("bfloat16", "bf16"), ("float32", "f32"), ("float16", "f16")):
        if long in text:
            return short
    return text
