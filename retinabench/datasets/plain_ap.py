"""Plain AP at one IoU threshold (0.5 by default) for datasets without settings (dlib, COCO, VOC folders).

The rule is the Pascal VOC devkit's (VOC2010 onwards), written for our box convention:
- all detections of the set in descending score order (stable: ties keep image order, then the
  order within the image);
- IoU of continuous boxes with exclusive edges, no +1: area = (x2 - x1) * (y2 - y1);
- each detection takes the ground-truth box of highest IoU in its image, ignore boxes included
  (the first on a tie); if that IoU >= iou_thresh (the devkit writes `>`; we use >=, as the WIDER
  protocol and COCO do): an ignore box -> the detection counts neither way; a face not yet
  matched -> true positive; a face already matched -> false positive (a duplicate); below the
  threshold -> false positive. Detections on images without any box are false positives.
- precision and recall after each detection, recall over the set's non-ignored boxes;
- AP = voc_ap: all-point area under the precision envelope (wider_protocol.voc_ap).

`match_detections` returns the per-detection outcome, from which the bootstrap (bootstrap.py)
recomputes AP for resampled image sets without matching again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from retinabench.datasets.records import DatasetError, Item
from retinabench.datasets.wider_protocol import voc_ap


@dataclass(frozen=True)
class Matches:
    """Per-detection outcomes of one prediction set, in global descending score order.

    image: index of the detection's image; score; tp / fp: bool (both False: matched an ignore
    box); positives: non-ignored boxes per image ([n_images]).
    """

    image: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: np.ndarray


def iou(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU [N, K] of boxes with exclusive edges (no +1)."""
    b = np.asarray(boxes, dtype=np.float64)[:, None, :]
    q = np.asarray(query, dtype=np.float64)[None, :, :]
    iw = np.clip(np.minimum(b[..., 2], q[..., 2]) - np.maximum(b[..., 0], q[..., 0]), 0, None)
    ih = np.clip(np.minimum(b[..., 3], q[..., 3]) - np.maximum(b[..., 1], q[..., 1]), 0, None)
    inter = iw * ih
    union = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
             + (q[..., 2] - q[..., 0]) * (q[..., 3] - q[..., 1]) - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_detections(items: Sequence[Item], predictions: Sequence[np.ndarray], iou_thresh: float = 0.5) -> Matches:
    items = list(items)
    if len(predictions) != len(items):
        raise DatasetError(f"{len(predictions)} prediction arrays for {len(items)} images")
    img_ids, scores, tps, fps = [], [], [], []
    for k, (it, p) in enumerate(zip(items, predictions)):
        p = np.asarray(p, dtype=np.float64).reshape(-1, 5) if np.size(p) else np.zeros((0, 5))
        if len(p) == 0:
            continue
        p = p[np.argsort(-p[:, 4], kind="stable")]
        tp = np.zeros(len(p), dtype=bool)
        fp = np.ones(len(p), dtype=bool)
        if len(it.boxes):
            ov = iou(p[:, :4], it.boxes)
            best = ov.argmax(axis=1)
            hit = ov[np.arange(len(p)), best] >= iou_thresh
            taken = np.zeros(len(it.boxes), dtype=bool)
            for h in range(len(p)):  # sequential: a face is taken by the first (highest-scoring) hit
                if not hit[h]:
                    continue
                g = best[h]
                if it.ignore[g]:
                    fp[h] = False
                elif not taken[g]:
                    taken[g] = True
                    tp[h], fp[h] = True, False
        img_ids.append(np.full(len(p), k))
        scores.append(p[:, 4])
        tps.append(tp)
        fps.append(fp)
    positives = np.array([int((~it.ignore).sum()) for it in items], dtype=np.int64)
    if not img_ids:
        e = np.zeros(0)
        return Matches(e.astype(np.int64), e, e.astype(bool), e.astype(bool), positives)
    image = np.concatenate(img_ids)
    score = np.concatenate(scores)
    order = np.argsort(-score, kind="stable")
    return Matches(image[order], score[order], np.concatenate(tps)[order], np.concatenate(fps)[order], positives)


def ap_from_matches(tp: np.ndarray, fp: np.ndarray, npos: float) -> float:
    """VOC AP of detections in score order; NaN where there is no positive."""
    if npos <= 0:
        return float("nan")
    ctp = np.cumsum(tp, dtype=np.float64)
    cfp = np.cumsum(fp, dtype=np.float64)
    rec = ctp / npos
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec)


def average_precision(items: Sequence[Item], predictions: Sequence[np.ndarray], iou_thresh: float = 0.5) -> float:
    """AP at `iou_thresh` by the rule above; predictions: one [M, 5] x1,y1,x2,y2,score array per item."""
    m = match_detections(items, predictions, iou_thresh)
    return ap_from_matches(m.tp, m.fp, float(m.positives.sum()))


def recall_at(items: Sequence[Item], predictions: Sequence[np.ndarray], score_thresh: float,
              iou_thresh: float = 0.5) -> float:
    """Recall of the detections scoring >= score_thresh (a speed table's operating point), same matching rule."""
    m = match_detections(items, predictions, iou_thresh)
    npos = float(m.positives.sum())
    return float(m.tp[m.score >= score_thresh].sum()) / npos if npos > 0 else float("nan")
