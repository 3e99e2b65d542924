"""COCO-style box AP (AP@[.5:.95], AP50, AP75) through pycocotools, the reference implementation.

pycocotools 2.0.11 is pinned in requirements.txt (it installs and runs beside numpy 1.23.5 on
Python 3.11; faster-coco-eval 1.8.0 does too, but the reference is preferred). It is imported
lazily: without it, coco_ap raises a DatasetError saying how to install it.

How our records become COCO's:
- one category (face, id 1); image ids 1..n in item order, with the items' sizes;
- a box x1, y1, x2, y2 becomes bbox [x1, y1, x2 - x1, y2 - y1] (COCO's boxes are continuous,
  exclusive-edged like ours, and its IoU has no +1), area = width * height;
- an ignore box becomes `iscrowd: 1`: pycocotools ignores it, and a detection matching it (by
  COCO's crowd rule: intersection over the *detection's* area >= the IoU threshold) counts neither
  way. (pycocotools overwrites a gt's `ignore` field with its `iscrowd`, so iscrowd is the one
  that works.)
- detections become results with bbox [x1, y1, x2 - x1, y2 - y1] and their scores.
Parameters are COCO's defaults (10 IoU thresholds .50:.05:.95, 101 recall points, area "all"),
except `max_dets` (100 by default, as COCO; crowded WIDER-like photos may want more). Values are
read from `eval["precision"]` as COCOeval.summarize() reads them, without its printing.
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, Sequence

import numpy as np

from retinabench.datasets.records import DatasetError, Item

INSTALL = "pip install pycocotools==2.0.11"


def to_coco(items: Sequence[Item], predictions: Sequence[np.ndarray]):
    """(ground-truth dataset dict, result list) in COCO's formats."""
    images, anns, results = [], [], []
    for k, it in enumerate(items, 1):
        images.append({"id": k, "file_name": it.key, "width": int(it.size[0]), "height": int(it.size[1])})
        for b, ig in zip(it.boxes.tolist(), it.ignore.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": 1, "bbox": [b[0], b[1], w, h],
                         "area": w * h, "iscrowd": int(bool(ig))})
    for k, p in enumerate(predictions, 1):
        p = np.asarray(p, dtype=np.float64).reshape(-1, 5) if np.size(p) else np.zeros((0, 5))
        for b in p.tolist():
            results.append({"image_id": k, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                            "score": b[4]})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}
    return gt, results


def coco_ap(items: Sequence[Item], predictions: Sequence[np.ndarray], *, max_dets: int = 100) -> Dict[str, float]:
    """{"ap": AP@[.5:.95], "ap50": AP@.5, "ap75": AP@.75} by pycocotools; 0.0 everywhere for no detection."""
    items = list(items)
    if len(predictions) != len(items):
        raise DatasetError(f"{len(predictions)} prediction arrays for {len(items)} images")
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise DatasetError(f"COCO AP needs pycocotools, which is not installed: {INSTALL}") from None
    gt_dict, results = to_coco(items, predictions)
    if not any(a["iscrowd"] == 0 for a in gt_dict["annotations"]):
        raise DatasetError("COCO AP is undefined: the images hold no face box to score")
    if not results:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, 0, 0, -1]  # [T, R] for category 0, area "all", max_dets
    thr = ev.params.iouThrs

    def mean(p: np.ndarray) -> float:
        v = p[p > -1]
        return float(v.mean()) if v.size else float("nan")

    return {"ap": mean(prec), "ap50": mean(prec[np.isclose(thr, 0.5)]), "ap75": mean(prec[np.isclose(thr, 0.75)])}
