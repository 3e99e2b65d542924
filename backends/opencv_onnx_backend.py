"""OpenCV DNN running the ONNX model (readNetFromONNX), OpenCV's own CPU backend.

OpenCV's threads are process-wide (cv2.setNumThreads) and also serve preprocessing; the worker
runs one backend per process, so setting them here sets them for the whole row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from backends.base import Backend
from retinabench.errors import BackendUnavailable, ModelError
from retinabench.records import RowSettings


class OpenCVOnnxBackend(Backend):
    name = "opencv-onnx"
    runtime_module = "cv2"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._net: Any = None
        self._input = ""
        self._reexported = False

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        ok, reason = super().available()
        if not ok:
            return ok, reason
        import cv2
        if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromONNX"):
            return False, f"opencv {cv2.__version__} has no dnn.readNetFromONNX"
        return True, ""

    def load(self, model, batch: int, height: int, width: int) -> None:
        import cv2
        import onnx
        from retinabench.graph.onnx_export import onnx_for

        if self.device != "cpu":
            raise BackendUnavailable(f"opencv-onnx backend runs on the CPU only (asked for {self.device!r})")
        if self.threads:
            cv2.setNumThreads(int(self.threads))
        shape = (batch, 3, height, width)
        path = onnx_for(model, shape)
        try:
            net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as e:
            if model.format != "onnx":
                raise ModelError(f"{path}: OpenCV {cv2.__version__} cannot import it ({str(e).strip().splitlines()[-1]})") from None
            # A third-party ONNX (shape subgraphs, dynamic sizes): run our static re-export of its graph.
            from retinabench.graph.onnx_import import ConversionError
            why = _cv_reason(e)
            try:
                path = onnx_for(model, shape, reexport=True)
            except ConversionError as c:  # no graph to re-export: this runtime cannot run the model
                raise BackendUnavailable(f"OpenCV {cv2.__version__} cannot import {Path(path).name} ({why}) and "
                                         f"the static re-export it falls back to is impossible: {c}") from None
            net = cv2.dnn.readNetFromONNX(str(path))
            self._reexported = True
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self._net = net
        # Graph outputs in the file's order: OpenCV's unconnected-layer list comes back sorted by name.
        graph = onnx.load(str(path), load_external_data=False).graph
        self._input = graph.input[0].name
        self.output_names = [o.name for o in graph.output]

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        self._net.setInput(blob, self._input)
        outs = self._net.forward(self.output_names)  # fresh arrays each call (not views of net buffers)
        return dict(zip(self.output_names, outs))

    def versions(self) -> Dict[str, str]:
        import cv2
        return {"opencv": cv2.__version__}

    def settings(self) -> RowSettings:
        import cv2
        s = super().settings()
        s.threads, s.precision = cv2.getNumThreads(), "f32"
        s.extras.update(dnn_backend="opencv", dnn_target="cpu", reexported_onnx=self._reexported)
        return s

    def close(self) -> None:
        self._net = None


def _cv_reason(e: Exception) -> str:
    """cv2.error's text in one line: its last non-empty line, without '> ' and OpenCV's source paths."""
    import re
    lines = [ln.strip().lstrip(">").strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln]
    text = re.sub(r"OpenCV\([^)]*\) \S+:\d+: ", "", lines[-1]) if lines else type(e).__name__
    return text[:200]
