"""The device pipeline a GPU backend's variant can run: the family's stages on the device around its network.

One mixin for every backend that offers such variants (torch's `pipe*`, TensorRT's `fp16-pipe`), so
they run the same code and record the same settings and metrics:

- preprocessing: uint8 images in host memory -> the network's input tensor on the device
  (retinabench.model.device.preprocess);
- decode + NMS: the network's device outputs -> the kept faces in host memory, through the
  family's device decoder (`Family.make_device_decoder`; a family without one makes such a
  variant unavailable, with the reason);
- settings: `device_stages`, the stages' compile times and the decoder's configuration;
  metrics: CUDA-event times of each device stage and the images decoded on the host instead.

A backend using it sets `self.device_input` (the network's input tensor) in `load()`, calls
`init_device_stages(on_device, compile_by_default)` in `__init__`, and takes its options from a
dataclass derived from `DeviceStageOptions`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from retinabench.errors import BackendUnavailable


@dataclass(frozen=True)
class DeviceStageOptions:
    """Options of the device decoder (shape-static top-k decode + NMS) and of stage compilation."""

    candidates: int = 256          # top scores per image taken to decode + NMS on the device
    max_faces: int = 64            # kept faces copied back per image
    nms_iterations: int = 8        # rounds of the fixed-point NMS before an image falls back to the host
    compile_stages: Optional[bool] = None   # torch.compile the stages too (None: the variant's default)


class DeviceStages:
    """Mixin: the device_preprocess / device_postprocess hooks and their settings and metrics."""

    device_input: Any
    options: Any
    device: str

    def init_device_stages(self, on_device: bool, compile_by_default: bool) -> None:
        self.stages_on_device = on_device
        compile_stages = self.options.compile_stages
        self.compile_stages = compile_by_default if compile_stages is None else bool(compile_stages)
        self.device_input = None
        self._pre: Any = None
        self._post: Any = None

    def device_preprocess(self, family: Any, mode: str, size: Optional[Tuple[int, int]]) -> Any:
        if not self.stages_on_device:
            return None
        from retinabench.model.device.preprocess import DevicePreprocessor
        self._pre = DevicePreprocessor(self.device_input, family.normalization, mode, size, self.compile_stages)
        return self._pre

    def device_postprocess(self, family: Any, output_names: List[str], threshold: float) -> Any:
        if not self.stages_on_device:
            return None
        if family.make_device_decoder is None:
            raise BackendUnavailable(f"the {family.name} family has no device decode + NMS "
                                     "(it is written for the insightface family)")
        o = self.options
        self._post = family.make_device_decoder(output_names, threshold, candidates=o.candidates,
                                                max_faces=o.max_faces, nms_iterations=o.nms_iterations,
                                                compile_stage=self.compile_stages)
        return self._post

    def host_outputs(self, outputs: Dict[str, Any]) -> Dict[str, Any]:
        """Device outputs as float32 numpy arrays, for the accuracy comparison (outside the loop)."""
        import numpy as np
        return {k: (v if isinstance(v, np.ndarray) else v.float().cpu().numpy()) for k, v in outputs.items()}

    def device_stage_settings(self) -> Dict[str, Any]:
        """Recorded beside the backend's own settings: compile times and the decoder's configuration."""
        s: Dict[str, Any] = {"compile_stages": self.compile_stages} if self.stages_on_device else {}
        if self._pre is not None:
            s["preprocess_compile_s"] = round(sum(self._pre.compile_s), 3)
        if self._post is not None:
            s["postprocess_compile_s"] = round(self._post.compile_s, 3)
            cfg = self._post.cfg
            s.update(nms_threshold=cfg.nms_threshold, candidates=cfg.candidates, max_faces=cfg.max_faces,
                     nms_iterations=cfg.nms_iterations)
        return s

    def device_stage_metrics(self) -> Dict[str, Any]:
        m: Dict[str, Any] = {}
        if self._pre is not None and self._pre.timer is not None:
            m["gpu_preprocess_ms"] = list(self._pre.timer.times_ms)
        if self._post is not None and self._post.timer is not None:
            m["gpu_postprocess_ms"] = list(self._post.timer.times_ms)
            m["postprocess_host_fallbacks"] = self._post.fallbacks
        return m
