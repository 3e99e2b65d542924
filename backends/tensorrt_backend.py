"""TensorRT 10 backend: ONNX parser -> engine (cached) -> execute_async_v3 on a CUDA stream.

The ONNX comes from our exporter (retinabench.graph.onnx_export.onnx_for) with a free batch
dimension; the engine has one optimisation profile: min 1, opt = the row's batch, max = the
row's max batch (the scenario's `max_batch`, default the batch). Engines are cached by model hash,
ONNX hash, input shape, profile, precision, workspace, TensorRT version and GPU name
(retinabench.graph.cache), so a second row or run deserialises instead of building.

Variants: `default` (FP32, TF32 cleared: the parity row), `fp16` (BuilderFlag.FP16; I/O stays
float32), `fp16-pipe` (fp16 inside the family's device stages, the same pipeline as torch's `pipe`).
Device buffers are torch tensors (data_ptr -> set_tensor_address); the stream is a torch stream,
so CUDA events time the engine's GPU work (`gpu_time_ms`, every infer call, warmup first).

TensorRT is not obtainable on this project's machines (FACTS.md): `available()` says so and the
runtime tests skip; CI type-checks this file against tensorrt-stubs (tests/test_tensorrt_types.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from backends.base import Backend
from retinabench.errors import BackendUnavailable, BenchError, ModelError
from retinabench.model.device.pipeline import DeviceStageOptions, DeviceStages
from retinabench.records import RowSettings

# Bump when the build settings below change: part of the engine cache key.
BUILDER_VERSION = "retinabench-trt-1"
DEFAULT_WORKSPACE_MIB = 1024


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

        if not self.device.startswith("cuda"):
            raise BackendUnavailable(f"tensorrt runs on a CUDA device, not {self.device!r}")
        self.max_batch = int(self.max_batch or batch)
        if self.max_batch < batch:
            raise BenchError(f"tensorrt: max_batch={self.max_batch} is below the batch {batch}")
        self._dev = torch.device(self.device)
        onnx_path = onnx_for(model, (self.max_batch, 3, height, width), dynamic_batch=True)
        profile = [(1, 3, height, width), (batch, 3, height, width), (self.max_batch, 3, height, width)]
        key = {"model": model.sha256(), "onnx": file_sha256(onnx_path), "profile": profile,
               "precision": self.precision, "workspace": self.workspace, "tensorrt": trt.__version__,
               "gpu": torch.cuda.get_device_name(self._dev), "builder": BUILDER_VERSION}
        self._logger = trt.Logger(trt.Logger.WARNING)

        def build(folder: Path) -> None:
            t0 = time.perf_counter()
            (folder / "engine.plan").write_bytes(self._build(onnx_path, profile))
            self.build_s = time.perf_counter() - t0
        entry = cached("tensorrt", key, build)
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine((entry / "engine.plan").read_bytes())
        if engine is None:
            raise BenchError(f"tensorrt could not deserialise the cached engine {entry}")
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ModelError(f"tensorrt engine has inputs {inputs}; expected one image input")
        self._input_name = inputs[0]
        if not self._context.set_input_shape(self._input_name, trt.Dims4(batch, 3, height, width)):
            raise BenchError(f"tensorrt rejected input shape {(batch, 3, height, width)}")
        # Static device buffers: TensorRT reads and writes them in place on every call.
        self._buffers: Dict[str, Any] = {}
        for n in names:
            dims = self._context.get_tensor_shape(n)
            shape = tuple(int(dims[i]) for i in range(len(dims)))
            dtype = _torch_dtype(engine.get_tensor_dtype(n))
            self._buffers[n] = torch.empty(shape, dtype=dtype, device=self._dev)
            if not self._context.set_tensor_address(n, self._buffers[n].data_ptr()):
                raise BenchError(f"tensorrt rejected the buffer of tensor {n!r}")
        self.output_names = [n for n in names if n != self._input_name]
        self._input = self.device_input = self._buffers[self._input_name]
        self._host = [torch.empty(self._buffers[n].shape, dtype=torch.float32, pin_memory=True)
                      for n in self.output_names]
        self._stream = torch.cuda.Stream(self._dev)
        from retinabench.model.device.cuda import GpuTimer
        self._timer = GpuTimer()

    def _build(self, onnx_path: Path, profile: List[Tuple[int, int, int, int]]) -> bytes:
        import tensorrt as trt

        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: every network has an explicit batch
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"tensorrt cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)  # on by default; float32 parity wants it off
        opt = builder.create_optimization_profile()
        lo, mid, hi = (trt.Dims4(*shape) for shape in profile)
        opt.set_shape(network.get_input(0).name, lo, mid, hi)
        config.add_optimization_profile(opt)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BenchError("tensorrt engine build failed (see the TensorRT log on stderr)")
        return bytes(plan)

    def infer(self, blob: Any) -> Dict[str, Any]:
        import torch

        with torch.cuda.stream(self._stream):
            if isinstance(blob, np.ndarray):
                self._input.copy_(torch.from_numpy(blob))
            elif blob.data_ptr() != self._input.data_ptr():
                self._input.copy_(blob)
            self._timer.start()
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BenchError("tensorrt execute_async_v3 failed")
            self._timer.stop()
            outs = [self._buffers[n] for n in self.output_names]
            if not self.stages_on_device:
                for h, o in zip(self._host, outs):
                    h.copy_(o, non_blocking=True)
            self._stream.synchronize()
        self._timer.read()
        if self.stages_on_device:
            return dict(zip(self.output_names, outs))
        return {n: h.numpy() for n, h in zip(self.output_names, self._host)}

    def metrics(self) -> Dict[str, Any]:
        return {"gpu_time_ms": list(self._timer.times_ms), "gpu_times_include_warmup": True,
                **self.device_stage_metrics()}

    def versions(self) -> Dict[str, str]:
        import tensorrt as trt
        import torch
        return {"tensorrt": trt.__version__, "torch": torch.__version__, "cuda": str(torch.version.cuda),
                "gpu": torch.cuda.get_device_name(self._dev)}

    def settings(self) -> RowSettings:
        s = super().settings()
        s.precision = "f16" if self.precision == "fp16" else "f32"
        s.device_stages = self.stages_on_device
        s.extras.update(max_batch=self.max_batch, workspace_mib=self.workspace >> 20,
                        engine_build_s=None if self.build_s is None else round(self.build_s, 3),
                        engine_cached=self.build_s is None, **self.device_stage_settings())
        return s

    def close(self) -> None:
        # Drop the context before the engine: TensorRT frees their device memory with the last reference.
        for attr in ("_context", "_engine"):
            self.__dict__.pop(attr, None)


def _torch_dtype(dtype: Any) -> Any:
    import tensorrt as trt
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.BOOL: torch.bool}
    if dtype not in table:
        raise ModelError(f"tensorrt tensor type {dtype} has no buffer mapping here")
    return table[dtype]
