"""The Backend interface (after Polygraphy's runners) and the registry of runtimes.

A backend only runs the network: preprocessing and decoding belong to the model family and are
shared by every backend. Frameworks are imported lazily inside the backend's module, so a missing
runtime is a row with status `unavailable: <reason>`, never an ImportError at start-up.

Contract for `infer`: it returns only when the outputs exist as host numpy arrays. Asynchronous
runtimes (MXNet, CUDA) must synchronise before returning; that wait is part of inference.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Tuple, Type

import numpy as np

from retinabench.errors import BackendUnavailable, BenchError


def import_failure(module: str) -> str:
    """'' when `module` imports, else why not: any exception counts (numpy >= 1.24 breaks MXNet's import)."""
    try:
        importlib.import_module(module)
    except Exception as e:
        return f"{module} does not import ({type(e).__name__}: {e})"
    return ""


class Backend(ABC):
    name: str = ""
    # The framework that `available()` imports to check it is there ("" for none).
    runtime_module: str = ""
    # Variants are named pipeline options reported as their own rows (precision, CUDA graph, ...).
    variants: Tuple[str, ...] = ("default",)

    def __init__(self, variant: str = "default", threads: Optional[int] = None, device: str = "cpu",
                 options: Optional[Dict[str, Any]] = None):
        if variant not in self.variants:
            raise BenchError(f"backend {self.name!r}: unknown variant {variant!r} (known: {', '.join(self.variants)})")
        self.variant = variant
        self.threads = threads
        self.device = device
        self.options = dict(options or {})
        self.output_names: List[str] = []

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        """(True, '') when the runtime imports, else (False, reason). Device checks happen in load()."""
        reason = import_failure(cls.runtime_module) if cls.runtime_module else ""
        return not reason, reason

    @abstractmethod
    def load(self, model, batch: int, height: int, width: int) -> None:
        """Build or load the network for a fixed NCHW input (model: retinabench.model.source.ModelSource)."""

    @abstractmethod
    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one batch; return every output by name, complete, in host memory."""

    def versions(self) -> Dict[str, str]:
        return {}

    # Device-side pipeline stages (GPU preprocessing, GPU decode + NMS), offered as named variants.
    # None means the family's shared numpy stage is used. A device preprocess returns whatever
    # `infer` accepts; with a device postprocess, `infer` may return synchronised device outputs,
    # and `host_outputs` converts them for the accuracy comparison (outside the measured loop).
    def device_preprocess(self, family, mode: str, size: Optional[Tuple[int, int]]):
        return None

    def device_postprocess(self, family, output_names: List[str], threshold: float):
        return None

    def host_outputs(self, outputs: Dict[str, Any]) -> Dict[str, np.ndarray]:
        return outputs

    def extra_metrics(self) -> Dict[str, Any]:
        """Anything measured beside the stages, e.g. per-loop CUDA-event GPU times (`gpu_time_ms`)."""
        return {}

    def settings(self) -> Dict[str, Any]:
        """What a timing depends on besides versions: threads, precision, device. Recorded per row."""
        return {"threads": self.threads, "device": self.device, "variant": self.variant}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# name -> "module:Class". Modules are imported only when that backend is asked for.
REGISTRY: Dict[str, str] = {
    "mxnet": "backends.mxnet_backend:MXNetBackend",
    "caffe": "backends.caffe_backend:CaffeBackend",
    "opencv-caffe": "backends.opencv_backend:OpenCVCaffeBackend",
    "onnxruntime": "backends.onnxruntime_backend:OnnxRuntimeBackend",
    "torch": "backends.torch_backend:TorchBackend",
    "openvino": "backends.openvino_backend:OpenVINOBackend",
    "opencv-onnx": "backends.opencv_onnx_backend:OpenCVOnnxBackend",
    "tensorrt": "backends.tensorrt_backend:TensorRTBackend",
    "empty": "backends.empty_backend:EmptyBackend",
}


def backend_class(name: str) -> Type[Backend]:
    """Resolve a registered name; an unknown name is a BenchError, a missing framework is not."""
    if name not in REGISTRY:
        raise BenchError(f"unknown backend {name!r} (known: {', '.join(sorted(REGISTRY))})")
    module_name, cls_name = REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise BackendUnavailable(f"backend {name!r} is not implemented in this checkout") from None
        raise
    return getattr(module, cls_name)


def create_backend(name: str, **kwargs: Any) -> Backend:
    cls = backend_class(name)
    ok, reason = cls.available()
    if not ok:
        raise BackendUnavailable(reason)
    return cls(**kwargs)
