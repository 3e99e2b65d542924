"""OpenVINO backend (CPU): compiles the model's ONNX (or our cached export) for a fixed input shape.

OpenVINO picks bf16 by itself on CPUs with bf16 units (AMX/AVX512-BF16), which costs accuracy
(FACTS.md). So the default variant asks for f32 (the parity row) and `bf16` is its own row; the
precision the compiled model actually uses is read back from it and recorded, because a CPU
without bf16 silently runs the bf16 request in f32.

Variant `int8`: post-training quantisation through NNCF (`nncf.quantize`, PyPI `nncf`): the
model is reshaped to the row's input first, NNCF inserts FakeQuantize operations calibrated on the
calibration images (backends/calibration.py: dlib's training split by default, preprocessed by
the family at the row's input size), and OpenVINO's CPU plugin runs them as int8 kernels. The
float parts run in f32 (INFERENCE_PRECISION_HINT f32), so the row differs from the parity row by
the quantisation only, not by bf16 as well. The quantised model is saved (weights not compressed
to f16) into the converted-model cache, keyed by the source model, input shape, calibration
images, method and the openvino and nncf versions; the first build is in the row's load time, a
reuse says `cached: true`. NNCF runs in a child process (importing it imports torch, which must
not stay in the row's process). Without a usable nncf the row is unavailable, with the reason.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from backends.base import Backend, choices
from backends.calibration import refuse_unless_int8
from retinabench.errors import BackendUnavailable, BenchError
from retinabench.records import RowSettings


@dataclass(frozen=True)
class OpenVINOVariant:
    precision: str          # the row's precision: f32 / bf16 (INFERENCE_PRECISION_HINT), int8 (NNCF)
    hint: str = ""          # INFERENCE_PRECISION_HINT asked for ("": the precision itself)

    @property
    def inference_precision(self) -> str:
        return self.hint or self.precision


VARIANTS = {"default": OpenVINOVariant("f32"), "bf16": OpenVINOVariant("bf16"),
            "int8": OpenVINOVariant("int8", hint="f32")}

# How the int8 variant quantises (recorded in the row's settings and in the cache key). PERFORMANCE:
# symmetric int8 weights (per channel) and activations (per tensor), NNCF's default for CNNs.
INT8_METHOD: Dict[str, Any] = {
    "quantizer": "nncf.quantize", "preset": "PERFORMANCE", "target_device": "CPU",
    "fast_bias_correction": True, "model_type": None, "weights_saved_as": "f32 (compress_to_fp16=False)",
}


# Why the int8 row is unavailable in the pinned environment (checked 2026-12-04 with pip --dry-run
# and an import): NNCF declares numpy >= 1.24 from 2.15 on (3.4.0: >= 1.24, < 2.5), and MXNet pins
# numpy to 1.23.5; the last release that accepts numpy 1.23, 2.14.1, imports openvino.runtime,
# which openvino 2026 removed, so its nncf.quantize rejects an openvino 2026.4 model.
NNCF_WHY_NOT = ("no NNCF release installs beside the pinned packages and runs: nncf >= 2.15 requires "
                "numpy >= 1.24 (the venv pins numpy==1.23.5 for MXNet), and nncf <= 2.14.1 needs "
                "openvino.runtime, removed in openvino 2026")


@dataclass(frozen=True)
class OpenVINOOptions:
    performance_hint: str = choices("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT", default="LATENCY")
    num_streams: int = 0        # NUM_STREAMS (the threads split into streams); 0: what the hint picks
    # int8 only: the calibration images, "dlib:train" (the default) or a folder (backends/calibration.py)
    calibration: Optional[str] = None


class OpenVINOBackend(Backend):
    name = "openvino"
    runtime_module = "openvino"
    variants = VARIANTS
    Options = OpenVINOOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        refuse_unless_int8(self)
        self._int8: Dict[str, Any] = {}   # what the int8 variant recorded: method, calibration, cache
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
        source = onnx_for(model, (batch, 3, height, width))
        if self.spec.precision == "int8":
            ov_model = core.read_model(str(self._quantized(core, model, source, batch, height, width)))
        else:
            ov_model = core.read_model(str(source))
            ov_model.reshape([batch, 3, height, width])  # a no-op for our exports; fixes dynamic ONNX inputs
        config: Dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.spec.inference_precision,
                                  "PERFORMANCE_HINT": self.options.performance_hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.options.num_streams:
            config["NUM_STREAMS"] = int(self.options.num_streams)
        self._compiled = core.compile_model(ov_model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        # Outputs keep their ONNX tensor names, which the family decoders look up.
        self._outputs = list(self._compiled.outputs)
        self.output_names = [o.get_any_name() for o in self._outputs]
        self._actual = {k: str(self._compiled.get_property(k)) for k in
                        ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT")}

    def _quantized(self, core: Any, model: Any, source: Path, batch: int, height: int, width: int) -> Path:
        """The cached NNCF-quantised IR (model.xml) of `source` at this input shape and calibration set.

        NNCF runs in a child process of this interpreter: `import nncf` also imports torch (about 1.4 s
        and its memory here), which must not stay in the row's process, and a cached load never
        imports it at all (its version is read from the package metadata).
        """
        import openvino as ov
        from backends.calibration import (CALIBRATION_VERSION, cached_quantized, preprocess_record,
                                          resolve_calibration)
        from retinabench.graph.cache import file_sha256

        version = nncf_version()
        if version is None:
            raise BackendUnavailable(f"openvino int8 needs NNCF, which is not installed: {NNCF_WHY_NOT}")
        if _version_tuple(version) < (2, 17):
            raise BackendUnavailable(f"nncf {version} imports openvino.runtime, which openvino {ov.get_version()} "
                                     f"no longer has: the int8 row needs nncf >= 2.17")
        cal = resolve_calibration(self.options.calibration)
        prep = preprocess_record(model.family, height, width)
        method = {**INT8_METHOD, "subset_size": -(-len(cal.paths) // batch)}  # every calibration blob
        key = {"source_sha256": file_sha256(Path(source)), "input_shape": [batch, 3, height, width],
               "preprocess": prep, "calibration_sha256": list(cal.sha256), "method": method,
               "openvino": ov.get_version(), "nncf": version, "calibration_version": CALIBRATION_VERSION}
        job = {"source": str(source), "shape": [batch, 3, height, width], "family": model.family,
               "calibration": [str(p) for p in cal.paths], "calibration_sha256": list(cal.sha256), "method": method}

        entry, was_cached, timings = cached_quantized("openvino-int8", key, lambda d: _run_nncf(job, d / "model.xml"))
        self._int8 = {"quantization": "post-training (NNCF)", "nncf": version, **method, **cal.describe(),
                      "calibration_preprocess": prep, "cached": was_cached, **timings,
                      "quantized_model": str(entry / "model.xml")}
        return entry / "model.xml"

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
            s.extras.update(requested_precision=self.spec.inference_precision, num_streams=int(a["NUM_STREAMS"]),
                            performance_hint=a["PERFORMANCE_HINT"])
            if self.spec.precision == "int8":  # int8 kernels; the hint read back is the float parts'
                s.precision = "int8"
                s.extras["float_precision"] = _short(a["INFERENCE_PRECISION_HINT"])
        s.extras.update(self._int8)
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


# ---- NNCF, in a child process
_UNAVAILABLE_EXIT = 3


def nncf_version() -> Optional[str]:
    """The installed nncf's version from its metadata (importing it would import torch), or None."""
    import importlib.metadata
    import importlib.util
    if importlib.util.find_spec("nncf") is None:
        return None
    try:
        return importlib.metadata.version("nncf")
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_tuple(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _run_nncf(job: Dict[str, Any], out: Path) -> None:
    """Quantise job["source"] with NNCF in a child process, writing the IR to `out` (model.xml + .bin)."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = "import sys; from backends.openvino_backend import nncf_quantize_main; sys.exit(nncf_quantize_main())"
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps({**job, "out": str(out)}), text=True,
                          capture_output=True, env=env, cwd=root)
    if proc.returncode == 0 and out.is_file():
        return
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    if proc.returncode == _UNAVAILABLE_EXIT:
        raise BackendUnavailable(last)
    raise BenchError(f"NNCF quantisation of {job['source']} failed: {last}")


def nncf_quantize_main() -> int:
    """The child: read the job (JSON on stdin), quantise, save the IR with its weights in f32."""
    job = json.loads(sys.stdin.read())
    import nncf
    import openvino as ov

    from backends.calibration import CalibrationSet, calibration_blobs

    method, shape = job["method"], [int(d) for d in job["shape"]]
    cal = CalibrationSet("job", "job", tuple(Path(p) for p in job["calibration"]), tuple(job["calibration_sha256"]))
    blobs = calibration_blobs(cal, job["family"], shape[0], shape[2], shape[3])
    core = ov.Core()
    model = core.read_model(job["source"])
    model.reshape(shape)
    try:
        quantized = nncf.quantize(model, nncf.Dataset(blobs), preset=getattr(nncf.QuantizationPreset, method["preset"]),
                                  target_device=getattr(nncf.TargetDevice, method["target_device"]),
                                  subset_size=len(blobs), fast_bias_correction=method["fast_bias_correction"],
                                  model_type=method["model_type"])
    except nncf.UnsupportedBackendError as e:
        print(f"nncf {nncf.__version__} cannot quantise openvino {ov.get_version()} models "
              f"({str(e).splitlines()[0]})", file=sys.stderr)
        return _UNAVAILABLE_EXIT
    ov.save_model(quantized, job["out"], compress_to_fp16=False)
    return 0
