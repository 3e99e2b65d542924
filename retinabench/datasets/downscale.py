"""A dataset's photos at a smaller scale, written once as PNG, with the boxes transformed exactly.

Size: an image of w x h pixels at scale s becomes W x H = round_half_up(w * s) x round_half_up(h * s)
(at least 1), with s taken as the exact decimal written (fractions.Fraction("0.35") = 7/20, so
500 x 0.35 is 175, not 174.99999999999997). Pixels: cv2.resize(..., (W, H), cv2.INTER_AREA),
written losslessly as PNG under the cache, once; a later call reuses a PNG of the right size.

Boxes: the resize maps the image's outer edges onto each other (OpenCV's half-pixel-centre
mapping: source x = (dest x + 0.5) * w / W - 0.5 for pixel centres, so pixel *edges* scale by
W / w exactly). In our exclusive-edge convention a box is a pair of edges, so
    x1' = x1 * W / w,  x2' = x2 * W / w,  y1' = y1 * H / h,  y2' = y2 * H / h
with the actual ratios in x and y (which differ from s, and from each other, by the rounding).
"""
from __future__ import annotations

import math
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from retinabench.datasets.image_size import image_size
from retinabench.datasets.records import DatasetError, Item


def parse_scale(text: str, source: str) -> Fraction:
    """A scale in (0, 1] as an exact fraction of the decimal written; DatasetError otherwise."""
    try:
        s = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise DatasetError(f"{source}: scale {text!r} is not a number (write e.g. @0.5)") from None
    if not 0 < s <= 1:
        raise DatasetError(f"{source}: scale {text} is outside (0, 1] (the photos are only ever downscaled)")
    return s


def scaled_size(width: int, height: int, scale: Fraction) -> Tuple[int, int]:
    """round_half_up(w * s) x round_half_up(h * s), computed exactly, at least 1 x 1."""
    return (max(1, math.floor(width * scale + Fraction(1, 2))),
            max(1, math.floor(height * scale + Fraction(1, 2))))


def scale_boxes(boxes: np.ndarray, size: Tuple[int, int], new_size: Tuple[int, int]) -> np.ndarray:
    """Boxes x1,y1,x2,y2 of an image of `size` (w, h) in the image resized to `new_size` (W, H)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    num = np.array([new_size[0], new_size[1], new_size[0], new_size[1]], dtype=np.float64)
    den = np.array([size[0], size[1], size[0], size[1]], dtype=np.float64)
    # multiply, then divide: for integer coordinates x * W is exact, so x * W / w is correctly rounded
    return b * num / den


def scale_items(items: Sequence[Item], scale_text: str, out_root: Path, source: Path
                ) -> Tuple[List[Item], Dict[str, Any]]:
    """The items downscaled into out_root/<scale>/NAME.png (written once); (items, facts for describe())."""
    scale = parse_scale(scale_text, str(source))
    out_dir = Path(out_root) / _scale_label(scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: List[Item] = []
    sizes = {}
    for it in items:
        new_size = scaled_size(it.size[0], it.size[1], scale)
        target = out_dir / (Path(it.path).stem + ".png")
        if not (target.is_file() and _size_or_none(target) == new_size):
            _write_scaled(it.path, target, new_size)
        result.append(Item(path=target, key=it.key, size=new_size, boxes=scale_boxes(it.boxes, it.size, new_size),
                           ignore=it.ignore.copy(), settings={k: v.copy() for k, v in it.settings.items()}))
        sizes[it.key] = [it.size[0], it.size[1], new_size[0], new_size[1]]
    facts = {"scale": float(scale), "scale_exact": str(scale),
             "resize": "cv2.INTER_AREA to round_half_up(w*s) x round_half_up(h*s), PNG; boxes times W/w and H/h",
             "sizes": sizes}
    return result, facts


def _scale_label(scale: Fraction) -> str:
    return f"{float(scale):g}" if Fraction(f"{float(scale):g}") == scale else f"{scale.numerator}-{scale.denominator}"


def _size_or_none(path: Path):
    try:
        return image_size(path)
    except DatasetError:
        return None


def _write_scaled(src: Path, target: Path, size: Tuple[int, int]) -> None:
    import cv2

    from retinabench.errors import BenchError
    from retinabench.model.images import load_image

    try:
        img = load_image(src)
    except BenchError as e:
        raise DatasetError(str(e)) from None
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", small)
    if not ok:
        raise DatasetError(f"{target}: OpenCV could not encode the downscaled image")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.tobytes())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
