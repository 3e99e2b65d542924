"""ONNX Runtime backend: the model's own .onnx, or our export of its graph (cached per input shape).

CPUExecutionProvider here; CUDAExecutionProvider when the device is cuda and this onnxruntime
build has it (the GPU machine's onnxruntime is CPU-only: that is a clear "unavailable").
`session.run` returns host arrays, so inference is complete when it returns.

Variant `int8`: static quantisation of that ONNX (`onnxruntime.quantization.quantize_static`, QDQ
format: QuantizeLinear/DequantizeLinear pairs that ORT's CPU provider fuses into integer kernels),
after `quant_pre_process` (shape inference and ORT's basic graph optimisations, which fold batch
norms into the convolutions first, as its documentation recommends). Activations uint8
(asymmetric), weights int8 per output channel, no reduced range (the guidance for CPUs with VNNI;
the quantised model is the same on every machine, so rows on different CPUs compare one model),
ranges by MinMax over the calibration images (backends/calibration.py says which images and how
they are preprocessed). The quantised model is cached by content (source model, input shape,
calibration images, method, versions); its first build is in the row's load time, a reuse says
`cached: true`.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from backends.base import Backend, choices, import_failure
from backends.calibration import refuse_unless_int8
from retinabench.errors import BackendUnavailable, BenchError
from retinabench.records import RowSettings

OPT_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


@dataclass(frozen=True)
class OnnxRuntimeVariant:
    precision: str          # f32: the model as it is; int8: statically quantised (QDQ)


VARIANTS = {"default": OnnxRuntimeVariant("f32"), "int8": OnnxRuntimeVariant("int8")}

# How the int8 variant quantises (recorded in the row's settings and in the cache key).
INT8_METHOD: Dict[str, Any] = {
    "quantizer": "onnxruntime.quantization.quantize_static", "pre_process": "quant_pre_process",
    "quant_format": "QDQ", "activation_type": "QUInt8", "weight_type": "QInt8", "per_channel": True,
    "reduce_range": False, "calibrate_method": "MinMax",
    # Softmax stays float: its output is the face score, and uint8 probabilities (steps of 1/255 over
    # the calibrated range) no longer sum to 1, which the decoders check.
    "excluded_op_types": ["Softmax"],
}


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    graph_optimization_level: str = choices(*OPT_LEVELS, default="ORT_ENABLE_ALL")
    # int8 only: the calibration images, "dlib:train" (the default) or a folder (backends/calibration.py)
    calibration: Optional[str] = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    runtime_module = "onnxruntime"
    variants = VARIANTS
    Options = OnnxRuntimeOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        refuse_unless_int8(self)
        self._int8: Dict[str, Any] = {}   # what the int8 variant recorded: method, calibration, cache
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
        if self.spec.precision == "int8":
            # Our export (opset 13, static shapes, plain ops) also for ONNX sources: per-channel QDQ needs
            # opset >= 13 (DequantizeLinear's axis), and the default model's own file is opset 11 with
            # shape subgraphs. The export is the same network: tests/test_onnx_export.py holds it to parity.
            path = self._quantized(model, onnx_for(model, (batch, 3, height, width), reexport=True),
                                   batch, height, width)
        else:
            path = onnx_for(model, (batch, 3, height, width))
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self._providers = self._session.get_providers()
        self._input = self._session.get_inputs()[0].name
        self.output_names = [o.name for o in self._session.get_outputs()]

    def _quantized(self, model, source: Path, batch: int, height: int, width: int) -> Path:
        """The cached QDQ model of `source` for this input shape and calibration set (built once)."""
        import onnx
        import onnxruntime as ort
        from backends.calibration import (CALIBRATION_VERSION, cached_quantized, calibration_blobs,
                                          preprocess_record, resolve_calibration)
        from retinabench.graph.cache import file_sha256

        cal = resolve_calibration(self.options.calibration)
        prep = preprocess_record(model.family, height, width)
        key = {"source_sha256": file_sha256(Path(source)), "input_shape": [batch, 3, height, width],
               "preprocess": prep, "calibration_sha256": list(cal.sha256), "method": INT8_METHOD,
               "onnxruntime": ort.__version__, "onnx": onnx.__version__, "calibration_version": CALIBRATION_VERSION}

        def build(d: Path) -> None:  # imported only here: a cached load needs none of it
            why = import_failure("onnxruntime.quantization")
            if why:  # its [quantization] extra (ml_dtypes) is missing
                raise BackendUnavailable(f"onnxruntime int8 needs onnxruntime.quantization: {why}")
            _quantize_static(Path(source), d / "model.onnx", calibration_blobs(cal, model.family, batch, height, width))

        entry, was_cached, timings = cached_quantized("onnxruntime-int8", key, build)
        self._int8 = {"quantization": "static QDQ (onnxruntime)", **INT8_METHOD,
                      "quantized_from": f"{source} (our ONNX export, opset 13, static shapes)", **cal.describe(),
                      "calibration_preprocess": prep, "cached": was_cached, **timings,
                      "quantized_model": str(entry / "model.onnx")}
        return entry / "model.onnx"

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        outs = self._session.run(self.output_names, {self._input: blob})
        return dict(zip(self.output_names, outs))

    def versions(self) -> Dict[str, str]:
        import onnxruntime as ort
        return {"onnxruntime": ort.__version__}

    def settings(self) -> RowSettings:
        s = super().settings()
        s.threads, s.precision = self.intra_threads, self.spec.precision
        s.extras.update(intra_op_num_threads=self.intra_threads, graph_optimization_level=self._opt_level,
                        providers=list(self._providers))
        s.extras.update(self._int8)
        return s

    def close(self) -> None:
        self._session = None


def _quantize_static(source: Path, out: Path, blobs: List[np.ndarray]) -> None:
    """INT8_METHOD applied to `source`, calibrated on `blobs` (the row's input shape), written to `out`."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = INT8_METHOD
    with tempfile.TemporaryDirectory(prefix="retinabench-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        graph = onnx.load(str(prepared)).graph
        weights = {t.name for t in graph.initializer}
        input_name = next(i.name for i in graph.input if i.name not in weights)
        excluded = [n.name for n in graph.node if n.op_type in m["excluded_op_types"]]
        if not all(excluded):
            raise BenchError(f"{source}: a {'/'.join(m['excluded_op_types'])} node without a name cannot be "
                             f"kept out of quantisation")

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(blobs)

            def get_next(self) -> Optional[Dict[str, np.ndarray]]:
                blob = next(self._it, None)
                return None if blob is None else {input_name: blob}

        quantize_static(str(prepared), str(out), Reader(), quant_format=getattr(QuantFormat, m["quant_format"]),
                        activation_type=getattr(QuantType, m["activation_type"]),
                        weight_type=getattr(QuantType, m["weight_type"]), per_channel=m["per_channel"],
                        reduce_range=m["reduce_range"],
                        calibrate_method=getattr(CalibrationMethod, m["calibrate_method"]),
                        nodes_to_exclude=excluded)
