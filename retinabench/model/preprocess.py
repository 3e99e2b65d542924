"""Image -> network blob, into buffers that are reused from loop to loop.

Two input modes, as the originals did it:
- `native`: the image as it is (insightface's `detect()` at scale 1.0); a batch needs equal sizes.
- `fit`: resize keeping the aspect ratio so the image fits width x height, then pad bottom/right
  with zeros (the C++ port: 1280x886 becomes 1280x896 at scale 1.0).

The hot path is one cv2.split into preallocated uint8 planes and one contiguous uint8->float32
copy per plane (0.8 ms for t1.jpg at 1280x896 on the 2-core CI machine, against 1.5 ms for a
strided numpy copy and 9 ms for cv2.dnn.blobFromImage). Mean/std passes run only when the
family asks for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from retinabench.errors import BenchError

INPUT_MODES = ("native", "fit")


@dataclass(frozen=True)
class Normalization:
    """What a family's network expects: channel order and (x - mean) / std per channel."""

    order: str = "rgb"  # "rgb" or "bgr"; images arrive BGR (OpenCV)
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ImageMeta:
    """How blob pixels map back to the original image: original = blob / scale."""

    scale: float
    content_width: int   # the resized image's extent inside the blob (the rest is padding)
    content_height: int
    width: int           # the original image
    height: int

    @property
    def clip_max(self) -> np.ndarray:
        """Upper clip bounds for (x1, y1, x2, y2) in blob pixels: the content's last column/row."""
        return np.array([self.content_width - 1, self.content_height - 1] * 2, np.float32)


def fit_geometry(width: int, height: int, target_w: int, target_h: int) -> Tuple[float, int, int]:
    scale = min(target_w / width, target_h / height)
    return scale, min(target_w, int(round(width * scale))), min(target_h, int(round(height * scale)))


class Preprocessor:
    """Callable: list of BGR uint8 images -> (float32 NCHW blob, metas). Not thread-safe."""

    def __init__(self, norm: Normalization, mode: str, size: Optional[Tuple[int, int]] = None):
        if mode not in INPUT_MODES:
            raise BenchError(f"input mode {mode!r}: expected one of {', '.join(INPUT_MODES)}")
        if mode == "fit" and size is None:
            raise BenchError("input mode 'fit' needs a size (width x height)")
        self.norm = norm
        self.mode = mode
        self.size = size
        self._blob: Optional[np.ndarray] = None
        self._filled: List[Tuple[int, int]] = []  # content extent written per batch slot
        self._planes: dict = {}
        self._resized: dict = {}
        self._src_channels = (2, 1, 0) if norm.order == "rgb" else (0, 1, 2)
        self._mean = np.asarray(norm.mean, np.float32)
        self._inv_std = 1.0 / np.asarray(norm.std, np.float32)
        self._plain = not self._mean.any() and bool(np.all(self._inv_std == 1.0))

    def blob_shape(self, images: Sequence[np.ndarray]) -> Tuple[int, int, int, int]:
        if self.mode == "fit":
            w, h = self.size  # type: ignore[misc]
            return (len(images), 3, h, w)
        h, w = images[0].shape[:2]
        for im in images[1:]:
            if im.shape[:2] != (h, w):
                raise BenchError("input mode 'native' needs images of one size in a batch; use 'fit'")
        return (len(images), 3, h, w)

    def __call__(self, images: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[ImageMeta]]:
        shape = self.blob_shape(images)
        if self._blob is None or self._blob.shape != shape:
            self._blob = np.zeros(shape, np.float32)
            self._filled = [(shape[2], shape[3])] * shape[0]
        blob = self._blob
        metas = []
        for b, img in enumerate(images):
            h, w = img.shape[:2]
            if self.mode == "fit":
                scale, cw, ch = fit_geometry(w, h, shape[3], shape[2])
                if (cw, ch) != (w, h):
                    dst = self._resized.get((cw, ch))
                    if dst is None:
                        dst = self._resized[(cw, ch)] = np.empty((ch, cw, 3), np.uint8)
                    cv2.resize(img, (cw, ch), dst=dst, interpolation=cv2.INTER_LINEAR)
                    img = dst
            else:
                scale, cw, ch = 1.0, w, h
            self._write(blob, b, img, cw, ch)
            metas.append(ImageMeta(scale, cw, ch, w, h))
        return blob, metas

    def _write(self, blob: np.ndarray, b: int, img: np.ndarray, cw: int, ch: int) -> None:
        fh, fw = self._filled[b]
        if fh > ch or fw > cw:  # padding must be zero where a larger image was before
            blob[b, :, ch:, :] = 0
            blob[b, :, :, cw:] = 0
        self._filled[b] = (ch, cw)
        planes = self._planes.get((cw, ch))
        if planes is None:
            planes = self._planes[(cw, ch)] = [np.empty((ch, cw), np.uint8) for _ in range(3)]
        cv2.split(np.ascontiguousarray(img), planes)
        for c, src in enumerate(self._src_channels):
            out = blob[b, c, :ch, :cw]
            np.copyto(out, planes[src], casting="unsafe")
            if not self._plain:
                out -= self._mean[c]
                out *= self._inv_std[c]
