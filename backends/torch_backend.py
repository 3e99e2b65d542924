"""PyTorch backend: the graph IR as an fx module (retinabench.graph.torch_module), eval, inference_mode.

Variants are rows of one table (VARIANTS): each says how the same module is prepared and run, so a
GPU variant (f16 channels_last, CUDA graph, torch.compile) is one entry plus its preparation step.
On CUDA, `infer` synchronises and copies every output to the host before returning: that wait and
that copy are part of inference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

import numpy as np

from backends.base import Backend
from retinabench.errors import BackendUnavailable


@dataclass(frozen=True)
class TorchVariant:
    dtype: str = "float32"         # torch dtype name the module and input run in
    channels_last: bool = False
    fold_batchnorm: bool = False   # fewer kernels; changes weights by float rounding
    cuda_only: bool = False


# The default variant is the parity row: float32, batch norm as in the source, TF32 off on CUDA.
VARIANTS: Dict[str, TorchVariant] = {
    "default": TorchVariant(),
}


class TorchBackend(Backend):
    name = "torch"
    variants = tuple(VARIANTS)

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except Exception as e:
            return False, f"torch does not import ({type(e).__name__}: {e})"
        return True, ""

    def load(self, model, batch: int, height: int, width: int) -> None:
        import torch
        from retinabench.graph.torch_module import to_torch

        spec = VARIANTS[self.variant]
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise BackendUnavailable(f"torch {torch.__version__}: no CUDA device")
        elif spec.cuda_only:
            raise BackendUnavailable(f"torch variant {self.variant!r} needs a CUDA device")
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self._torch = torch
        self._spec = spec
        self._dev = torch.device(self.device)
        self._dtype = getattr(torch, spec.dtype)
        if self._dev.type == "cuda":
            # Parity: TF32 convolutions differ from MXNet by ~4e-3 (FACTS.md); only f32 variants care.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.benchmark = True  # input shape is fixed per load
        module = to_torch(model.graph(), fold_batchnorm=spec.fold_batchnorm).to(self._dev, self._dtype)
        if spec.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self._module = module.eval()
        self.output_names = list(module.output_names)

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(blob).to(self._dev, self._dtype)
            if self._spec.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            outs = self._module(x)
            # float() keeps the host arrays float32 for every variant; .cpu() copies them back.
            host = [o.float().cpu() for o in outs]
            if self._dev.type == "cuda":
                torch.cuda.synchronize(self._dev)
        return {name: o.numpy() for name, o in zip(self.output_names, host)}

    def versions(self) -> Dict[str, str]:
        import torch
        v = {"torch": torch.__version__}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            v.update(cuda=str(torch.version.cuda), cudnn=str(torch.backends.cudnn.version()),
                     gpu=torch.cuda.get_device_name(torch.device(self.device)))
        return v

    def settings(self) -> Dict[str, Any]:
        import torch
        s = super().settings()
        s.update(threads=torch.get_num_threads(), **asdict(VARIANTS[self.variant]))
        if self.device.startswith("cuda"):
            s.update(tf32=bool(torch.backends.cudnn.allow_tf32), cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
        return s

    def close(self) -> None:
        self._module = None
