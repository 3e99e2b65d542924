"""TensorRT 10 backend: ONNX parser -> engine (cached) -> execute_async_v3 on a CUDA stream.

Engines: one optimisation profile, read off the ONNX input (`choose_profile`). A free batch gets
min 1, opt = option `opt_batch` (default: the row's batch), max = the row's max batch (the scenario's
`max_batch`, default the batch): by default one engine per row, tuned for the batch it measures,
where the original built one engine per max batch and ran every batch on it (set `opt_batch` to the
max batch for that; rows with the same profile then share the cached engine). A fixed ONNX batch
gets a fixed profile, and a row with another batch fails saying so. The ONNX comes from our
exporter (free batch) unless the model is an ONNX file, which is used as it is. Engines are cached
by ONNX hash, profile, precision, workspace, TensorRT version, GPU name and BUILDER_VERSION
(retinabench.graph.cache), so a second row or run deserialises instead of building.

Variants: `default` (FP32, TF32 cleared: the parity row), `fp16` (BuilderFlag.FP16; I/O stays
float32), `fp16-pipe` (`fp16` inside the family's device stages: the same pipeline as torch's
`pipe`, through retinabench.model.device.pipeline.DeviceStages, with the same settings and metrics).

Versions: TensorRT 10 only (`version_gate`, `available()` gives the reason): fp16 is built with
BuilderFlag.FP16, deprecated in 10.12 (superseded by strong typing) and removed in TensorRT 11,
where fp16 needs an fp16 ONNX built as a strongly typed network, which this backend does not do.

Log: a trt.ILogger subclass (as Polygraphy's CustomTrtLogger) writes TensorRT's WARNING and worse
to stderr, which the harness keeps with the row (stdout is dropped), and keeps the last errors:
every build, deserialisation, context and execution error quotes them, on one line (`TrtLog`).

Device: `load()` first makes the row's CUDA device current: TensorRT's builder, runtime and
context use the current device, as the buffers and the stream do.

Buffers and streams: device buffers are torch tensors (data_ptr -> set_tensor_address) of each I/O
tensor's own type (`torch_dtype`: whatever trt.nptype maps, plus BF16 and FP8). The engine runs on
its own stream, after the caller's current stream (where device preprocessing wrote the input) by a
stream wait; the caller's stream waits for the engine's in turn, so postprocessing there reads
finished outputs. `infer` still ends with a synchronisation: the inference stage ends when its
outputs exist. CUDA events around execute_async_v3 give `gpu_time_ms` (the network only).

TensorRT is not obtainable on this project's machines (FACTS.md): `available()` says so and the
runtime tests skip; CI type-checks this file against tensorrt-stubs (tests/test_tensorrt_types.py)
and tests the parts that need no TensorRT (log, version gate, profile, dtype map).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from backends.base import Backend
from retinabench.errors import BackendUnavailable, BenchError, ModelError
from retinabench.model.device.pipeline import NETWORK_TIMER, DeviceStageOptions, DeviceStages
from retinabench.records import RowSettings

# Bump when the build settings below change: part of the engine cache key.
BUILDER_VERSION = "retinabench-trt-2"
DEFAULT_WORKSPACE_MIB = 1024
SUPPORTED_MAJORS = (10,)


@dataclass(frozen=True)
class TensorRTVariant:
    precision: str = "fp32"        # fp32 (TF32 cleared: the parity row) | fp16 (BuilderFlag.FP16)
    device_stages: bool = False    # the family's GPU preprocessing and decode + NMS around the engine


VARIANTS = {
    "default": TensorRTVariant(),
    "fp16": TensorRTVariant("fp16"),
    "fp16-pipe": TensorRTVariant("fp16", device_stages=True),
}


@dataclass(frozen=True)
class TensorRTOptions(DeviceStageOptions):
    workspace_mib: int = DEFAULT_WORKSPACE_MIB   # the builder's workspace memory pool
    opt_batch: Optional[int] = None              # the profile's opt batch (None: the row's batch)


# ---------------------------------------------------------------------------------------------
# The parts that need no TensorRT (tested in CI): version gate, log, profile, dtype map
# ---------------------------------------------------------------------------------------------

def version_gate(version: str) -> Tuple[bool, str]:
    """(True, '') for a TensorRT version this backend is written for, else (False, why not)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return False, f"tensorrt {version!r}: cannot read its major version"
    if major in SUPPORTED_MAJORS:
        return True, ""
    if major > max(SUPPORTED_MAJORS):
        return False, (f"tensorrt {version} is not supported: this backend is written for TensorRT 10; its fp16 "
                       "variants set BuilderFlag.FP16 (deprecated in 10.12, removed in 11, where fp16 needs a "
                       "strongly typed network from an fp16 ONNX, not implemented here)")
    return False, (f"tensorrt {version} is not supported: this backend is written for the TensorRT 10 API "
                   "(named I/O tensors, set_input_shape, execute_async_v3, explicit batch by default)")


SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")  # TensorRT's order, most severe first
_TAGS = {"INTERNAL_ERROR": "F", "ERROR": "E", "WARNING": "W", "INFO": "I", "VERBOSE": "V"}


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


class TrtLog:
    """TensorRT's log: messages at `min_severity` or worse go to stderr; the last errors are kept.

    Thread-safe (TensorRT may log from its own threads). `mark()` before an operation and
    `failure(what, mark)` after it give one line: what failed, then the errors logged since.
    """

    def __init__(self, min_severity: str = "WARNING", keep: int = 16, stream: Any = None):
        if min_severity not in SEVERITIES:
            raise ValueError(f"severity {min_severity!r}: expected one of {', '.join(SEVERITIES)}")
        self.min_rank = SEVERITIES.index(min_severity)
        self._errors: Deque[Tuple[int, str]] = deque(maxlen=keep)  # (error number, message)
        self._count = 0
        self._stream = stream  # None: sys.stderr at the time of writing
        self._lock = threading.Lock()

    def write(self, severity: str, message: str) -> None:
        rank = SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)
        text = _one_line(message)
        with self._lock:
            if rank <= SEVERITIES.index("ERROR"):
                self._count += 1
                self._errors.append((self._count, text))
            if rank <= self.min_rank:
                out = self._stream if self._stream is not None else sys.stderr
                try:
                    out.write(f"[TensorRT] [{_TAGS.get(severity, '?')}] {text}\n")
                    out.flush()
                except Exception:  # a closed stderr must not break TensorRT's call
                    pass

    def mark(self) -> int:
        """The number of errors logged so far: pass it to `errors`/`failure` to see only later ones."""
        with self._lock:
            return self._count

    def errors(self, since: int = 0) -> List[str]:
        with self._lock:
            return [m for n, m in self._errors if n > since]

    def describe(self, since: int = 0, last: int = 3, width: int = 150) -> str:
        """The last `last` errors since the mark, each cut to `width` (a row's reason keeps 500 characters)."""
        with self._lock:
            total = self._count - since
            errs = [m for n, m in self._errors if n > since]
        if total <= 0:
            return "TensorRT logged no error"
        shown = [e if len(e) <= width else e[:width - 3] + "..." for e in errs[-last:]]
        earlier = total - len(shown)
        return "TensorRT log: " + " | ".join(shown) + (f" (and {earlier} earlier, on stderr)" if earlier else "")

    def failure(self, what: str, since: int = 0) -> str:
        """One line for an error: 'tensorrt: <what> (TensorRT log: <last errors since the mark>)'."""
        return f"tensorrt: {_one_line(what)} ({self.describe(since)})"


def make_trt_logger(log: TrtLog) -> Any:
    """A trt.ILogger that hands every message to `log` (TensorRT keeps it for the engine's lifetime)."""
    import tensorrt as trt

    class StderrLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 needs the base initialised explicitly

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            try:
                log.write(severity.name, msg)
            except KeyboardInterrupt:  # log() is noexcept in C++: turn Ctrl-C into a signal
                os.kill(os.getpid(), signal.SIGTERM)
            except Exception:
                pass

    return StderrLogger()


Shape4 = Tuple[int, int, int, int]


@dataclass(frozen=True)
class Profile:
    """One optimisation profile of the image input: min, opt and max NCHW shapes."""

    min: Shape4
    opt: Shape4
    max: Shape4
    fixed_batch: bool = False   # the ONNX input's batch is fixed: min = opt = max

    def to_json(self) -> Dict[str, Any]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max), "fixed_batch": self.fixed_batch}


def choose_profile(input_shape: Sequence[int], batch: int, height: int, width: int, max_batch: int,
                   opt_batch: Optional[int] = None) -> Profile:
    """The profile for a network input of `input_shape` (-1: a free dimension) and this row.

    A free batch spans 1..max_batch with opt = opt_batch (default: the row's batch); a fixed batch is
    a fixed profile and must be the row's batch. Fixed channels, height or width must match the row.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 4:
        raise ModelError(f"tensorrt: the network's input has shape {list(shape)}; expected NCHW (4 dimensions)")
    n, c, h, w = shape
    for what, dim, want in (("channels", c, 3), ("height", h, height), ("width", w, width)):
        if dim not in (-1, want):
            raise ModelError(f"tensorrt: the network's input has a fixed {what} of {dim}; this row needs {want}")
    if n > 0:
        if n != batch:
            raise ModelError(f"tensorrt: the ONNX input has a fixed batch of {n} and this row's batch is {batch}: "
                             f"run it at batch {n}, or export the model with a free batch dimension")
        fixed: Shape4 = (n, 3, height, width)
        return Profile(fixed, fixed, fixed, fixed_batch=True)
    if batch > max_batch:
        raise BenchError(f"tensorrt: max_batch={max_batch} is below the batch {batch}")
    opt = batch if opt_batch is None else int(opt_batch)
    if not 1 <= opt <= max_batch:
        raise BenchError(f"tensorrt: opt_batch={opt} is outside the profile's batches 1..{max_batch} (max_batch)")
    return Profile((1, 3, height, width), (opt, 3, height, width), (max_batch, 3, height, width))


def check_profile(input_shape: Sequence[int], profile: Profile) -> None:
    """TensorRT's rule for IOptimizationProfile.set_shape: a fixed dimension has min = opt = max = it."""
    for i, dim in enumerate(int(d) for d in input_shape):
        if dim >= 0 and not profile.min[i] == profile.opt[i] == profile.max[i] == dim:
            raise ModelError(f"tensorrt: the parsed network's input {list(input_shape)} does not fit the profile "
                             f"{profile.to_json()} (dimension {i})")


def onnx_inputs(path: Path) -> List[Tuple[str, Tuple[int, ...]]]:
    """(name, shape) of each graph input that is not an initializer; -1 for a free dimension."""
    import onnx

    model: Any = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    out = []
    for v in model.graph.input:
        if v.name in initializers:
            continue
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for d in v.type.tensor_type.shape.dim)
        out.append((str(v.name), dims))
    return out


# TensorRT types numpy lacks (trt.nptype raises TypeError for them) but torch has, bit for bit.
NUMPYLESS_TYPES = {"BF16": "bfloat16", "FP8": "float8_e4m3fn"}


def torch_dtype(trt_type: Any, nptype: Callable[[Any], Any]) -> Any:
    """The torch dtype of a buffer for a TensorRT I/O type: through trt.nptype, else NUMPYLESS_TYPES."""
    import torch

    name = str(getattr(trt_type, "name", trt_type))
    try:
        np_type = np.dtype(nptype(trt_type))
    except TypeError:
        alias = NUMPYLESS_TYPES.get(name)
        if alias is None or not hasattr(torch, alias):
            raise ModelError(f"tensorrt I/O type {name} has no buffer type here (neither numpy nor torch has it)") from None
        return getattr(torch, alias)
    return torch.from_numpy(np.empty(0, np_type)).dtype


def host_dtype(device_dtype: Any) -> Any:
    """Host copies of floating outputs are float32 (numpy has no bfloat16/fp8; the decoders read float32)."""
    import torch
    return torch.float32 if device_dtype.is_floating_point else device_dtype


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------

class TensorRTBackend(DeviceStages, Backend):
    name = "tensorrt"
    variants = VARIANTS
    Options = TensorRTOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        spec: TensorRTVariant = self.spec
        self.precision = spec.precision
        self.workspace = int(self.options.workspace_mib) << 20
        self.build_s: Optional[float] = None
        self.engine_cached: Optional[bool] = None
        self.profile: Optional[Profile] = None
        self.engine_profile: Optional[Dict[str, List[int]]] = None
        self.cuda_index: Optional[int] = None
        self._log = TrtLog()
        self._logger: Any = None
        self._timer: Any = None
        # The same pipeline as torch's `pipe`: the family's stages captured as CUDA graphs, uncompiled.
        self.init_device_stages(spec.device_stages, compile_by_default=False)

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        try:
            import tensorrt as trt
        except Exception as e:
            return False, f"tensorrt is not installed ({type(e).__name__}: {e})"
        if not hasattr(trt, "Builder"):  # tensorrt-stubs alone leave an importable, empty namespace package
            return False, "tensorrt is not installed (only type stubs found: no tensorrt.Builder)"
        ok, reason = version_gate(getattr(trt, "__version__", "?"))
        if not ok:
            return False, reason
        try:
            import torch
        except Exception as e:
            return False, f"the tensorrt backend needs torch for CUDA buffers ({type(e).__name__}: {e})"
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, ""

    def load(self, model: Any, batch: int, height: int, width: int) -> None:
        import tensorrt as trt
        import torch
        from retinabench.graph.cache import cached, file_sha256
        from retinabench.graph.onnx_export import onnx_for
        from retinabench.model.device.cuda import GpuTimer

        if not self.device.startswith("cuda"):
            raise BackendUnavailable(f"tensorrt runs on a CUDA device, not {self.device!r}")
        self.check_device_stages(model)
        self._dev = torch.device(self.device)
        # TensorRT's builder, runtime and context use the current device: make it this row's first.
        if self._dev.index is not None:
            torch.cuda.set_device(self._dev)
        self.cuda_index = torch.cuda.current_device()
        self.max_batch = int(self.max_batch or batch)
        onnx_path = onnx_for(model, (self.max_batch, 3, height, width), dynamic_batch=True)
        inputs = onnx_inputs(onnx_path)
        if len(inputs) != 1:
            raise ModelError(f"tensorrt: {onnx_path} has {len(inputs)} inputs {[n for n, _ in inputs]}; "
                             "expected one image input")
        self.profile = profile = choose_profile(inputs[0][1], batch, height, width, self.max_batch,
                                                self.options.opt_batch)
        key = {"model": model.sha256(), "onnx": file_sha256(onnx_path), "profile": profile.to_json(),
               "precision": self.precision, "workspace": self.workspace, "tensorrt": trt.__version__,
               "gpu": torch.cuda.get_device_name(self._dev), "builder": BUILDER_VERSION}
        self._logger = make_trt_logger(self._log)

        def build(folder: Path) -> None:
            t0 = time.perf_counter()
            (folder / "engine.plan").write_bytes(self._build(onnx_path, profile))
            self.build_s = time.perf_counter() - t0
        entry = cached("tensorrt", key, build)
        self.engine_cached = self.build_s is None
        self._open_engine(entry / "engine.plan", (batch, 3, height, width))
        self._stream = torch.cuda.Stream(self._dev)
        self._timer = GpuTimer(NETWORK_TIMER)

    def _build(self, onnx_path: Path, profile: Profile) -> bytes:
        import tensorrt as trt

        mark = self._log.mark()
        try:
            builder = trt.Builder(self._logger)
            network = builder.create_network(0)  # TensorRT 10: every network has an explicit batch
            parser = trt.OnnxParser(network, self._logger)
            if not parser.parse_from_file(str(onnx_path)):
                errors = " | ".join(_one_line(parser.get_error(i)) for i in range(parser.num_errors))
                raise ModelError(self._log.failure(f"cannot parse {onnx_path}: {errors}", mark))
            if network.num_inputs != 1:
                names = [network.get_input(i).name for i in range(network.num_inputs)]
                raise ModelError(self._log.failure(f"the parsed network has {network.num_inputs} inputs {names}; "
                                                   "expected one image input", mark))
            tensor = network.get_input(0)
            dims = tensor.shape
            check_profile([int(dims[i]) for i in range(len(dims))], profile)
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
            if self.precision == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
            else:
                config.clear_flag(trt.BuilderFlag.TF32)  # on by default; float32 parity wants it off
            opt = builder.create_optimization_profile()
            opt.set_shape(tensor.name, trt.Dims4(*profile.min), trt.Dims4(*profile.opt), trt.Dims4(*profile.max))
            index = config.add_optimization_profile(opt)
            if index < 0:
                raise BenchError(self._log.failure(f"add_optimization_profile rejected the profile {profile.to_json()} "
                                                   f"of input {tensor.name!r} (returned {index})", mark))
            plan = builder.build_serialized_network(network, config)
        except BenchError:
            raise
        except Exception as e:  # set_shape's ValueError, a CUDA error in the builder, ...
            raise BenchError(self._log.failure(f"engine build raised {type(e).__name__}: {e}", mark)) from e
        if plan is None:
            raise BenchError(self._log.failure("engine build failed (build_serialized_network returned None)", mark))
        return bytes(plan)

    def _open_engine(self, plan_path: Path, shape: Shape4) -> None:
        import tensorrt as trt
        import torch

        mark = self._log.mark()
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise BenchError(self._log.failure(f"could not deserialise the cached engine {plan_path}", mark))
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ModelError(self._log.failure(f"the engine has inputs {inputs}; expected one image input", mark))
        self._input_name = inputs[0]
        bounds = engine.get_tensor_profile_shape(self._input_name, 0)
        self.engine_profile = {k: [int(d[i]) for i in range(len(d))] for k, d in zip(("min", "opt", "max"), bounds)}
        context = engine.create_execution_context()
        if context is None:
            raise BenchError(self._log.failure("create_execution_context returned no context", mark))
        self._context = context
        if not context.set_input_shape(self._input_name, trt.Dims4(*shape)):
            raise BenchError(self._log.failure(f"set_input_shape rejected {list(shape)} for input {self._input_name!r} "
                                               f"(the engine's profile: {self.engine_profile})", mark))
        # Static device buffers: TensorRT reads and writes them in place on every call.
        self._buffers: Dict[str, Any] = {}
        for n in names:
            if engine.get_tensor_location(n) != trt.TensorLocation.DEVICE:
                raise ModelError(self._log.failure(f"tensor {n!r} lives in host memory (a shape tensor): "
                                                   "not supported here", mark))
            dims = context.get_tensor_shape(n)
            tshape = tuple(int(dims[i]) for i in range(len(dims)))
            if any(d < 0 for d in tshape):
                raise ModelError(self._log.failure(f"tensor {n!r} has no static shape ({list(tshape)}) "
                                                   f"at input {list(shape)}", mark))
            dtype = torch_dtype(engine.get_tensor_dtype(n), trt.nptype)
            self._buffers[n] = torch.empty(tshape, dtype=dtype, device=self._dev)
            if not context.set_tensor_address(n, self._buffers[n].data_ptr()):
                raise BenchError(self._log.failure(f"set_tensor_address rejected the buffer of tensor {n!r}", mark))
        self.output_names = [n for n in names if n != self._input_name]
        self._input = self.device_input = self._buffers[self._input_name]
        self._host = [torch.empty(self._buffers[n].shape, dtype=host_dtype(self._buffers[n].dtype), pin_memory=True)
                      for n in self.output_names]

    def infer(self, blob: Any) -> Dict[str, Any]:
        import torch

        mark = self._log.mark()
        caller = torch.cuda.current_stream(self._dev)
        self._stream.wait_stream(caller)  # the input was written on the caller's stream (device preprocessing)
        with torch.cuda.stream(self._stream):
            if isinstance(blob, np.ndarray):
                self._input.copy_(torch.from_numpy(blob))
            elif blob.data_ptr() != self._input.data_ptr():
                self._input.copy_(blob)
            self._timer.start()
            ok = self._context.execute_async_v3(self._stream.cuda_stream)
            self._timer.stop()
            if not ok:
                raise BenchError(self._log.failure("execute_async_v3 failed", mark))
            outs = [self._buffers[n] for n in self.output_names]
            if not self.stages_on_device:
                for h, o in zip(self._host, outs):
                    h.copy_(o, non_blocking=True)
        caller.wait_stream(self._stream)  # device postprocessing on the caller's stream reads finished outputs
        self._stream.synchronize()        # the stage ends when its outputs exist
        self._timer.read()
        if self.stages_on_device:
            return dict(zip(self.output_names, outs))
        return {n: h.numpy() for n, h in zip(self.output_names, self._host)}

    def metrics(self) -> Dict[str, Any]:
        if self._timer is None:
            return {}
        return self.gpu_metrics(self._timer)

    def versions(self) -> Dict[str, str]:
        import tensorrt as trt
        import torch
        return {"tensorrt": trt.__version__, "torch": torch.__version__, "cuda": str(torch.version.cuda),
                "gpu": torch.cuda.get_device_name(self._dev)}

    def settings(self) -> RowSettings:
        s = super().settings()
        s.precision = "f16" if self.precision == "fp16" else "f32"
        self.apply_device_stage_settings(s)  # device_stages and the stages' extras, as torch's pipe
        profile = self.profile
        s.extras.update(max_batch=self.max_batch, opt_batch=profile.opt[0] if profile else self.options.opt_batch,
                        profile=profile.to_json() if profile else None, engine_profile=self.engine_profile,
                        workspace_mib=self.workspace >> 20, tf32=self.precision != "fp32",
                        engine_build_s=None if self.build_s is None else round(self.build_s, 3),
                        engine_cached=self.engine_cached, cuda_index=self.cuda_index)
        return s

    def close(self) -> None:
        # Context before engine before runtime: TensorRT frees their device memory with the last reference.
        for attr in ("_context", "_engine", "_runtime"):
            self.__dict__.pop(attr, None)
