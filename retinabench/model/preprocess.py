"""Image -> network blob, into buffers that are reused from loop to loop.

Two input modes, as the originals did it, and one for datasets:
- `native`: the image as it is (insightface's `detect()` at scale 1.0); a batch needs equal sizes.
- `fit`: resize keeping the aspect ratio so the image fits width x height, then pad bottom/right
  with zeros (the C++ port: 1280x886 becomes 1280x896 at scale 1.0).
- `pad`: as `fit`, but never enlarging: an image that fits is placed at scale 1.0 on the canvas
  (a dataset's images of many sizes through one network shape, each at its original scale).

The hot path is one cv2.split into preallocated uint8 planes, then one pass per plane that writes
the float32 blob: a uint8 -> float32 copy when the family feeds raw pixels (insightface), the
subtraction of the mean in the conversion itself when std is 1 (biubug6: `np.subtract` with a
float32 loop, one read of the plane, one write of the blob), and a 256-entry float32 lookup table
(cv2.LUT) otherwise, which is (x - mean) * (1 / std) computed once per byte value with the same
float32 operations as the two in-place passes it replaces, so the blob is the same bit for bit.
The blob's write is the stage's floor: 13.8 MB at 1280x896, as long as a memset of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from retinabench.errors import BenchError

INPUT_MODES = ("native", "fit", "pad")


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


def fit_geometry(width: int, height: int, target_w: int, target_h: int, enlarge: bool = True) -> Tuple[float, int, int]:
    scale = min(target_w / width, target_h / height)
    if not enlarge:
        scale = min(1.0, scale)
    return scale, min(target_w, int(round(width * scale))), min(target_h, int(round(height * scale)))


class Preprocessor:
    """Callable: list of BGR uint8 images -> (float32 NCHW blob, metas). Not thread-safe."""

    def __init__(self, norm: Normalization, mode: str, size: Optional[Tuple[int, int]] = None):
        if mode not in INPUT_MODES:
            raise BenchError(f"input mode {mode!r}: expected one of {', '.join(INPUT_MODES)}")
        if mode in ("fit", "pad") and size is None:
            raise BenchError(f"input mode {mode!r} needs a size (width x height)")
        self.norm = norm
        self.mode = mode
        self.size = size
        self._blob: Optional[np.ndarray] = None
        self._filled: List[Tuple[int, int]] = []  # content extent written per batch slot
        self._planes: dict = {}
        self._resized: dict = {}
        self._src_channels = (2, 1, 0) if norm.order == "rgb" else (0, 1, 2)
        mean = np.asarray(norm.mean, np.float32)
        inv_std = 1.0 / np.asarray(norm.std, np.float32)
        # Per output channel, the one pass that writes it: ("copy", None) for a plain uint8 -> float32
        # copy, ("sub", mean) for x - mean in float32, ("lut", table) for (x - mean) * (1 / std), the
        # table holding those float32 operations done once for each of the 256 byte values.
        self._ops: List[Tuple[str, Optional[np.ndarray]]] = []
        for c in range(3):
            if inv_std[c] != 1.0:
                lut = np.arange(256, dtype=np.float32)
                lut -= mean[c]
                lut *= inv_std[c]
                self._ops.append(("lut", lut.reshape(1, 256)))
            elif mean[c] != 0:
                self._ops.append(("sub", mean[c:c + 1].reshape(())))
            else:
                self._ops.append(("copy", None))

    def blob_shape(self, images: Sequence[np.ndarray]) -> Tuple[int, int, int, int]:
        if self.mode in ("fit", "pad"):
            w, h = self.size  # type: ignore[misc]
            return (len(images), 3, h, w)
        h, w = images[0].shape[:2]
        for im in images[1:]:
            if im.shape[:2] != (h, w):
                raise BenchError("input mode 'native' needs images of one size in a batch; use 'fit'")
        return (len(images), 3, h, w)

    def __call__(self, images: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[ImageMeta]]:
        for img in images:
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
                raise BenchError(f"preprocess: expected 8-bit BGR images (H x W x 3, or H x W x 4 whose 4th "
                                 f"channel is ignored), got {img.dtype} {img.shape}")
        shape = self.blob_shape(images)
        if self._blob is None or self._blob.shape != shape:
            self._blob = np.zeros(shape, np.float32)
            self._filled = [(shape[2], shape[3])] * shape[0]
        blob = self._blob
        metas = []
        for b, img in enumerate(images):
            h, w = img.shape[:2]
            if self.mode in ("fit", "pad"):
                scale, cw, ch = fit_geometry(w, h, shape[3], shape[2], enlarge=self.mode == "fit")
                if (cw, ch) != (w, h):
                    key = (cw, ch, img.shape[2])
                    dst = self._resized.get(key)
                    if dst is None:
                        dst = self._resized[key] = np.empty((ch, cw, img.shape[2]), np.uint8)
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
        key = (cw, ch, img.shape[2])
        planes = self._planes.get(key)
        if planes is None:
            planes = self._planes[key] = [np.empty((ch, cw), np.uint8) for _ in range(img.shape[2])]
        cv2.split(np.ascontiguousarray(img), planes)
        for c, src in enumerate(self._src_channels):
            out, (kind, value) = blob[b, c, :ch, :cw], self._ops[c]
            if kind == "copy":
                np.copyto(out, planes[src], casting="unsafe")
            elif kind == "sub":
                np.subtract(planes[src], value, out=out, dtype=np.float32)
            else:
                cv2.LUT(planes[src], value, dst=out)
