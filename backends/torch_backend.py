"""PyTorch backend: the graph IR as an fx module (retinabench.graph.torch_module), eval, inference_mode.

Variants are rows of one table (VARIANTS); each says how the same module is prepared and run:

| variant        | precision | layout        | runs as                         | pre / post            |
| ---            | ---       | ---           | ---                             | ---                   |
| `default`      | f32       | NCHW          | eager (CPU or CUDA; TF32 off)   | the family's (numpy)  |
| `f16`          | f16       | channels_last | eager                           | the family's          |
| `graph`        | f16       | channels_last | CUDA graph, static buffers      | the family's          |
| `compile`      | f16       | channels_last | torch.compile in a CUDA graph   | the family's          |
| `pipe-f32`     | f32       | NCHW          | CUDA graph                      | on the GPU (graphs)   |
| `pipe`         | f16       | channels_last | CUDA graph                      | on the GPU (graphs)   |
| `pipe-compile` | f16       | channels_last | torch.compile in a CUDA graph   | on the GPU (compiled) |

Every variant but `default` needs CUDA. The GPU stages run as CUDA graphs; in `pipe-compile` they are
torch.compile'd first (option `compile_stages` overrides: ~15-35 s of compile per shape buys
~0.27 ms of decode + NMS at 1280x896 on an H200). Non-default variants fold batch norms into the convs
(fewer kernels; weights change by float rounding). GPU pre/post (retinabench.model.device: the
family's device stages, shared with TensorRT's fp16-pipe) start from uint8 images in host memory and
end with the kept faces in host memory.

Timing: every stage ends with a stream synchronisation, so stage times add up to the total. On
CUDA, `infer` ends with its outputs in host memory (pinned buffers, one sync) unless the variant
decodes on the GPU, where it ends with the outputs complete on the device. CUDA events around the
network's GPU work give `gpu_time_ms` per infer call (warmup calls included, in call order: the
measured loops are the last `loops` entries); the GPU pre/post stages record theirs likewise.
torch.compile time is measured at load (the stages': at their build, before warmup, see
retinabench.model.device.pipeline.build_device_stages) and reported in settings, never inside a
measured loop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from backends.base import Backend
from retinabench.errors import BackendUnavailable
from retinabench.model.device.pipeline import NETWORK_TIMER, DeviceStageOptions, DeviceStages
from retinabench.records import RowSettings

RUNNERS = ("eager", "graph", "compile")


@dataclass(frozen=True)
class TorchVariant:
    dtype: str = "float32"         # torch dtype name the module and input run in
    channels_last: bool = False
    fold_batchnorm: bool = False   # fewer kernels; changes weights by float rounding
    runner: str = "eager"          # eager | graph (CUDA graph) | compile (torch.compile; in a CUDA graph on CUDA)
    device_stages: bool = False    # preprocessing and decode + NMS on the GPU
    timing: str = "staged"         # staged | e2e | throughput (retinabench.model.device.pipelined)
    host_resize: bool = False      # resize on host threads into pinned memory, upload the small images
    devices: str = "cuda"          # where it runs: cuda | cpu | any

    @property
    def cuda_only(self) -> bool:
        return self.devices == "cuda"

    @property
    def precision(self) -> str:
        return "f16" if self.dtype == "float16" else "f32"


# The default variant is the parity row: float32, batch norm as in the source, TF32 off on CUDA.
VARIANTS: Dict[str, TorchVariant] = {
    "default": TorchVariant(devices="any"),
    # The CPU as torch's experts run it: channels_last, batch norm folded, and torch.compile (inductor's
    # C++ backend, needs a compiler; its compile time is recorded).
    "channels-last": TorchVariant("float32", True, True, devices="cpu"),
    "channels-last-compile": TorchVariant("float32", True, True, "compile", devices="cpu"),
    "f16": TorchVariant("float16", True, True),
    "graph": TorchVariant("float16", True, True, "graph"),
    "compile": TorchVariant("float16", True, True, "compile"),
    "pipe-f32": TorchVariant("float32", False, True, "graph", True),
    "pipe": TorchVariant("float16", True, True, "graph", True),
    "pipe-compile": TorchVariant("float16", True, True, "compile", True),
    # The same pipeline timed end to end (one synchronisation per loop; stages from CUDA events).
    "pipe-compile-e2e": TorchVariant("float16", True, True, "compile", True, timing="e2e"),
    # Two batches in flight: per-batch time is wall time / batches (batch sweeps).
    "pipe-compile-tput": TorchVariant("float16", True, True, "compile", True, timing="throughput"),
    # Resize on host threads into pinned memory, upload the small images (upload-bound batches).
    "pipe-compile-hostresize": TorchVariant("float16", True, True, "compile", True, host_resize=True),
    "pipe-compile-hostresize-tput": TorchVariant("float16", True, True, "compile", True, timing="throughput",
                                                 host_resize=True),
}


@dataclass(frozen=True)
class TorchOptions(DeviceStageOptions):
    """The device stages' options (the pipe variants); torch takes no others."""


class TorchBackend(DeviceStages, Backend):
    name = "torch"
    runtime_module = "torch"
    variants = VARIANTS
    Options = TorchOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        spec: TorchVariant = self.spec
        # pipe-compile compiles its stages too; the other pipes capture them eagerly (no compile time per shape)
        self.init_device_stages(spec.device_stages, compile_by_default=spec.runner == "compile",
                                host_resize=spec.host_resize, timing=spec.timing)
        self.model_compile_s: Optional[float] = None
        self._torch: Any = None
        self._module: Any = None
        self._graph: Any = None
        self._outs: Any = None
        self._host: Any = None
        self._timer: Any = None
        self._run: Any = None
        self._shape: Any = None
        self._cuda = False
        self.compile_cache: Dict[str, int] = {}

    def load(self, model, batch: int, height: int, width: int) -> None:
        import torch
        from retinabench.graph.torch_module import to_torch

        spec: TorchVariant = self.spec
        if self.device.startswith("cuda"):
            if spec.devices == "cpu":
                raise BackendUnavailable(f"torch variant {self.variant!r} is a CPU variant (device is {self.device!r})")
            if not torch.cuda.is_available():
                raise BackendUnavailable(f"torch {torch.__version__}: no CUDA device")
        elif spec.cuda_only:
            raise BackendUnavailable(f"torch variant {self.variant!r} needs a CUDA device (device is {self.device!r})")
        self.check_device_stages(model)
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._torch = torch
        self._dev = torch.device(self.device)
        self._cuda = self._dev.type == "cuda"
        self._dtype = getattr(torch, spec.dtype)
        self._format = torch.channels_last if spec.channels_last else torch.contiguous_format
        if self._cuda:
            if self._dev.index is not None:
                torch.cuda.set_device(self._dev)
            # Parity: TF32 convolutions differ from MXNet by ~4e-3 (FACTS.md); only f32 variants care.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.benchmark = True  # input shape is fixed per load
        module = to_torch(model.graph(), fold_batchnorm=spec.fold_batchnorm).to(self._dev, self._dtype)
        self._module = module.to(memory_format=self._format).eval()
        self.output_names = list(module.output_names)
        self._shape = (batch, 3, height, width)
        from retinabench.model.device.cuda import compile_cache_counts, compiled
        run: Any = self._module
        if spec.runner == "compile":
            before = compile_cache_counts()
            with torch.inference_mode():
                run, self.model_compile_s = compiled(self._module, self._new_input())
            after = compile_cache_counts()
            self.compile_cache = {k: after[k] - before.get(k, 0) for k in after}
        self._run = run
        if not self._cuda:
            return
        from retinabench.model.device.cuda import GpuTimer, capture

        self._timer = GpuTimer(NETWORK_TIMER)
        if spec.timing != "staged":  # the pipeline's slots build their own inputs and graphs (model_slots)
            return
        # The network's input: the graph reads it, GPU preprocessing writes it, host blobs are copied in.
        self.device_input = self._new_input()
        with torch.inference_mode():
            if spec.runner in ("graph", "compile"):
                self._graph, self._outs = capture(lambda: run(self.device_input))
            # Outputs come back into pinned float32 buffers: one sync for all of them.
            outs = run(self.device_input)
            self._host = [torch.empty(o.shape, dtype=torch.float32, pin_memory=True) for o in outs]
        torch.cuda.synchronize()

    def _new_input(self) -> Any:
        x = self._torch.zeros(self._shape, dtype=self._dtype, device=self._dev)
        return x.contiguous(memory_format=self._format)

    def model_slots(self, count: int) -> List[Tuple[Any, Callable[[], Dict[str, Any]], Any, Any]]:
        """Per slot of a pipelined variant: its own input, CUDA graph of the network, timer and stream."""
        torch = self._torch
        from retinabench.model.device.cuda import GpuTimer, capture
        slots = []
        for _ in range(count):
            x = self._new_input()
            with torch.inference_mode():
                graph, outs = capture(lambda x=x: self._run(x))
            timer = GpuTimer(NETWORK_TIMER)

            def run_model(graph: Any = graph, outs: Any = outs, timer: Any = timer) -> Dict[str, Any]:
                timer.start()
                graph.replay()
                timer.stop()
                return dict(zip(self.output_names, outs))
            slots.append((x, run_model, timer, torch.cuda.Stream(self._dev)))
        torch.cuda.synchronize()
        return slots

    def infer(self, blob: Any) -> Dict[str, Any]:
        torch = self._torch
        spec: TorchVariant = self.spec
        with torch.inference_mode():
            if not self._cuda:
                x = torch.from_numpy(blob).to(self._dtype).contiguous(memory_format=self._format)
                outs = self._run(x)
                return {name: o.float().contiguous().numpy() for name, o in zip(self.output_names, outs)}
            x = self.device_input
            if isinstance(blob, np.ndarray):
                if spec.runner == "eager":
                    x = torch.from_numpy(blob).to(self._dev, self._dtype).contiguous(memory_format=self._format)
                else:
                    x.copy_(torch.from_numpy(blob))
            elif blob is not x:
                x.copy_(blob)
            self._timer.start()
            if spec.runner == "eager":
                outs = self._module(x)
            else:
                self._graph.replay()
                outs = self._outs
            self._timer.stop()
            if not spec.device_stages:
                for h, o in zip(self._host, outs):
                    h.copy_(o, non_blocking=True)
            torch.cuda.current_stream().synchronize()
            self._timer.read()
            if spec.device_stages:  # complete on the device; the GPU decoder takes them from here
                return dict(zip(self.output_names, outs))
            return {name: h.numpy() for name, h in zip(self.output_names, self._host)}

    def metrics(self) -> Dict[str, Any]:
        if self._timer is None:  # CPU: no CUDA events
            return {}
        return self.gpu_metrics(self._timer)

    def versions(self) -> Dict[str, str]:
        import torch
        v = {"torch": torch.__version__, "numpy": np.__version__}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            v.update(cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()),
                     gpu=torch.cuda.get_device_name(torch.device(self.device)))
            if self.spec.runner == "compile" or self.spec.device_stages:
                try:
                    import triton
                    v["triton"] = triton.__version__
                except Exception:  # triton ships with CUDA torch wheels; its absence is only a note
                    pass
        return v

    def settings(self) -> RowSettings:
        import torch
        spec: TorchVariant = self.spec
        s = super().settings()
        s.threads = torch.get_num_threads()
        s.precision = spec.precision
        s.extras.update({k: v for k, v in asdict(spec).items() if k not in ("device_stages", "timing")})
        self.apply_device_stage_settings(s)  # device_stages and the stages' extras, as TensorRT's fp16-pipe
        if self._cuda:
            s.extras.update(tf32=bool(torch.backends.cudnn.allow_tf32),
                            cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
        if self.model_compile_s is not None:
            s.extras["model_compile_s"] = round(float(self.model_compile_s), 3)
            s.extras["compile_cache"] = dict(self.compile_cache)   # inductor's FX-graph cache hits and misses
        return s

    def close(self) -> None:
        self._module = None
        self._graph = None
