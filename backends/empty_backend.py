"""A backend that does no work: it measures what the harness itself costs per stage."""
from __future__ import annotations

from typing import Dict

import numpy as np

from backends.base import Backend


class EmptyBackend(Backend):
    name = "empty"

    def load(self, model, batch: int, height: int, width: int) -> None:
        self.output_names = ["none"]
        self._out = {"none": np.zeros((batch, 1), np.float32)}

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        return self._out
