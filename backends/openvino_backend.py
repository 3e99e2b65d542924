"""OpenVINO backend (CPU): compiles the model's ONNX (or our cached export) for a fixed input shape.

OpenVINO picks bf16 by itself on CPUs with bf16 units (AMX/AVX512-BF16), which costs accuracy
(FACTS.md). So the default variant asks for f32 (the parity row) and `bf16` is its own row; the
precision the compiled model actually uses is read back from it and recorded, because a CPU
without bf16 silently runs the bf16 request in f32.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from backends.base import Backend
from retinabench.errors import BackendUnavailable

PRECISIONS = {"default": "f32", "bf16": "bf16"}


class OpenVINOBackend(Backend):
    name = "openvino"
    runtime_module = "openvino"
    variants = tuple(PRECISIONS)


    def load(self, model, batch: int, height: int, width: int) -> None:
        import openvino as ov
        from retinabench.graph.onnx_export import onnx_for

        if self.device != "cpu":
            raise BackendUnavailable(f"openvino backend runs on the CPU only (asked for {self.device!r})")
        core = ov.Core()
        ov_model = core.read_model(str(onnx_for(model, (batch, 3, height, width))))
        ov_model.reshape([batch, 3, height, width])  # a no-op for our exports; fixes dynamic ONNX inputs
        config: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.variant],
                                  "PERFORMANCE_HINT": self.options.get("performance_hint", "LATENCY")}
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

    def settings(self) -> Dict[str, Any]:
        s = super().settings()
        if hasattr(self, "_actual"):
            a = self._actual
            s.update(threads=int(a["INFERENCE_NUM_THREADS"]), precision=_short(a["INFERENCE_PRECISION_HINT"]),
                     requested_precision=PRECISIONS[self.variant], num_streams=int(a["NUM_STREAMS"]),
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
