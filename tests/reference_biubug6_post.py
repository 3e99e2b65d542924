"""biubug6 family's postprocessing as it was before the fewer-calls change, kept verbatim.

retinabench/model/biubug6.py's `Biubug6Decoder` and `decode` (the class renamed
`ReferenceBiubug6Decoder`), with the reference `nms` of reference_insightface_post.py; the
reference that tests/test_postprocess_reference.py compares the current implementation with.
Its helpers (output roles, priors, input size) are unchanged and imported.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from reference_insightface_post import nms
from retinabench.errors import ModelError
from retinabench.model.biubug6 import (_ROLE_WIDTH, KEEP_TOP_K, NMS_THRESHOLD, TOP_K, VARIANCE, infer_input_size,
                                       output_roles, prior_boxes)
from retinabench.model.detections import Faces
from retinabench.model.preprocess import ImageMeta


class ReferenceBiubug6Decoder:
    """Callable: network outputs (dict by name) + metas -> one `Faces` per image.

    Only priors whose face probability passes the threshold are decoded.
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
        self._priors: Dict[Tuple[int, int], np.ndarray] = {}
        self._sizes: Dict[Tuple[int, int, int], Tuple[int, int]] = {}
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
        size = self.input_size
        if size is None:
            key = (count, meta.content_width, meta.content_height)
            size = self._sizes.get(key)
            if size is None:
                size = self._sizes[key] = infer_input_size(count, meta)
        pri = self._priors.get(size)
        if pri is None:
            pri = self._priors[size] = prior_boxes(*size)
        if pri.shape[0] != count:
            raise ModelError(f"biubug6 decoder: outputs have {count} priors, input {size} has {pri.shape[0]}")
        return pri

    def _one(self, loc: np.ndarray, conf: np.ndarray, lmk: np.ndarray, meta: ImageMeta) -> Faces:
        scores = conf[:, 1]
        idx = np.flatnonzero(scores > self.threshold)  # detect.py: strictly greater
        if idx.size == 0:
            return Faces.empty()
        if idx.size > self.top_k:
            idx = idx[np.argsort(-scores[idx], kind="stable")[: self.top_k]]
        pri = self.priors(loc.shape[0], meta)[idx]
        box, points = decode(loc[idx], lmk[idx], pri)
        inv = np.float32(1.0 / meta.scale)  # input pixels -> original image pixels, before NMS as detect.py
        box *= inv
        points *= inv
        score = scores[idx].astype(np.float32)
        keep = nms(box, score, self.nms_threshold, plus_one=True)[: self.keep_top_k]
        return Faces(box[keep], score[keep], points[keep])


def decode(loc: np.ndarray, lmk: np.ndarray, priors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """box_utils.decode and decode_landm on priors in pixels: ([n, 4] x1y1x2y2, [n, 5, 2])."""
    c, s = priors[:, None, :2], priors[:, None, 2:]
    center = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCE[1])
    corner = center - size / 2
    box = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
    points = (c + lmk.reshape(-1, 5, 2) * VARIANCE[0] * s).astype(np.float32)
    return box, points
