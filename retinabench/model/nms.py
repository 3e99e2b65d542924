"""Greedy non-maximum suppression, vectorised over the candidates of each kept box."""
from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, plus_one: bool = True) -> np.ndarray:
    """Indices of kept boxes, highest score first.

    `plus_one` uses the pixel-inclusive area convention ((x2 - x1 + 1) * (y2 - y1 + 1)) of
    insightface's cpu_nms; a box is suppressed when its IoU with a kept box is >= threshold,
    as there.
    """
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    one = 1.0 if plus_one else 0.0
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou < threshold]
    return np.asarray(keep, np.int64)
