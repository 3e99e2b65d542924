"""A backend that does no work: its inference stage measures what the harness itself costs.

It returns zero outputs of the model's real names and shapes (from the graph), prepared in load(),
so the family's decoder runs unchanged and finds no faces.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from backends.base import Backend
from retinabench.graph.ir import infer_shapes


class EmptyBackend(Backend):
    name = "empty"

    def load(self, model, batch: int, height: int, width: int) -> None:
        graph = model.graph()
        shapes = infer_shapes(graph, (batch, 3, height, width))
        self.output_names = list(graph.outputs)
        self._out = {n: np.zeros(shapes[n], np.float32) for n in self.output_names}

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        return self._out

    def settings(self) -> Dict[str, object]:
        return {**super().settings(), "precision": "none"}
