"""The device pipeline a GPU backend's variant can run: the family's stages on the device around its network.

One mixin for every backend that offers such variants (torch's `pipe*`, TensorRT's `fp16-pipe`), so
they run the same code and record the same settings and metrics:

- preprocessing: uint8 images in host memory -> the network's input tensor on the device
  (retinabench.model.device.preprocess);
- decode + NMS: the network's device outputs -> the kept faces in host memory, through the
  family's device decoder (`Family.make_device_decoder`; a family without one makes such a
  variant unavailable, with the reason);
- settings (`apply_device_stage_settings`): `device_stages`, whether the stages are compiled, their
  build times (compile and CUDA-graph capture included) and compile times, and the decoder's
  configuration; metrics (`gpu_metrics`): CUDA-event times of the network and of each device stage,
  what each event pair covers (`gpu_timer_coverage`), and the images decoded on the host instead.

A backend using it sets `self.device_input` (the network's input tensor) in `load()`, calls
`init_device_stages(on_device, compile_by_default)` in `__init__`, times its network with a
`GpuTimer(NETWORK_TIMER)`, takes its options from a dataclass derived from `DeviceStageOptions`, and
reports through `apply_device_stage_settings(settings)` and `gpu_metrics(network_timer)`.

Building the stages: a device stage builds itself (compile, capture) on its first call. The worker
runs `build_device_stages(...)` once, after load and before `measure()`, so that work never lands in
a warmup or measured loop (with `warmup: 0` it would be sample 0); it returns the seconds taken, which
the worker records as `stage_build_s`. Its pass leaves no GPU-timer entry (cuda.untimed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from retinabench.errors import BackendUnavailable

# What a backend's network timer covers: the same event placement in every backend using the mixin.
NETWORK_TIMER = ("network only: CUDA events around the network's kernels (graph replay, module call or "
                 "execute_async_v3); no input upload, no output copy back")


def build_device_stages(preprocess: Callable, infer: Callable, postprocess: Callable,
                        images: Sequence[Any]) -> float:
    """One whole pass (preprocess -> infer -> postprocess) outside the measured loop; returns its seconds.

    Every device stage builds on its first call (staging buffers, torch.compile, CUDA-graph capture),
    so after this pass none is left for a warmup or measured loop. The pass records no GPU-timer
    entry, so each timer still lists the warmup calls, then the measured calls. Call it with the same
    stages and images as `measure()`, after `load()` and before the GPU monitor's first window.
    """
    from retinabench.model.device.cuda import untimed

    t0 = time.perf_counter()
    with untimed():
        blob, metas = preprocess(images)
        outputs = infer(blob)
        postprocess(outputs, metas)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class DeviceStageOptions:
    """Options of the device decoder (shape-static top-k decode + NMS) and of stage compilation."""

    candidates: int = 256          # top scores per image taken to decode + NMS on the device
    max_faces: int = 64            # kept faces copied back per image
    nms_iterations: int = 8        # rounds of the fixed-point NMS before an image falls back to the host
    compile_stages: Optional[bool] = None   # torch.compile the stages too (None: the variant's default)
    # how images reach the device (retinabench.model.device.preprocess); the choices are validated
    upload: str = field(default="pinned", metadata={"choices": ("pinned", "banded", "pageable")})
    # with the pinned upload, images per transfer: 1 queues each image's upload as soon as its host
    # copy is done (overlapped with the next copies); N copies N images, then uploads them at once
    upload_chunk: int = 1


class DeviceStages:
    """Mixin: the device_preprocess / device_postprocess hooks and their settings and metrics."""

    device_input: Any
    options: Any
    device: str

    def init_device_stages(self, on_device: bool, compile_by_default: bool, host_resize: bool = False,
                           timing: str = "staged") -> None:
        """`timing`: staged (a synchronisation per stage), e2e or throughput (retinabench.model.device.pipelined)."""
        self.stages_on_device = on_device
        compile_stages = self.options.compile_stages
        self.compile_stages = compile_by_default if compile_stages is None else bool(compile_stages)
        self.host_resize = host_resize
        self.timing = timing
        self.device_input = None
        self._pre: Any = None
        self._post: Any = None
        self._pipeline: Any = None

    def check_device_stages(self, model: Any) -> None:
        """At the top of load(): a variant with device stages needs its family's device decoder; say so
        before building anything (the same reason `device_postprocess` would give later)."""
        if not self.stages_on_device:
            return
        from retinabench.model.family import get_family
        family = get_family(model.family)
        if family.make_device_decoder is None:
            raise BackendUnavailable(f"the {family.name} family has no device decode + NMS "
                                     "(it is written for the insightface family)")

    def device_preprocess(self, family: Any, mode: str, size: Optional[Tuple[int, int]]) -> Any:
        if not self.stages_on_device:
            return None
        self._pre = self._preprocessor(self.device_input, family, mode, size)
        return self._pre

    def _preprocessor(self, target: Any, family: Any, mode: str, size: Optional[Tuple[int, int]]) -> Any:
        from retinabench.model.device.preprocess import DevicePreprocessor
        return DevicePreprocessor(target, family.normalization, mode, size, self.compile_stages,
                                  upload=self.options.upload, host_resize=self.host_resize,
                                  upload_chunk=self.options.upload_chunk)

    def model_slots(self, count: int) -> List[Tuple[Any, Callable[[], Dict[str, Any]], Any, Any]]:
        """(input tensor, run_model, network timer, stream) per slot: the backend's network for
        pipelined timing (each slot its own input, outputs and CUDA graph). Backends that offer
        e2e or throughput variants implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no pipelined variants")

    def device_pipeline(self, family: Any, mode: str, size: Optional[Tuple[int, int]], output_names: List[str],
                        threshold: float) -> Any:
        """For e2e and throughput variants: the pipeline the worker measures instead of three stages."""
        if not self.stages_on_device or self.timing == "staged":
            return None
        from retinabench.model.device.pipelined import PipelinedStages, Slot
        depth = 1 if self.timing == "e2e" else 2
        slots = [Slot(self._preprocessor(x, family, mode, size), run, timer, self._decoder(family, output_names,
                                                                                          threshold), stream)
                 for x, run, timer, stream in self.model_slots(depth)]
        self._pre, self._post = slots[0].pre, slots[0].post   # for the recorded build and compile times
        self._pipeline = PipelinedStages(slots, depth)
        return self._pipeline

    def device_postprocess(self, family: Any, output_names: List[str], threshold: float) -> Any:
        if not self.stages_on_device:
            return None
        self._post = self._decoder(family, output_names, threshold)
        return self._post

    def _decoder(self, family: Any, output_names: List[str], threshold: float) -> Any:
        if family.make_device_decoder is None:
            raise BackendUnavailable(f"the {family.name} family has no device decode + NMS "
                                     "(it is written for the insightface family)")
        o = self.options
        return family.make_device_decoder(output_names, threshold, candidates=o.candidates, max_faces=o.max_faces,
                                          nms_iterations=o.nms_iterations, compile_stage=self.compile_stages)

    def host_outputs(self, outputs: Dict[str, Any]) -> Dict[str, Any]:
        """Device outputs as float32 numpy arrays, for the accuracy comparison (outside the loop)."""
        import numpy as np
        return {k: (v if isinstance(v, np.ndarray) else v.float().cpu().numpy()) for k, v in outputs.items()}

    def device_stage_settings(self) -> Dict[str, Any]:
        """Recorded beside the backend's own settings: build and compile times, the decoder's configuration.

        `*_build_s` is a stage's whole one-time cost (buffers, compile, CUDA-graph capture), `*_compile_s`
        the torch.compile part of it (0.0 when the stages are captured uncompiled).
        """
        s: Dict[str, Any] = ({"compile_stages": self.compile_stages, "upload": self.options.upload,
                              "upload_chunk": self.options.upload_chunk, "host_resize": self.host_resize}
                             if self.stages_on_device else {})
        if self._pre is not None:
            s["preprocess_build_s"] = round(sum(self._pre.build_s), 3)
            s["preprocess_compile_s"] = round(sum(self._pre.compile_s), 3)
        if self._post is not None:
            s["postprocess_build_s"] = round(self._post.build_s, 3)
            s["postprocess_compile_s"] = round(self._post.compile_s, 3)
            cfg = self._post.cfg
            s.update(nms_threshold=cfg.nms_threshold, candidates=cfg.candidates, max_faces=cfg.max_faces,
                     nms_iterations=cfg.nms_iterations)
        return s

    def apply_device_stage_settings(self, settings: Any) -> Any:
        """Fill a RowSettings' shared pipeline part: the declared `device_stages` and `timing`, and the stage extras."""
        settings.device_stages = bool(self.stages_on_device)
        settings.timing = self.timing
        settings.extras.update(self.device_stage_settings())
        return settings

    def gpu_metrics(self, network_timer: Any) -> Dict[str, Any]:
        """CUDA-event times of the network and of each device stage, per call in call order (warmup
        calls first, then the measured ones; the build pass adds none), with what each covers."""
        if self._pipeline is not None:  # pipelined timing: the pipeline's per-loop times of completed batches
            return self._pipeline.metrics()
        m: Dict[str, Any] = {"gpu_time_ms": list(network_timer.times_ms), "gpu_times_include_warmup": True}
        coverage = {"gpu_time_ms": network_timer.label}
        if self._pre is not None and self._pre.timer is not None:
            m["gpu_preprocess_ms"] = list(self._pre.timer.times_ms)
            coverage["gpu_preprocess_ms"] = self._pre.timer.label
        if self._post is not None and self._post.timer is not None:
            m["gpu_postprocess_ms"] = list(self._post.timer.times_ms)
            coverage["gpu_postprocess_ms"] = self._post.timer.label
            m["postprocess_host_fallbacks"] = self._post.fallbacks
        m["gpu_timer_coverage"] = coverage
        return m
