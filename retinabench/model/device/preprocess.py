"""Preprocessing on the device: uint8 images in host memory -> the network's input tensor.

Per loop, each image reaches the device by one of three uploads (option `upload`):
- `pinned` (default): torch's own parallel copy into a pinned staging buffer, then an asynchronous
  upload (the fastest of the three on the H200 machine, measured after torch.compile had run:
  tools/upload_probe.py); `upload_chunk` images per transfer (default 1: each image's upload is
  queued as soon as its copy is done, overlapping the next copies; N: N copies, then one upload);
- `banded`: numpy copies of row bands on a thread pool into the pinned buffer, each image uploaded
  as soon as its bands are there;
- `pageable`: a plain copy from the image's own (pageable) memory to the device.
With `host_resize`, the images are resized on host threads (cv2.resize, exactly the numpy
Preprocessor's resize) straight into pinned memory and only the small images are uploaded.
One CUDA graph then resizes (bilinear, as cv2.INTER_LINEAR, rounded to uint8 levels like cv2's
output; skipped after a host resize), reorders BGR to the family's channel order, normalises, pads
bottom/right with zeros and writes the network's dtype and memory format. Called, the stage ends
with a stream synchronisation (the input exists when it returns); `enqueue` leaves the work queued
on the current stream, for pipelines timed end to end (retinabench.model.device.pipelined).

Its GPU timer (`gpu_preprocess_ms`) covers the stage's device work, transfer included: from the
first image's upload to the end of the graph (PREPROCESS_TIMER says so in the record). With several
images, later uploads are queued as their host copies finish, so the GPU's wait for them counts.

`fit_batch` is the arithmetic alone, device-agnostic, so the CPU tests can hold it against the
numpy Preprocessor; on a CPU device `DevicePreprocessor` runs it eagerly (no staging, no graph).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from retinabench.errors import BenchError
from retinabench.model.preprocess import ImageMeta, Normalization, fit_geometry

PREPROCESS_TIMER = ("upload + resize/normalise graph: from the first image's host-to-device upload to the end "
                    "of the graph (later uploads overlap host copies still running; no host copy before the first)")
_COPY_THREADS = 8  # host copies into pinned memory run on this many threads at most
_BANDS = 4         # a batch of one image is copied as this many row bands
UPLOADS = ("pinned", "banded", "pageable")


def norm_tensors(norm: Normalization, device: Any) -> Optional[Tuple[Any, Any]]:
    """(mean, 1/std) as float32 [1, 3, 1, 1] tensors, or None when the family feeds raw pixels."""
    import torch

    if not any(norm.mean) and all(s == 1.0 for s in norm.std):
        return None
    inv = np.float32(1.0) / np.asarray(norm.std, np.float32)  # the numpy Preprocessor's float32 1/std
    return (torch.tensor(norm.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.from_numpy(inv).to(device).view(1, 3, 1, 1))


def fit_batch(src: Any, out_hw: Tuple[int, int], content_hw: Tuple[int, int], rgb: bool,
              mean_inv_std: Optional[Tuple[Any, Any]], dtype: Any) -> Any:
    """uint8 [g, h, w, 3] BGR -> [g, 3, H, W] in `dtype`: resized to content_hw, padded to out_hw."""
    import torch.nn.functional as F

    (H, W), (ch, cw) = out_hw, content_hw
    x = src.permute(0, 3, 1, 2)
    if rgb:
        x = x.flip(1)
    x = x.float()
    if (ch, cw) != tuple(src.shape[1:3]):
        x = F.interpolate(x, size=(ch, cw), mode="bilinear", align_corners=False)
        x = x.round().clamp(0.0, 255.0)  # cv2 resizes uint8 to uint8; the network sees those levels
    if mean_inv_std is not None:
        x = (x - mean_inv_std[0]) * mean_inv_std[1]
    x = F.pad(x, (0, W - cw, 0, H - ch))
    return x.to(dtype)


@dataclass
class _Run:
    """Consecutive images of one size: one staging buffer, one upload target, one resize."""
    first: int
    count: int
    shape: Tuple[int, int, int]
    content_hw: Tuple[int, int]
    staging: Any = None   # pinned uint8 [count, h, w, 3]
    staging_np: Any = None  # the same memory as a numpy array
    upload: Any = None    # device uint8 [count, h, w, 3]


@dataclass
class _Plan:
    runs: List[_Run]
    metas: List[ImageMeta]
    graph: Any = None
    compile_s: float = 0.0
    build_s: float = 0.0    # staging buffers, compile and capture: the plan's one-time cost
    extra: Dict[str, Any] = field(default_factory=dict)


class DevicePreprocessor:
    """Callable like retinabench.model.preprocess.Preprocessor, writing into `target` on its device.

    One plan (staging buffers + captured graph) per distinct list of image sizes, built on first
    use: by retinabench.model.device.pipeline.build_device_stages before warmup, when the worker runs it.
    `compile_s` and `build_s` list each plan's compile time and whole build time (capture included).
    """

    def __init__(self, target: Any, norm: Normalization, mode: str, size: Optional[Tuple[int, int]],
                 compile_stage: bool = True, upload: str = "pinned", host_resize: bool = False,
                 upload_chunk: int = 1):
        import torch

        if upload not in UPLOADS:
            raise BenchError(f"device preprocessing: upload {upload!r} (known: {', '.join(UPLOADS)})")
        if int(upload_chunk) < 1:
            raise BenchError(f"device preprocessing: upload_chunk {upload_chunk!r} (images per upload: 1 or more)")
        self.upload_chunk = int(upload_chunk)
        self.target = target
        self.norm = norm
        self.mode = mode
        self.size = size
        self.compile_stage = compile_stage
        self.upload = upload
        self.host_resize = host_resize
        self.cuda = target.device.type == "cuda"
        self._plans: Dict[Tuple[Tuple[int, ...], ...], _Plan] = {}
        self._torch = torch
        self._rgb = norm.order == "rgb"
        self._norm = norm_tensors(norm, target.device)
        self.compile_s: List[float] = []
        self.build_s: List[float] = []
        self.timer = None
        if self.cuda:
            from retinabench.model.device.cuda import GpuTimer
            self.timer = GpuTimer(PREPROCESS_TIMER)
            threads = (os.cpu_count() or 1) if host_resize else min(_COPY_THREADS, os.cpu_count() or 1)
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pinned-copy")
            if host_resize:  # one image per pool thread: cv2's own threads would oversubscribe the cores
                import cv2
                cv2.setNumThreads(1)

    def _geometry(self, images: Sequence[np.ndarray]) -> Tuple[List[Tuple[int, int]], List[ImageMeta]]:
        n, _, H, W = self.target.shape
        if len(images) != n:
            raise BenchError(f"device preprocessing: {len(images)} images for a batch of {n}")
        hws, metas = [], []
        for img in images:
            h, w = img.shape[:2]
            if self.mode == "fit":
                scale, cw, ch = fit_geometry(w, h, W, H)
            else:
                if (h, w) != (H, W):
                    raise BenchError(f"input mode 'native': image {w}x{h} does not match the network's {W}x{H}")
                scale, cw, ch = 1.0, w, h
            hws.append((ch, cw))
            metas.append(ImageMeta(scale, cw, ch, w, h))
        return hws, metas

    def _plan(self, images: Sequence[np.ndarray]) -> _Plan:
        import time
        t0 = time.perf_counter()
        plan = self._make_plan(images)
        plan.build_s = time.perf_counter() - t0
        self.build_s.append(plan.build_s)
        return plan

    def _make_plan(self, images: Sequence[np.ndarray]) -> _Plan:
        torch = self._torch
        hws, metas = self._geometry(images)
        runs: List[_Run] = []
        for i, img in enumerate(images):
            if runs and runs[-1].shape == img.shape and runs[-1].content_hw == hws[i]:
                runs[-1].count += 1
            else:
                runs.append(_Run(i, 1, tuple(img.shape), hws[i]))  # type: ignore[arg-type]
        plan = _Plan(runs, metas)
        if not self.cuda:
            return plan
        for r in runs:
            # after a host resize, what travels is the resized image
            shape = (*r.content_hw, r.shape[2]) if self.host_resize else r.shape
            r.staging = torch.empty((r.count, *shape), dtype=torch.uint8, pin_memory=True)
            r.staging_np = r.staging.numpy()
            r.upload = torch.zeros((r.count, *shape), dtype=torch.uint8, device=self.target.device)
        fns = [self._bound(r) for r in runs]
        if self.compile_stage:
            from retinabench.model.device.cuda import compiled
            for i, r in enumerate(runs):
                fns[i], secs = compiled(fns[i], r.upload)
                plan.compile_s += secs

        def step() -> None:
            for f, r in zip(fns, runs):
                self.target[r.first:r.first + r.count].copy_(f(r.upload))

        from retinabench.model.device.cuda import capture
        plan.graph, _ = capture(step)
        self.compile_s.append(plan.compile_s)
        return plan

    def _stage(self, plan: _Plan, images: Sequence[np.ndarray]) -> None:
        """Bring the images to the device (option `upload`, or host resize); the timer starts at the first upload."""
        torch = self._torch
        assert self.timer is not None
        if self.host_resize:
            self._resize_and_upload(plan, images)
            return
        if self.upload == "pageable":
            self.timer.start()
            for r in plan.runs:
                for j in range(r.count):
                    r.upload[j].copy_(torch.from_numpy(np.ascontiguousarray(images[r.first + j])))
            return
        if self.upload == "pinned":
            first = True
            for r in plan.runs:
                for lo in range(0, r.count, self.upload_chunk):
                    hi = min(r.count, lo + self.upload_chunk)
                    for j in range(lo, hi):
                        r.staging[j].copy_(torch.from_numpy(np.ascontiguousarray(images[r.first + j])))
                    if first:
                        self.timer.start()
                        first = False
                    r.upload[lo:hi].copy_(r.staging[lo:hi], non_blocking=True)
            return
        self._banded(plan, images)

    def _banded(self, plan: _Plan, images: Sequence[np.ndarray]) -> None:
        """Copy the images into pinned memory on a few threads; queue each image's upload once it is there.

        numpy's copy releases the GIL, so bands copy in parallel. A single image is split into row
        bands; uploads of finished images overlap the copies still running.
        """
        jobs = []
        for r in plan.runs:
            for j in range(r.count):
                img, dst = images[r.first + j], r.staging_np[j]
                bands = _BANDS if r.count == 1 else 1
                step = -(-img.shape[0] // bands)
                futs = [self._pool.submit(np.copyto, dst[y:y + step], img[y:y + step]) for y in range(0, img.shape[0], step)]
                jobs.append((r, j, futs))
        self._upload_when_done(jobs)

    def _resize_and_upload(self, plan: _Plan, images: Sequence[np.ndarray]) -> None:
        """cv2.resize (the numpy Preprocessor's resize) of each image on the pool, into pinned memory."""
        import cv2

        def resize(img: np.ndarray, dst: np.ndarray, hw: Tuple[int, int]) -> None:
            if img.shape[:2] == hw:
                np.copyto(dst, img)
            else:
                cv2.resize(img, (hw[1], hw[0]), dst=dst, interpolation=cv2.INTER_LINEAR)
        jobs = [(r, j, [self._pool.submit(resize, images[r.first + j], r.staging_np[j], r.content_hw)])
                for r in plan.runs for j in range(r.count)]
        self._upload_when_done(jobs)

    def _upload_when_done(self, jobs: List[Tuple[_Run, int, List[Any]]]) -> None:
        assert self.timer is not None
        first = True
        for r, j, futs in jobs:
            for f in futs:
                f.result()
            if first:  # the stage's GPU work starts with the first upload
                self.timer.start()
                first = False
            r.upload[j].copy_(r.staging[j], non_blocking=True)

    def _bound(self, r: _Run):
        """fit_batch with this run's constants bound: the one tensor argument is the uploaded batch."""
        out_hw = (int(self.target.shape[2]), int(self.target.shape[3]))
        rgb, norm, dtype = self._rgb, self._norm, self.target.dtype
        return lambda upload: fit_batch(upload, out_hw, r.content_hw, rgb, norm, dtype)

    def __call__(self, images: Sequence[np.ndarray]) -> Tuple[Any, List[ImageMeta]]:
        with self._torch.inference_mode():  # as the network's own calls: no autograd bookkeeping
            return self._run(images)

    def _run(self, images: Sequence[np.ndarray]) -> Tuple[Any, List[ImageMeta]]:
        target, metas = self._enqueue(images)
        if self.cuda:
            assert self.timer is not None
            self._torch.cuda.current_stream().synchronize()
            self.timer.read()
        return target, metas

    def enqueue(self, images: Sequence[np.ndarray]) -> Tuple[Any, List[ImageMeta]]:
        """The stage queued on the current stream, not waited for: read `timer` after a later sync."""
        with self._torch.inference_mode():
            return self._enqueue(images)

    def _enqueue(self, images: Sequence[np.ndarray]) -> Tuple[Any, List[ImageMeta]]:
        key = tuple(img.shape for img in images)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(images)
        torch = self._torch
        if not self.cuda:
            for r in plan.runs:
                if self.host_resize:
                    import cv2
                    src = torch.from_numpy(np.stack([cv2.resize(im, (r.content_hw[1], r.content_hw[0]),
                                                                interpolation=cv2.INTER_LINEAR)
                                                     if im.shape[:2] != r.content_hw else im
                                                     for im in images[r.first:r.first + r.count]]))
                else:
                    src = torch.from_numpy(np.stack(images[r.first:r.first + r.count]))
                self.target[r.first:r.first + r.count] = self._bound(r)(src)
            return self.target, plan.metas
        self._stage(plan, images)  # starts the timer before the first upload
        assert self.timer is not None
        plan.graph.replay()
        self.timer.stop()
        return self.target, plan.metas
