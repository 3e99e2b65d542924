"""OpenCV DNN running a Caffe model (cv2.dnn.readNetFromCaffe), in the main environment.

The same prototxt/caffemodel the `caffe` backend runs: a Caffe model as it is (input shape
rewritten to the scenario's), any other format converted through the graph (option `upsample`:
'exact' or 'bilinear'). The net is built once in load(); infer() is setInput + forward(outputs).
OpenCV 5 removed the Caffe importer, so 4.x is required.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from backends.caffe_backend import CaffeModelBackend
from retinabench.errors import BackendUnavailable, BenchError
from retinabench.records import RowSettings


class OpenCVCaffeBackend(CaffeModelBackend):
    name = "opencv-caffe"
    runtime_module = "cv2"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._net: Any = None
        self._layers: List[str] = []
        self._shape: Tuple[int, ...] = ()

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        ok, reason = super().available()
        if not ok:
            return ok, reason
        import cv2
        if not hasattr(cv2.dnn, "readNetFromCaffe"):
            return False, f"OpenCV {cv2.__version__} has no Caffe importer (removed in OpenCV 5; use 4.x)"
        return True, ""

    def load(self, model, batch: int, height: int, width: int) -> None:
        import cv2
        from retinabench.graph.caffe_export import cached_caffe_files
        from retinabench.graph.caffe_import import load_caffe

        if self.threads:
            cv2.setNumThreads(int(self.threads))
        files = cached_caffe_files(model, (batch, 3, height, width), self.upsample)
        if not files.converted:  # a third-party pair: fail on a mismatch by layer name, not deep in OpenCV
            load_caffe(files.prototxt, files.caffemodel)
        net = cv2.dnn.readNetFromCaffe(str(files.prototxt), str(files.caffemodel))
        if self.device.startswith("cuda"):
            if not hasattr(cv2, "cuda") or cv2.cuda.getCudaEnabledDeviceCount() == 0:
                raise BackendUnavailable("this OpenCV build has no CUDA (or no CUDA device is visible)")
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA)
        else:
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self._net = net
        self.files = files
        self._layers: List[str] = list(files.output_layers)
        self._shape = (batch, 3, height, width)
        self.output_names = list(files.outputs)

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        if blob.shape != self._shape:
            raise BenchError(f"opencv-caffe: blob shape {blob.shape} != loaded shape {self._shape}")
        self._net.setInput(blob)
        outs = self._net.forward(self._layers)  # fresh host arrays, complete on return
        return dict(zip(self.output_names, outs))

    def versions(self) -> Dict[str, str]:
        import cv2
        return {"opencv": cv2.__version__}

    def settings(self) -> RowSettings:
        import cv2
        s = super().settings()
        s.extras["opencv_threads"] = cv2.getNumThreads()
        return s

    def close(self) -> None:
        self._net = None
