"""Bootstrap intervals over images for AP: one prediction set, and the paired difference of two.

Resampling unit: the image (faces in one photo share its lighting, scale and crowding, so they
are not independent draws). Each of `n_boot` resamples draws n images with replacement
(numpy.random.default_rng(seed): the same seed gives the same interval) and recomputes AP by
plain_ap's rule from the per-detection outcomes, which do not depend on which other images are
drawn: an image drawn k times contributes each of its detections k times, adjacent in the
global score order, and its faces k times to the number of positives. The interval is the
percentile interval ((1 - level) / 2, (1 + level) / 2) of the resampled APs; resamples without
any positive (possible only when some images have no faces) are left out and counted.

The paired difference draws the same images for both prediction sets in every resample, so what
the images share cancels and the interval is that of the difference itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from retinabench.datasets.plain_ap import Matches, ap_from_matches, match_detections
from retinabench.datasets.records import DatasetError, Item


@dataclass(frozen=True)
class Interval:
    """A point estimate on the full set and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    seed: int
    undefined: int = 0  # resamples left out (no positive)

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "n_boot": self.n_boot, "seed": self.seed, "undefined": self.undefined,
                "method": "percentile bootstrap over images"}


def _resampled_ap(m: Matches, counts: np.ndarray) -> float:
    reps = counts[m.image]
    tp = np.repeat(m.tp, reps)
    fp = np.repeat(m.fp, reps)
    return ap_from_matches(tp, fp, float((m.positives * counts).sum()))


def _draws(n_images: int, n_boot: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.bincount(rng.integers(0, n_images, size=n_images), minlength=n_images)


def _interval(estimate: float, values: np.ndarray, level: float, n_boot: int, seed: int) -> Interval:
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return Interval(estimate, float("nan"), float("nan"), level, n_boot, seed, int(values.size))
    lo, hi = np.percentile(ok, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(estimate), float(lo), float(hi), level, n_boot, seed, int(values.size - ok.size))


def bootstrap_ap(items: Sequence[Item], predictions: Sequence[np.ndarray], *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, iou_thresh: float = 0.5) -> Interval:
    """AP at iou_thresh (AP50 by default) on the full set, with its bootstrap interval over images."""
    items = list(items)
    if not items:
        raise DatasetError("no images to bootstrap over")
    m = match_detections(items, predictions, iou_thresh)
    estimate = ap_from_matches(m.tp, m.fp, float(m.positives.sum()))
    values = np.array([_resampled_ap(m, c) for c in _draws(len(items), n_boot, seed)])
    return _interval(estimate, values, level, n_boot, seed)


def paired_ap_difference(items: Sequence[Item], predictions_a: Sequence[np.ndarray],
                         predictions_b: Sequence[np.ndarray], *, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95, iou_thresh: float = 0.5) -> Interval:
    """AP(a) - AP(b) on the same images, with a bootstrap interval drawing the same images for both."""
    items = list(items)
    if not items:
        raise DatasetError("no images to bootstrap over")
    ma = match_detections(items, predictions_a, iou_thresh)
    mb = match_detections(items, predictions_b, iou_thresh)
    npos = float(ma.positives.sum())
    estimate = ap_from_matches(ma.tp, ma.fp, npos) - ap_from_matches(mb.tp, mb.fp, npos)
    values = np.array([_resampled_ap(ma, c) - _resampled_ap(mb, c) for c in _draws(len(items), n_boot, seed)])
    return _interval(estimate, values, level, n_boot, seed)
