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
(fewer kernels; weights change by float rounding). GPU pre/post (backends/torch_pre.py,
torch_post.py) start from uint8 images in host memory and end with the kept faces in host memory.

Timing: every stage ends with a stream synchronisation, so stage times add up to the total. On
CUDA, `infer` ends with its outputs in host memory (pinned buffers, one sync) unless the variant
decodes on the GPU, where it ends with the outputs complete on the device. CUDA events around the
network's GPU work give `gpu_time_ms` per infer call (warmup calls included, in call order: the
measured loops are the last `loops` entries); the GPU pre/post stages record theirs likewise.
torch.compile time is measured at load (and at the first pre/post call for the stages) and reported
in settings, never inside a measured loop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from backends.base import Backend
from retinabench.errors import BackendUnavailable, BenchError

RUNNERS = ("eager", "graph", "compile")


@dataclass(frozen=True)
class TorchVariant:
    dtype: str = "float32"         # torch dtype name the module and input run in
    channels_last: bool = False
    fold_batchnorm: bool = False   # fewer kernels; changes weights by float rounding
    runner: str = "eager"          # eager | graph (CUDA graph) | compile (torch.compile in a CUDA graph)
    device_stages: bool = False    # preprocessing and decode + NMS on the GPU

    @property
    def cuda_only(self) -> bool:
        return self.runner != "eager" or self.device_stages or self.dtype != "float32"


# The default variant is the parity row: float32, batch norm as in the source, TF32 off on CUDA.
VARIANTS: Dict[str, TorchVariant] = {
    "default": TorchVariant(),
    "f16": TorchVariant("float16", True, True),
    "graph": TorchVariant("float16", True, True, "graph"),
    "compile": TorchVariant("float16", True, True, "compile"),
    "pipe-f32": TorchVariant("float32", False, True, "graph", True),
    "pipe": TorchVariant("float16", True, True, "graph", True),
    "pipe-compile": TorchVariant("float16", True, True, "compile", True),
}


class TorchBackend(Backend):
    name = "torch"
    runtime_module = "torch"
    variants = tuple(VARIANTS)


    def load(self, model, batch: int, height: int, width: int) -> None:
        import torch
        from retinabench.graph.torch_module import to_torch

        spec = VARIANTS[self.variant]
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise BackendUnavailable(f"torch {torch.__version__}: no CUDA device")
        elif spec.cuda_only:
            raise BackendUnavailable(f"torch variant {self.variant!r} needs a CUDA device (device is {self.device!r})")
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._torch = torch
        self._spec = spec
        self._dev = torch.device(self.device)
        self._cuda = self._dev.type == "cuda"
        self._dtype = getattr(torch, spec.dtype)
        self._format = torch.channels_last if spec.channels_last else torch.contiguous_format
        self.model_compile_s: Optional[float] = None
        self._pre: Any = None
        self._post: Any = None
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
        if not self._cuda:
            return
        from backends.torch_cuda import GpuTimer, capture, compiled

        self._timer = GpuTimer()
        # The network's input: the graph reads it, GPU preprocessing writes it, host blobs are copied in.
        self._input = torch.zeros((batch, 3, height, width), dtype=self._dtype, device=self._dev)
        self._input = self._input.contiguous(memory_format=self._format)
        with torch.inference_mode():
            run: Any = self._module
            if spec.runner == "compile":
                run, self.model_compile_s = compiled(self._module, self._input)
            if spec.runner in ("graph", "compile"):
                self._graph, self._outs = capture(lambda: run(self._input))
            # Outputs come back into pinned float32 buffers: one sync for all of them.
            outs = run(self._input)
            self._host = [torch.empty(o.shape, dtype=torch.float32, pin_memory=True) for o in outs]
        torch.cuda.synchronize()

    def infer(self, blob: Any) -> Dict[str, Any]:
        torch = self._torch
        with torch.inference_mode():
            if not self._cuda:
                outs = self._module(torch.from_numpy(blob).to(self._dtype))
                return {name: o.float().numpy() for name, o in zip(self.output_names, outs)}
            x = self._input
            if isinstance(blob, np.ndarray):
                if self._spec.runner == "eager":
                    x = torch.from_numpy(blob).to(self._dev, self._dtype).contiguous(memory_format=self._format)
                else:
                    x.copy_(torch.from_numpy(blob))
            elif blob is not x:
                x.copy_(blob)
            self._timer.start()
            if self._spec.runner == "eager":
                outs = self._module(x)
            else:
                self._graph.replay()
                outs = self._outs
            self._timer.stop()
            if not self._spec.device_stages:
                for h, o in zip(self._host, outs):
                    h.copy_(o, non_blocking=True)
            torch.cuda.current_stream().synchronize()
            self._timer.read()
            if self._spec.device_stages:  # complete on the device; the GPU decoder takes them from here
                return dict(zip(self.output_names, outs))
            return {name: h.numpy() for name, h in zip(self.output_names, self._host)}

    def host_outputs(self, outputs: Dict[str, Any]) -> Dict[str, np.ndarray]:
        return {k: (v if isinstance(v, np.ndarray) else v.float().cpu().numpy()) for k, v in outputs.items()}

    def device_preprocess(self, family, mode: str, size: Optional[Tuple[int, int]]):
        if not self._spec.device_stages:
            return None
        from backends.torch_pre import DevicePreprocessor
        self._pre = DevicePreprocessor(self._input, family.normalization, mode, size, self._compile_stages())
        return self._pre

    def device_postprocess(self, family, output_names: List[str], threshold: float):
        if not self._spec.device_stages:
            return None
        from backends.torch_post import make_postprocessor
        self._post = make_postprocessor(family, output_names, threshold, self.options, self._compile_stages())
        return self._post

    def _compile_stages(self) -> bool:
        # pipe-compile compiles its stages too; the others capture them eagerly (no compile time per shape)
        value = self.options.get("compile_stages", self._spec.runner == "compile")
        if not isinstance(value, bool):
            raise BenchError(f"torch option compile_stages={value!r}: expected true or false")
        return value

    def extra_metrics(self) -> Dict[str, Any]:
        if not self._cuda:
            return {}
        extra: Dict[str, Any] = {"gpu_time_ms": list(self._timer.times_ms), "gpu_times_include_warmup": True}
        if self._pre is not None and self._pre.timer is not None:
            extra["gpu_preprocess_ms"] = list(self._pre.timer.times_ms)
        if self._post is not None and self._post.timer is not None:
            extra["gpu_postprocess_ms"] = list(self._post.timer.times_ms)
            extra["postprocess_host_fallbacks"] = self._post.fallbacks
        return extra

    def versions(self) -> Dict[str, str]:
        import torch
        v = {"torch": torch.__version__, "numpy": np.__version__}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            v.update(cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()),
                     gpu=torch.cuda.get_device_name(torch.device(self.device)))
            if VARIANTS[self.variant].runner == "compile" or VARIANTS[self.variant].device_stages:
                try:
                    import triton
                    v["triton"] = triton.__version__
                except Exception:  # triton ships with CUDA torch wheels; its absence is only a note
                    pass
        return v

    def settings(self) -> Dict[str, Any]:
        import torch
        spec = VARIANTS[self.variant]
        s = super().settings()
        s.update(threads=torch.get_num_threads(), **asdict(spec),
                 precision="f16" if spec.dtype == "float16" else "f32")
        if self.device.startswith("cuda"):
            s.update(tf32=bool(torch.backends.cudnn.allow_tf32), cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
            if getattr(self, "model_compile_s", None) is not None:
                s["model_compile_s"] = round(float(self.model_compile_s), 3)
            if self._pre is not None:
                s["preprocess_compile_s"] = round(sum(self._pre.compile_s), 3)
            if self._post is not None:
                s["postprocess_compile_s"] = round(self._post.compile_s, 3)
                s.update({k: v for k, v in asdict(self._post.cfg).items() if k != "threshold"})
        return s

    def close(self) -> None:
        self._module = None
        self._graph = None
