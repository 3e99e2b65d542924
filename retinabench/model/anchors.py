"""insightface's anchor generator (rcnn/processing/generate_anchor.py), for mnet.25's 'net3' config.

Anchors are (x1, y1, x2, y2) with the "+1" width convention. For a feature map of H x W at a
stride, anchor (y, x, a) is base_anchor[a] shifted by (x * stride, y * stride): the layout of
insightface's `anchors_plane`, which matches the (H, W, A) order of the transposed outputs.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

# net3: strides 32/16/8, base size 16, ratio 1, two scales each.
NET3: Dict[int, Tuple[int, ...]] = {32: (32, 16), 16: (8, 4), 8: (2, 1)}


def _whctrs(anchor: np.ndarray) -> Tuple[float, float, float, float]:
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _mkanchors(ws: np.ndarray, hs: np.ndarray, x_ctr: float, y_ctr: float) -> np.ndarray:
    ws, hs = ws[:, None], hs[:, None]
    return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))


def base_anchors(base_size: int = 16, ratios: Sequence[float] = (1.0,), scales: Sequence[float] = (32, 16)) -> np.ndarray:
    """Ratio then scale enumeration around the base box [0, 0, base_size-1, base_size-1]."""
    base = np.array([1, 1, base_size, base_size], np.float64) - 1
    w, h, x, y = _whctrs(base)
    size_ratios = (w * h) / np.asarray(ratios, np.float64)
    ws = np.round(np.sqrt(size_ratios))
    hs = np.round(ws * np.asarray(ratios, np.float64))
    ratio_anchors = _mkanchors(ws, hs, x, y)
    out = []
    for anchor in ratio_anchors:
        w, h, x, y = _whctrs(anchor)
        out.append(_mkanchors(w * np.asarray(scales, np.float64), h * np.asarray(scales, np.float64), x, y))
    return np.vstack(out).astype(np.float32)


def net3_base_anchors() -> Dict[int, np.ndarray]:
    return {stride: base_anchors(16, (1.0,), scales) for stride, scales in NET3.items()}


def anchors_plane(height: int, width: int, stride: int, base: np.ndarray) -> np.ndarray:
    """All anchors of one feature map, shape [H, W, A, 4]."""
    xs = np.arange(width, dtype=np.float32) * stride
    ys = np.arange(height, dtype=np.float32) * stride
    shift = np.zeros((height, width, 1, 4), np.float32)
    shift[..., 0] = shift[..., 2] = xs[None, :, None]
    shift[..., 1] = shift[..., 3] = ys[:, None, None]
    return shift + base[None, None, :, :]
