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
    the count of calls is what the stage's time is made of, and right after inference (the
    runtime has had the core: benchmarks/stage_costs.py) the first call of each kind costs tens
    of microseconds instead of one, so the kinds of call count too. Per stride: one threshold
    pass over the face scores into a reused mask and one nonzero; for a stride with candidates a
    divmod and four gathers (the anchors from a per-map table that already holds their sizes and
    centres). The candidates are decoded as rows (one row per coordinate, one column per
    candidate): every call then runs one long loop, where [n, 4] columns made numpy loop over
    pairs. Not thread-safe (the mask).
    """

    def __init__(self, output_names: Sequence[str], threshold: float, nms_threshold: float = NMS_THRESHOLD):
        self.roles = output_roles(output_names)
        self.threshold = float(threshold)
        self.nms_threshold = nms_threshold
        self.base = net3_base_anchors()
        self._planes: Dict[Tuple[int, int, int], np.ndarray] = {}
        self._tables: Dict[Tuple[int, int, int], np.ndarray] = {}
        self._masks: Dict[int, np.ndarray] = {}
        self._clip: Dict[Tuple[int, int], np.ndarray] = {}

    def _anchors(self, stride: int, h: int, w: int) -> np.ndarray:
        """All anchors of a feature map as [A * H * W, 4], in the outputs' (anchor, y, x) order."""
        key = (stride, h, w)
        plane = self._planes.get(key)
        if plane is None:
            plane = anchors_plane(h, w, stride, self.base[stride]).transpose(2, 0, 1, 3).reshape(-1, 4)
            plane = self._planes[key] = np.ascontiguousarray(plane)
        return plane

    def _table(self, stride: int, h: int, w: int) -> np.ndarray:
        """Rows w, h, centre x, centre y of all anchors [4, A * H * W]: `_decode`'s first steps, done once."""
        key = (stride, h, w)
        table = self._tables.get(key)
        if table is None:
            wh, ctr = _sizes_centres(self._anchors(stride, h, w))
            table = self._tables[key] = np.ascontiguousarray(np.concatenate((wh, ctr), axis=1).T)
        return table

    def __call__(self, outputs: Dict[str, np.ndarray], metas: List[ImageMeta]) -> List[Faces]:
        return [self._one(outputs, b, meta) for b, meta in enumerate(metas)]

    def _one(self, outputs: Dict[str, np.ndarray], b: int, meta: ImageMeta) -> Faces:
        tables, scores, deltas, lmks = [], [], [], []
        threshold, masks = self.threshold, self._masks
        for stride, (cls_name, bbox_name, lmk_name) in self.roles.items():
            cls = outputs[cls_name][b]
            a2, h, w = cls.shape
            a, hw = a2 // 2, h * w
            fg = cls[a:].reshape(-1)                    # foreground probability, (anchor, y, x) order
            mask = masks.get(fg.shape[0])
            if mask is None:
                mask = masks[fg.shape[0]] = np.empty(fg.shape[0], np.bool_)
            np.greater_equal(fg, threshold, out=mask)
            idx = mask.nonzero()[0]
            if idx.size == 0:
                continue
            ai, cell = np.divmod(idx, hw)
            tables.append(np.take(self._table(stride, h, w), idx, axis=1))
            scores.append(fg[idx])
            deltas.append(outputs[bbox_name][b].reshape(a, 4, hw)[ai, _ROWS4, cell])  # [4, n]
            lmks.append(outputs[lmk_name][b].reshape(a, 10, hw)[ai, :, cell].T)     # [10, n], a view
        if not scores:
            return Faces.empty()
        if len(scores) == 1:
            table, score = tables[0], scores[0]
            delta, lmk = deltas[0].astype(np.float32, copy=False), np.ascontiguousarray(lmks[0], np.float32)
        else:
            table, score = np.concatenate(tables, axis=1), np.concatenate(scores)
            delta = np.concatenate(deltas, axis=1).astype(np.float32, copy=False)
            lmk = np.concatenate(lmks, axis=1).astype(np.float32, copy=False)
        box, landmarks = _decode_rows(table, delta, lmk)
        # Clip to the image content, as insightface's clip_boxes does (to the whole blob there,
        # which is the image itself in native mode).
        clip = self._clip.get((meta.content_width, meta.content_height))
        if clip is None:
            clip = self._clip[(meta.content_width, meta.content_height)] = meta.clip_max[:, None]
        np.minimum(box, clip, out=box)
        np.maximum(box, _ZERO32, out=box)
        keep = nms(box.T, score, self.nms_threshold, plus_one=True)
        box, landmarks = box.T[keep], landmarks.transpose(2, 0, 1)[keep]
        score = score[keep].astype(np.float32, copy=False)
        if meta.scale != 1.0:
            inv = np.float32(1.0 / meta.scale)
            box *= inv
            landmarks *= inv
        return Faces(box, score, landmarks)


_ROWS4 = np.arange(4)[:, None]
_ZERO32 = np.zeros((), np.float32)
_ONE32 = np.ones((), np.float32)
_HALF32 = np.full((), 0.5, np.float32)


def _sizes_centres(anchor: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Anchors [n, 4] -> "+1" sizes [n, 2] and centres [n, 2], float32 as insightface computes them."""
    wh = anchor[:, 2:] - anchor[:, :2] + np.float32(1.0)
    ctr = anchor[:, :2] + np.float32(0.5) * (wh - np.float32(1.0))
    return wh, ctr


def _decode(anchor: np.ndarray, deltas: np.ndarray, lmk: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """insightface's bbox_pred / landmark_pred ("+1" sizes, exp for w/h, linear landmarks), float32.

    anchor, deltas: [n, 4]; lmk: [n, 10] as (x, y) pairs. Returns boxes [n, 4], landmarks [n, 5, 2].
    """
    wh, ctr = _sizes_centres(anchor)
    table = np.ascontiguousarray(np.concatenate((wh, ctr), axis=1).T)
    box, landmarks = _decode_rows(table, np.ascontiguousarray(deltas.T), np.ascontiguousarray(lmk.reshape(-1, 10).T))
    return np.ascontiguousarray(box.T), np.ascontiguousarray(landmarks.transpose(2, 0, 1))


def _decode_rows(table: np.ndarray, deltas: np.ndarray, lmk: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """`_decode` on rows: table [4, n] (w, h, centre x, centre y), deltas [4, n], lmk [10, n], float32.

    Returns boxes [4, n] (x1, y1, x2, y2) and landmarks [5, 2, n]: the same float32 operations in
    the same order as insightface's bbox_pred / landmark_pred, so the same values.
    """
    wh, ctr = table[:2], table[2:]
    box = np.empty(deltas.shape, np.float32)
    pctr = deltas[:2] * wh
    pctr += ctr
    half = np.exp(deltas[2:])
    half *= wh
    half -= _ONE32
    half *= _HALF32
    np.subtract(pctr, half, out=box[:2])
    np.add(pctr, half, out=box[2:])
    landmarks = lmk.reshape(5, 2, -1) * wh
    landmarks += ctr
    return box, landmarks
