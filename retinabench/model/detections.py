"""Detections of one image: boxes, scores and five landmarks, in original-image pixels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np


@dataclass
class Faces:
    boxes: np.ndarray      # [N, 4] x1, y1, x2, y2
    scores: np.ndarray     # [N]
    landmarks: np.ndarray  # [N, 5, 2]

    @classmethod
    def empty(cls) -> "Faces":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_json(self) -> Dict[str, List[dict]]:
        """The `bench.py detect --json` shape: faces sorted by score, highest first."""
        order = np.argsort(-self.scores, kind="stable")
        return {"faces": [
            {"box": [float(v) for v in self.boxes[i]], "score": float(self.scores[i]),
             "landmarks": [[float(x), float(y)] for x, y in self.landmarks[i]]}
            for i in order
        ]}

    @classmethod
    def from_json(cls, data: Dict[str, List[dict]]) -> "Faces":
        faces = data["faces"]
        if not faces:
            return cls.empty()
        return cls(np.array([f["box"] for f in faces], np.float32),
                   np.array([f["score"] for f in faces], np.float32),
                   np.array([f["landmarks"] for f in faces], np.float32))
