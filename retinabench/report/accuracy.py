"""Agreement between a backend and the reference: raw outputs and detected faces.

The original project's README could not say how much its bilinear Deconvolution cost; these are
the numbers that say it: max/mean abs diff per output, faces matched by IoU, missed and extra faces,
and how far matched boxes and landmarks moved.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List

import numpy as np

from retinabench.model.detections import Faces


@dataclass
class OutputDiff:
    output: str
    max_abs: float
    mean_abs: float


@dataclass
class FaceAgreement:
    reference_faces: int
    faces: int
    matched: int
    missed: int            # reference faces with no match
    extra: int             # faces with no reference match
    min_iou: float         # over matched pairs (1.0 when nothing matched and nothing expected)
    max_box_shift_px: float
    max_landmark_shift_px: float
    max_score_diff: float

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def output_diffs(reference: Dict[str, np.ndarray], other: Dict[str, np.ndarray]) -> List[OutputDiff]:
    """Per output present in both (shapes must agree): max and mean absolute difference."""
    diffs = []
    for name, ref in reference.items():
        if name not in other:
            continue
        got = np.asarray(other[name], np.float64)
        if got.shape != ref.shape:
            raise ValueError(f"output {name!r}: shape {got.shape} != reference {ref.shape}")
        d = np.abs(got - np.asarray(ref, np.float64))
        diffs.append(OutputDiff(name, float(d.max()) if d.size else 0.0, float(d.mean()) if d.size else 0.0))
    return diffs


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N,4] against every box in b [M,4] (continuous-area convention)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0]); y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2]); y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def compare_faces(reference: Faces, other: Faces, iou_threshold: float = 0.5) -> FaceAgreement:
    """Greedy one-to-one matching by IoU, best pairs first."""
    iou = iou_matrix(reference.boxes.astype(np.float64), other.boxes.astype(np.float64))
    pairs = []
    if iou.size:
        used_r, used_o = set(), set()
        for flat in np.argsort(-iou, axis=None):
            r, o = np.unravel_index(flat, iou.shape)
            if iou[r, o] < iou_threshold:
                break
            if r in used_r or o in used_o:
                continue
            used_r.add(r); used_o.add(o); pairs.append((int(r), int(o)))
    if pairs:
        r_idx = np.array([p[0] for p in pairs]); o_idx = np.array([p[1] for p in pairs])
        box_shift = float(np.abs(reference.boxes[r_idx] - other.boxes[o_idx]).max())
        lmk_shift = float(np.linalg.norm(reference.landmarks[r_idx] - other.landmarks[o_idx], axis=-1).max())
        score_diff = float(np.abs(reference.scores[r_idx] - other.scores[o_idx]).max())
        min_iou = float(iou[r_idx, o_idx].min())
    else:
        box_shift = lmk_shift = score_diff = 0.0
        min_iou = 1.0 if len(reference) == 0 and len(other) == 0 else 0.0
    return FaceAgreement(len(reference), len(other), len(pairs), len(reference) - len(pairs),
                         len(other) - len(pairs), min_iou, box_shift, lmk_shift, score_diff)
