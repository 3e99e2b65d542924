"""The WIDER FACE easy/medium/hard protocol, as the official Python evaluation computes it.

Reference: `widerface_evaluate/evaluation.py` (+ `box_overlaps.pyx`) in biubug6/Pytorch_Retinaface,
the Python port of the MATLAB eval_tools that the published RetinaFace figures come from. Each
step below is that code's, vectorised; tests/test_datasets.py checks it against a literal
transcription of it and against hand-computed values.

1. Scores are normalised over the whole set: s' = (s - lo) / (hi - lo) with lo = min(1, every
   score) and hi = max(0, every score) (the official code starts its running min at 1 and its max
   at 0, so scores already inside [0, 1] are min-max normalised).
2. Per image, with detections in descending score order (the official code assumes its files are
   in that order, as its writer produces them after NMS; we sort, stably, so any order works):
   each detection takes the ground-truth box of highest IoU (the first on a tie); if that IoU is
   >= 0.5, the face is outside the setting -> the detection counts neither way (it is not a
   proposal), else the face is recalled if not yet recalled. There is no one-to-one assignment: a
   second detection whose best face is already recalled stays a proposal (a false positive) and
   does not move on to another face.
3. IoU uses the "+1" pixel convention of box_overlaps.pyx: width = x2 - x1 + 1 for both boxes.
4. At 1000 thresholds t_k = 1 - (k + 1) / 1000, k = 0..999 (0.999 down to 0), each image adds its
   number of proposals with s' >= t_k and its number of recalled setting faces among them;
   precision = recalled / proposals and recall = recalled / (faces in the setting, over all images).
5. AP = voc_ap(recall, precision): the all-point area under the precision envelope.

Images whose ground truth is empty, or with no detection, add nothing but their faces to the
count (as in the official code). WIDER's images without faces are not empty there: their one
placeholder box [0 0 0 0] is kept (widerface.py), so their detections are false positives.

Box conversion, stated exactly: the official code reads ground truth as x, y, w, h and uses the
corners (x, y, x + w, y + h); our ground truth boxes are those same corners (x1 = x, x2 = x + w).
It reads predictions as x, y, w, h and uses (x, y, x + w, y + h); we pass our detection corners
x1, y1, x2, y2 unchanged, i.e. what it computes from a file holding x = x1, w = x2 - x1 (no
rounding: biubug6's test_widerface.py writes int(x1) and int(x2) - int(x1), which is a property
of that writer, not of the protocol). Both then get the +1 of step 3.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from retinabench.datasets.records import DatasetError, Item

THRESH_NUM = 1000


def bbox_overlaps_plus1(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU [N, K] with box_overlaps.pyx's +1 convention (areas and intersections count pixels inclusively)."""
    b = np.asarray(boxes, dtype=np.float64)[:, None, :]
    q = np.asarray(query, dtype=np.float64)[None, :, :]
    iw = np.minimum(b[..., 2], q[..., 2]) - np.maximum(b[..., 0], q[..., 0]) + 1
    ih = np.minimum(b[..., 3], q[..., 3]) - np.maximum(b[..., 1], q[..., 1]) + 1
    inter = iw * ih
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    area_q = (q[..., 2] - q[..., 0] + 1) * (q[..., 3] - q[..., 1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_b + area_q - inter)
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def normalize_scores(predictions: Sequence[np.ndarray]) -> list:
    """Copies of the predictions, sorted by descending score (stable), scores min-max normalised as step 1."""
    preds = [_as_pred(p) for p in predictions]
    lo, hi = 1.0, 0.0
    for p in preds:
        if len(p):
            lo = min(float(p[:, 4].min()), lo)
            hi = max(float(p[:, 4].max()), hi)
    diff = hi - lo
    if diff <= 0 and any(len(p) for p in preds):
        raise DatasetError(f"the WIDER FACE protocol cannot normalise these scores (all equal to {lo:g})")
    out = []
    for p in preds:
        if len(p):
            p = p[np.argsort(-p[:, 4], kind="stable")]
            p[:, 4] = (p[:, 4] - lo) / diff
        out.append(p)
    return out


def image_eval(pred: np.ndarray, gt: np.ndarray, keep: np.ndarray, iou_thresh: float):
    """(pred_recall, proposal) per detection, as the official image_eval (pred sorted by score)."""
    overlaps = bbox_overlaps_plus1(pred[:, :4], gt)
    best = overlaps.argmax(axis=1)
    hit = overlaps[np.arange(len(pred)), best] >= iou_thresh
    kept = keep[best]
    proposal = ~(hit & ~kept)
    counted = hit & kept
    first = np.zeros(len(pred), dtype=bool)
    idx = np.flatnonzero(counted)
    if idx.size:
        _, first_pos = np.unique(best[idx], return_index=True)
        first[idx[first_pos]] = True
    return np.cumsum(first), proposal


def img_pr_info(scores: np.ndarray, proposal: np.ndarray, pred_recall: np.ndarray,
                thresh_num: int = THRESH_NUM) -> np.ndarray:
    """[thresh_num, 2] (proposals, recalled) at each threshold, as the official img_pr_info."""
    thresh = 1 - (np.arange(thresh_num) + 1) / thresh_num
    # scores are in descending order: the number of detections with score >= t
    n = np.searchsorted(-scores, -thresh, side="right")
    cum_prop = np.cumsum(proposal)
    out = np.zeros((thresh_num, 2), dtype=np.float64)
    some = n > 0
    out[some, 0] = cum_prop[n[some] - 1]
    out[some, 1] = pred_recall[n[some] - 1]
    return out


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """All-point AP under the precision envelope (the official voc_ap; NaN handling as np.maximum's)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # = the official backward loop of np.maximum
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def wider_ap(items: Sequence[Item], predictions: Sequence[np.ndarray], *, iou_thresh: float = 0.5,
             thresh_num: int = THRESH_NUM, settings: Sequence[str] = ("easy", "medium", "hard")) -> Dict[str, float]:
    """{setting: AP} by the official WIDER FACE protocol.

    items: the dataset's items (each with `settings` keep masks); predictions: one [M, 5] array
    (x1, y1, x2, y2, score) per item, in the same order, any score range, any order.
    """
    items = list(items)
    if len(predictions) != len(items):
        raise DatasetError(f"{len(predictions)} prediction arrays for {len(items)} images")
    preds = normalize_scores(predictions)
    aps: Dict[str, float] = {}
    for s in settings:
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2), dtype=np.float64)
        for it, pred in zip(items, preds):
            if s not in it.settings:
                raise DatasetError(f"image {it.key} has no {s!r} setting (not a WIDER FACE item)")
            keep = np.asarray(it.settings[s], dtype=bool)
            count_face += int(keep.sum())
            if len(it.boxes) == 0 or len(pred) == 0:
                continue
            pred_recall, proposal = image_eval(pred, it.boxes, keep, iou_thresh)
            pr_curve += img_pr_info(pred[:, 4], proposal, pred_recall, thresh_num)
        if count_face == 0:
            raise DatasetError(f"the {s} setting counts no face: its AP is undefined")
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = pr_curve[:, 1] / pr_curve[:, 0]
        recall = pr_curve[:, 1] / count_face
        aps[s] = voc_ap(recall, precision)
    return aps


def _as_pred(p) -> np.ndarray:
    a = np.array(p, dtype=np.float64, copy=True)
    if a.size == 0:
        return np.zeros((0, 5), dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 5:
        raise DatasetError(f"predictions must be [M, 5] arrays x1, y1, x2, y2, score; got shape {a.shape}")
    return a[:, :5]


def write_wider_predictions(folder, items: Sequence[Item], predictions: Sequence[np.ndarray]) -> None:
    """Detections in the official evaluation's input layout (folder/<event>/<name>.txt: name, count,
    then `x y w h score` lines with x = x1, w = x2 - x1, unrounded), so the official code can be run on them."""
    folder = Path(folder)
    for it, p in zip(items, predictions):
        p = _as_pred(p)
        p = p[np.argsort(-p[:, 4], kind="stable")] if len(p) else p
        event, _, name = it.key.rpartition("/")
        out = folder / (event or ".") / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = [name, str(len(p))] + [f"{b[0]!r} {b[1]!r} {b[2] - b[0]!r} {b[3] - b[1]!r} {b[4]!r}"
                                      for b in p.tolist()]
        out.write_text("\n".join(lines) + "\n")
