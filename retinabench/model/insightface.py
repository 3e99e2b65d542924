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
from retinabench.model.anchors import net3_base_anchors
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
    """Callable: network outputs (dict by name) + metas -> one `Faces` per image."""

    def __init__(self, output_names: Sequence[str], threshold: float, nms_threshold: float = NMS_THRESHOLD):
        self.roles = output_roles(output_names)
        self.threshold = float(threshold)
        self.nms_threshold = nms_threshold
        self.base = net3_base_anchors()

    def __call__(self, outputs: Dict[str, np.ndarray], metas: List[ImageMeta]) -> List[Faces]:
        return [self._one(outputs, b, meta) for b, meta in enumerate(metas)]

    def _one(self, outputs: Dict[str, np.ndarray], b: int, meta: ImageMeta) -> Faces:
        anchors, scores, deltas, lmks = [], [], [], []
        for stride, (cls_name, bbox_name, lmk_name) in self.roles.items():
            base = self.base[stride]
            a = base.shape[0]
            fg = outputs[cls_name][b, a:]                       # [A, H, W] foreground probability
            h, w = fg.shape[1:]
            flat = fg.reshape(-1)
            idx = np.flatnonzero(flat >= self.threshold)
            if idx.size == 0:
                continue
            ai, cell = np.divmod(idx, h * w)
            yi, xi = np.divmod(cell, w)
            anchor = base[ai]                                   # fancy indexing copies
            anchor[:, 0::2] += (xi * stride)[:, None]
            anchor[:, 1::2] += (yi * stride)[:, None]
            anchors.append(anchor)
            scores.append(flat[idx])
            deltas.append(outputs[bbox_name][b].reshape(a, 4, h * w)[ai, :, cell])
            lmks.append(outputs[lmk_name][b].reshape(a, 10, h * w)[ai, :, cell])
        if not scores:
            return Faces.empty()
        if len(scores) == 1:
            anchor, score, delta, lmk = anchors[0], scores[0], deltas[0], lmks[0]
        else:
            anchor, score = np.concatenate(anchors), np.concatenate(scores)
            delta, lmk = np.concatenate(deltas), np.concatenate(lmks)
        box, landmarks = _decode(anchor, delta.astype(np.float32, copy=False),
                                 lmk.astype(np.float32, copy=False).reshape(-1, 5, 2))
        # Clip to the image content, as insightface's clip_boxes does (to the whole blob there,
        # which is the image itself in native mode).
        np.minimum(box[:, 0::2], meta.content_width - 1, out=box[:, 0::2])
        np.minimum(box[:, 1::2], meta.content_height - 1, out=box[:, 1::2])
        np.maximum(box, 0, out=box)
        keep = nms(box, score, self.nms_threshold, plus_one=True)
        if meta.scale != 1.0:
            inv = np.float32(1.0 / meta.scale)
            return Faces(box[keep] * inv, score[keep].astype(np.float32), landmarks[keep] * inv)
        return Faces(box[keep], score[keep].astype(np.float32), landmarks[keep])


def _decode(anchor: np.ndarray, deltas: np.ndarray, lmk: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """insightface's bbox_pred / landmark_pred, in float32 like the reference."""
    w = anchor[:, 2] - anchor[:, 0] + 1.0
    h = anchor[:, 3] - anchor[:, 1] + 1.0
    cx = anchor[:, 0] + 0.5 * (w - 1.0)
    cy = anchor[:, 1] + 0.5 * (h - 1.0)
    pcx = deltas[:, 0] * w + cx
    pcy = deltas[:, 1] * h + cy
    pw = np.exp(deltas[:, 2]) * w
    ph = np.exp(deltas[:, 3]) * h
    box = np.stack([pcx - 0.5 * (pw - 1.0), pcy - 0.5 * (ph - 1.0),
                    pcx + 0.5 * (pw - 1.0), pcy + 0.5 * (ph - 1.0)], axis=1).astype(np.float32)
    out = np.empty_like(lmk)
    out[:, :, 0] = lmk[:, :, 0] * w[:, None] + cx[:, None]
    out[:, :, 1] = lmk[:, :, 1] * h[:, None] + cy[:, None]
    return box, out
