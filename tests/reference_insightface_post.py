"""insightface family's postprocessing as it was before the fewer-calls change, kept verbatim.

retinabench/model/nms.py's `nms` and retinabench/model/insightface.py's `InsightFaceDecoder` and
`_decode` (the class renamed `ReferenceInsightFaceDecoder`), the reference that
tests/test_postprocess_reference.py compares the current implementation with. Its helpers
(output roles, anchors) are unchanged and imported.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from retinabench.model.anchors import anchors_plane, net3_base_anchors
from retinabench.model.detections import Faces
from retinabench.model.insightface import NMS_THRESHOLD, output_roles
from retinabench.model.preprocess import ImageMeta


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


class ReferenceInsightFaceDecoder:
    """Callable: network outputs (dict by name) + metas -> one `Faces` per image.

    Every numpy call here runs once per stride or once per image, never per anchor or per face:
    after inference has flushed the caches, each call costs a few microseconds, so their count
    is what the stage's time is made of.
    """

    def __init__(self, output_names: Sequence[str], threshold: float, nms_threshold: float = NMS_THRESHOLD):
        self.roles = output_roles(output_names)
        self.threshold = float(threshold)
        self.nms_threshold = nms_threshold
        self.base = net3_base_anchors()
        self._planes: Dict[Tuple[int, int, int], np.ndarray] = {}

    def _anchors(self, stride: int, h: int, w: int) -> np.ndarray:
        """All anchors of a feature map as [A * H * W, 4], in the outputs' (anchor, y, x) order."""
        key = (stride, h, w)
        plane = self._planes.get(key)
        if plane is None:
            plane = anchors_plane(h, w, stride, self.base[stride]).transpose(2, 0, 1, 3).reshape(-1, 4)
            plane = self._planes[key] = np.ascontiguousarray(plane)
        return plane

    def __call__(self, outputs: Dict[str, np.ndarray], metas: List[ImageMeta]) -> List[Faces]:
        return [self._one(outputs, b, meta) for b, meta in enumerate(metas)]

    def _one(self, outputs: Dict[str, np.ndarray], b: int, meta: ImageMeta) -> Faces:
        anchors, scores, deltas, lmks = [], [], [], []
        for stride, (cls_name, bbox_name, lmk_name) in self.roles.items():
            cls = outputs[cls_name][b]
            a2, h, w = cls.shape
            a, hw = a2 // 2, h * w
            fg = cls[a:].reshape(-1)                    # foreground probability, (anchor, y, x) order
            idx = np.flatnonzero(fg >= self.threshold)
            if idx.size == 0:
                continue
            ai, cell = np.divmod(idx, hw)
            anchors.append(self._anchors(stride, h, w)[idx])
            scores.append(fg[idx])
            deltas.append(outputs[bbox_name][b].reshape(a, 4, hw)[ai, :, cell])
            lmks.append(outputs[lmk_name][b].reshape(a, 10, hw)[ai, :, cell])
        if not scores:
            return Faces.empty()
        if len(scores) == 1:
            anchor, score, delta, lmk = anchors[0], scores[0], deltas[0], lmks[0]
        else:
            anchor, score = np.concatenate(anchors), np.concatenate(scores)
            delta, lmk = np.concatenate(deltas), np.concatenate(lmks)
        box, landmarks = _decode(anchor, delta.astype(np.float32, copy=False), lmk.astype(np.float32, copy=False))
        # Clip to the image content, as insightface's clip_boxes does (to the whole blob there,
        # which is the image itself in native mode).
        np.minimum(box, meta.clip_max, out=box)
        np.maximum(box, 0, out=box)
        keep = nms(box, score, self.nms_threshold, plus_one=True)
        if meta.scale != 1.0:
            inv = np.float32(1.0 / meta.scale)
            return Faces(box[keep] * inv, score[keep].astype(np.float32), landmarks[keep] * inv)
        return Faces(box[keep], score[keep].astype(np.float32), landmarks[keep])


def _decode(anchor: np.ndarray, deltas: np.ndarray, lmk: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """insightface's bbox_pred / landmark_pred ("+1" sizes, exp for w/h, linear landmarks), float32.

    anchor, deltas: [n, 4]; lmk: [n, 10] as (x, y) pairs. Returns boxes [n, 4], landmarks [n, 5, 2].
    """
    wh = anchor[:, 2:] - anchor[:, :2] + np.float32(1.0)
    ctr = anchor[:, :2] + np.float32(0.5) * (wh - np.float32(1.0))
    pctr = deltas[:, :2] * wh + ctr
    half = np.float32(0.5) * (np.exp(deltas[:, 2:]) * wh - np.float32(1.0))
    box = np.concatenate((pctr - half, pctr + half), axis=1)
    landmarks = lmk.reshape(-1, 5, 2) * wh[:, None, :] + ctr[:, None, :]
    return box, landmarks
