"""insightface's RetinaFace family (mnet.25, network 'net3'): decode and NMS, threshold first.

Outputs per stride s in (32, 16, 8): `..cls_prob..stride{s}` [B, 2A, H, W] (background for the
A anchors, then foreground), `..bbox..stride{s}` [B, 4A, H, W], `..landmark..stride{s}`
[B, 10A, H, W]. Only cells whose face score passes the threshold are decoded: 47k anchors at
1280x896 cost one comparison each, not a decode each.

Matches insightface's `RetinaFace.detect()` (scales [1.0], no flip): "+1" box widths, exp for
width/height deltas, linear landmarks, boxes clipped to the image, NMS 0.4 with ">= threshold"
suppression.
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from retinabench.errors import ModelError
from retinabench.model.anchors import anchors_plane, net3_base_anchors
from retinabench.model.detections import Faces
from retinabench.model.nms import nms
from retinabench.model.preprocess import ImageMeta, Normalization

NORMALIZATION = Normalization(order="rgb", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
STRIDES = (32, 16, 8)
NMS_THRESHOLD = 0.4


def output_roles(names: Sequence[str]) -> Dict[int, Tuple[str, str, str]]:
    """Map stride -> (cls, bbox, landmark) output names, found by insightface's naming."""
    roles: Dict[int, Tuple[str, str, str]] = {}
    for s in STRIDES:
        found = []
        for key in ("cls", "bbox", "landmark"):
            hits = [n for n in names if key in n and re.search(rf"stride{s}$", n)]
            if len(hits) != 1:
                raise ModelError(f"insightface family: need one '{key}' output for stride {s}, found {hits}")
            found.append(hits[0])
        roles[s] = (found[0], found[1], found[2])
    return roles


class InsightFaceDecoder:
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
