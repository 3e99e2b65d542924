"""The Backend interface (after Polygraphy's runners), typed options, and the registry of runtimes.

A backend only runs the network: preprocessing and decoding belong to the model family and are
shared by every backend. Frameworks are imported lazily inside the backend's module, so a missing
runtime is a row with status `unavailable: <reason>`, never an ImportError at start-up.

Contract for `infer`: it returns only when the outputs exist as host numpy arrays. Asynchronous
runtimes (MXNet, CUDA) must synchronise before returning; that wait is part of inference. A
backend whose variant runs the family's device stages (GPU pre/post) may instead return outputs
complete on the device (see retinabench.model.device.pipeline.DeviceStages).

Each backend declares:
- `variants`: a table of typed records, one per named variant (a row of the results table);
- `Options`: a dataclass of the options a scenario may set (`options:` of a backend entry): an
  unknown or mistyped key is an error naming the backend and the key before any row runs;
- `interpreter()`: the Python its worker runs under (None: the harness's own).
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

import numpy as np

from retinabench.errors import BackendUnavailable, BenchError, ConfigError
from retinabench.records import RowSettings


def import_failure(module: str) -> str:
    """'' when `module` imports, else why not: any exception counts (numpy >= 1.24 breaks MXNet's import)."""
    try:
        importlib.import_module(module)
    except Exception as e:
        return f"{module} does not import ({type(e).__name__}: {e})"
    return ""


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A backend that takes no options."""


@dataclasses.dataclass(frozen=True)
class DefaultVariant:
    """The variant record of a backend with one way to run."""


def choices(*values: str, default: Any = None) -> Any:
    """A dataclass field that accepts one of `values` (listed in the error when it does not)."""
    return dataclasses.field(default=default, metadata={"choices": values})


def parse_options(options_cls: Type[Any], raw: Optional[Mapping[str, Any]], where: str,
                  from_strings: bool = False) -> Any:
    """`raw` validated into `options_cls`: unknown keys, wrong types and bad choices are one line.

    `from_strings` accepts text for every type ('true', '256'), as `bench.py detect --option K=V` gives it.
    """
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    hints = typing.get_type_hints(options_cls)
    known = ", ".join(sorted(fields)) or "none: it takes no options"
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown option (known: {known})")
        value = _coerce(hints[key], value, f"{where}.{key}", from_strings)
        allowed = fields[key].metadata.get("choices")
        if allowed and value is not None and value not in allowed:
            raise ConfigError(f"{where}.{key}: {value!r} is not one of {', '.join(allowed)}")
        values[key] = value
    return options_cls(**values)


def _coerce(kind: Any, value: Any, where: str, from_strings: bool) -> Any:
    args = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Union and type(None) in args:  # Optional[X]
        if value is None or (from_strings and value in ("", "none", "None")):
            return None
        (kind,) = [a for a in args if a is not type(None)]
    if from_strings and isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool and text in ("true", "false", "1", "0", "yes", "no"):
            return text in ("true", "1", "yes")
        try:
            return kind(value) if kind in (int, float) else value
        except ValueError:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, kind))
    if not ok:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if kind is float else value


class Backend(ABC):
    name: ClassVar[str] = ""
    # The framework that `available()` imports to check it is there ("" for none).
    runtime_module: ClassVar[str] = ""
    # Named variants, each a typed record saying how the variant runs; "default" is the parity row.
    variants: ClassVar[Mapping[str, Any]] = {"default": DefaultVariant()}
    Options: ClassVar[Type[Any]] = NoOptions
    # True where the variant runs the family's stages on the device (retinabench.model.device.pipeline)
    stages_on_device: bool = False

    def __init__(self, variant: str = "default", threads: Optional[int] = None, device: str = "cpu",
                 options: Optional[Mapping[str, Any]] = None, max_batch: Optional[int] = None):
        if variant not in self.variants:
            raise BenchError(f"backend {self.name!r}: unknown variant {variant!r} (known: {', '.join(self.variants)})")
        self.variant = variant
        self.spec = self.variants[variant]
        self.threads = threads
        self.device = device
        self.options = (options if isinstance(options, self.Options)
                        else self.parse_options(options, f"backend {self.name!r} options"))
        self.max_batch = max_batch        # the engine's max batch (TensorRT builds its profile up to it)
        self.output_names: List[str] = []

    @classmethod
    def parse_options(cls, raw: Optional[Mapping[str, Any]], where: str, from_strings: bool = False) -> Any:
        return parse_options(cls.Options, raw, where, from_strings)

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        """(True, '') when the runtime imports, else (False, reason). Device checks happen in load()."""
        reason = import_failure(cls.runtime_module) if cls.runtime_module else ""
        return not reason, reason

    @classmethod
    def interpreter(cls) -> Optional[str]:
        """The Python this backend's worker runs under; None: the harness's own interpreter."""
        return None

    @abstractmethod
    def load(self, model: Any, batch: int, height: int, width: int) -> None:
        """Build or load the network for a fixed NCHW input (model: retinabench.model.source.ModelSource)."""

    @abstractmethod
    def infer(self, blob: Any) -> Dict[str, Any]:
        """Run one batch; return every output by name, complete, in host memory (or see DeviceStages)."""

    def versions(self) -> Dict[str, str]:
        return {}

    # Device-side pipeline stages (GPU preprocessing, GPU decode + NMS), offered as named variants.
    # None means the family's shared numpy stage is used. A device preprocess returns whatever
    # `infer` accepts; with a device postprocess, `infer` may return synchronised device outputs,
    # and `host_outputs` converts them for the accuracy comparison (outside the measured loop).
    def device_preprocess(self, family: Any, mode: str, size: Optional[Tuple[int, int]]) -> Any:
        return None

    def device_postprocess(self, family: Any, output_names: List[str], threshold: float) -> Any:
        return None

    def host_outputs(self, outputs: Dict[str, Any]) -> Dict[str, np.ndarray]:
        return outputs

    def metrics(self) -> Dict[str, Any]:
        """Anything measured beside the stages, e.g. per-loop CUDA-event GPU times (`gpu_time_ms`)."""
        return {}

    def settings(self) -> RowSettings:
        """What a timing depends on besides versions: threads, precision, device. Recorded per row."""
        return RowSettings(device=self.device, variant=self.variant, threads=self.threads)

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
