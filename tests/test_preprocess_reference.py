"""The one-pass Preprocessor against the implementation it replaced, kept here verbatim.

The reference is the Preprocessor as it was before every family's blob was written in one pass per
plane (cv2.split, a uint8 -> float32 copy per plane, then in-place `-= mean` and `*= 1 / std`
passes unless the family feeds raw pixels). The blobs must be the same bit for bit
(np.array_equal on float32), the metas equal, for both families, in both modes, for batches, for
the reuse of the buffers from call to call (stale padding) and for a family with std != 1 (the
lookup table holds the same float32 operations, so there too the blob is bit-identical).

Inputs the reference did not define: it split any image into three preallocated uint8 planes,
so a grayscale, 16-bit or float image left planes it never wrote (np.empty memory) in the blob.
Those are refused now with a BenchError. A 4-channel (BGRA) image was defined in native mode
(its 4th channel ignored) and stays so; in fit mode it is resized as it is and its 4th channel
ignored, which equals the 3-channel image's blob.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest

from retinabench.errors import BenchError
from retinabench.model import biubug6, insightface
from retinabench.model.preprocess import INPUT_MODES, ImageMeta, Normalization, Preprocessor, fit_geometry

FAMILIES = {"insightface": insightface.NORMALIZATION, "biubug6": biubug6.NORMALIZATION}
# A family that does not exist, to cover what the two real ones do not: std != 1, a mean that is
# not an integer, channels that differ in kind (copy, subtract, table).
IMAGENET = Normalization("rgb", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
MIXED = Normalization("bgr", (0.0, 117.25, -3.5), (1.0, 1.0, 0.3))


# ---- the reference: retinabench/model/preprocess.py's Preprocessor before the one-pass change, verbatim
class ReferencePreprocessor:
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


# ---- comparisons
def _same(new: Preprocessor, ref: ReferencePreprocessor, images) -> np.ndarray:
    blob, metas = new(images)
    ref_blob, ref_metas = ref(images)
    assert blob.dtype == ref_blob.dtype == np.float32
    assert blob.shape == ref_blob.shape
    assert np.array_equal(blob, ref_blob)
    assert metas == ref_metas
    return blob


def _pair(norm: Normalization, mode: str, size: Optional[Tuple[int, int]]):
    return Preprocessor(norm, mode, size), ReferencePreprocessor(norm, mode, size)


@pytest.fixture(scope="module")
def portrait(t1_image):
    """t1.jpg turned on its side: in fit mode at 1280x896 its content is narrower than the blob."""
    return np.ascontiguousarray(t1_image.transpose(1, 0, 2)[:, ::-1])


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode, size", [("fit", (1280, 896)), ("fit", (320, 416)), ("native", None)])
def test_blob_is_bit_identical_to_the_reference(t1_image, family, mode, size):
    new, ref = _pair(FAMILIES[family], mode, size)
    blob = _same(new, ref, [t1_image])
    _same(new, ref, [t1_image])  # the second call writes into the reused buffers
    if family == "biubug6":
        assert blob.min() == -123.0  # the mean is there: 0 - 123 in the red plane
    else:
        assert blob.min() == 0.0


@pytest.mark.parametrize("norm", [IMAGENET, MIXED], ids=["imagenet", "mixed"])
@pytest.mark.parametrize("mode, size", [("fit", (1280, 896)), ("fit", (320, 416)), ("native", None)])
def test_std_not_one_is_bit_identical_too(t1_image, norm, mode, size):
    new, ref = _pair(norm, mode, size)
    _same(new, ref, [t1_image])


@pytest.mark.parametrize("norm", [FAMILIES["insightface"], FAMILIES["biubug6"], IMAGENET, MIXED],
                         ids=["insightface", "biubug6", "imagenet", "mixed"])
def test_every_byte_value_maps_as_before(norm):
    """All 256 values in every channel, in native mode: the tables and the subtraction cover the range."""
    img = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1)
    img[..., 1] = img[..., 1][::-1]
    new, ref = _pair(norm, "native", None)
    _same(new, ref, [img])


@pytest.mark.parametrize("family", sorted(FAMILIES) + ["imagenet"])
def test_batch_of_two_sizes_and_buffer_reuse(t1_image, portrait, family):
    """Batches of differently sized images in fit mode, then smaller and larger images in the same
    slots: the padding where a larger image was must be zero again, as the reference makes it."""
    norm = IMAGENET if family == "imagenet" else FAMILIES[family]
    small = t1_image[100:400, 200:700]
    for size in [(1280, 896), (320, 416)]:
        new, ref = _pair(norm, "fit", size)
        _same(new, ref, [t1_image, portrait])
        _same(new, ref, [small, t1_image])
        _same(new, ref, [portrait, small])
        _same(new, ref, [t1_image, t1_image])
        _same(new, ref, [small])  # batch size changes: a new blob


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_native_batch_and_non_contiguous_images(t1_image, family):
    new, ref = _pair(FAMILIES[family], "native", None)
    flipped = t1_image[:, ::-1]  # a view with negative strides
    _same(new, ref, [t1_image, flipped])
    _same(new, ref, [t1_image[::2, ::2]])
    new, ref = _pair(FAMILIES[family], "fit", (320, 416))
    _same(new, ref, [flipped, t1_image[::2, ::2]])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_content_narrower_than_the_blob(portrait, family):
    """The content is a strided view of each plane (rows of 1280, 620 written): every path writes there."""
    for norm in (FAMILIES[family], IMAGENET):
        new, ref = _pair(norm, "fit", (1280, 896))
        blob = _same(new, ref, [portrait])
        assert not blob[0, :, :, 620:].any()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bgra_ignores_the_fourth_channel(t1_image, family):
    alpha = (np.arange(t1_image.shape[0] * t1_image.shape[1]) % 251).astype(np.uint8)
    bgra = np.dstack([t1_image, alpha.reshape(t1_image.shape[:2])])
    norm = FAMILIES[family]
    # native: as the reference did it
    new, ref = _pair(norm, "native", None)
    _same(new, ref, [bgra])
    # fit with a resize (the reference wrote uninitialised memory there): the BGR image's blob
    for size in [(320, 416), (1280, 896), (1000, 1000)]:
        blob = Preprocessor(norm, "fit", size)([bgra])[0].copy()
        assert np.array_equal(blob, ReferencePreprocessor(norm, "fit", size)([t1_image])[0])


@pytest.mark.parametrize("image", [
    np.zeros((40, 50), np.uint8),                 # grayscale
    np.zeros((40, 50, 1), np.uint8),              # grayscale with a channel axis
    np.zeros((40, 50, 2), np.uint8),
    np.zeros((40, 50, 3), np.uint16),             # 16-bit
    np.zeros((40, 50, 3), np.float32),
], ids=["gray", "gray1", "two", "uint16", "float32"])
@pytest.mark.parametrize("mode", INPUT_MODES)
def test_undefined_inputs_are_refused(image, mode):
    pre = Preprocessor(FAMILIES["biubug6"], mode, (64, 64) if mode in ("fit", "pad") else None)
    with pytest.raises(BenchError, match="8-bit BGR"):
        pre([image])
    with pytest.raises(BenchError, match="8-bit BGR"):
        pre([np.zeros((40, 50, 3), np.uint8), image])


def test_no_multiply_when_std_is_one():
    """The families' channels are written by a copy or a subtraction, never a table or a multiply."""
    assert [k for k, _ in Preprocessor(FAMILIES["insightface"], "native")._ops] == ["copy"] * 3
    assert [k for k, _ in Preprocessor(FAMILIES["biubug6"], "native")._ops] == ["sub"] * 3
    assert [k for k, _ in Preprocessor(MIXED, "native")._ops] == ["copy", "sub", "lut"]
