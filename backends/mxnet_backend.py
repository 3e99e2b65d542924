"""Apache MXNet (1.x) backend: the original model's own framework, CPU here, `mx.gpu()` where built.

Inference ends when the outputs are on the host (`asnumpy`): MXNet's forward only queues work,
and the original project's MXNet figures (0.1 ms at 320x416) timed the queueing, not the network.
"""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np

from backends.base import Backend
from retinabench.records import RowSettings


class MXNetBackend(Backend):
    name = "mxnet"
    runtime_module = "mxnet"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._exec: Any = None
        self._data: Any = None

    def load(self, model, batch: int, height: int, width: int) -> None:
        import mxnet as mx  # intra-op threads: OMP_NUM_THREADS, set by the worker before this import

        if self.device.startswith("cuda"):
            idx = int(self.device.split(":")[1]) if ":" in self.device else 0
            if mx.context.num_gpus() == 0:
                from retinabench.errors import BackendUnavailable
                raise BackendUnavailable("no CUDA device (or mxnet built without CUDA)")
            ctx = mx.gpu(idx)
        else:
            ctx = mx.cpu()
        if model.format == "mxnet":
            sym = mx.sym.load(str(model.files[0]))
            params = {k: mx.nd.array(v) for k, v in _read(model.files[1]).items()}
        else:  # any other format goes through our graph IR
            from retinabench.graph.mxnet_export import to_mxnet
            sym, params = to_mxnet(model.graph())
        arg = {k.split(":", 1)[1]: v for k, v in params.items() if k.startswith("arg:")}
        aux = {k.split(":", 1)[1]: v for k, v in params.items() if k.startswith("aux:")}
        self._exec = sym.simple_bind(ctx, data=(batch, 3, height, width), grad_req="null")
        self._exec.copy_params_from(arg, aux, allow_extra_params=True)
        self._data = self._exec.arg_dict["data"]
        self.output_names = list(sym.list_outputs())
        # list_outputs() appends "_output"; report the node names the graph and decoders use.
        self.output_names = [n[: -len("_output")] if n.endswith("_output") else n for n in self.output_names]

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        self._data[:] = blob
        outs = self._exec.forward(is_train=False)
        return {name: o.asnumpy() for name, o in zip(self.output_names, outs)}

    def versions(self) -> Dict[str, str]:
        import mxnet as mx
        return {"mxnet": mx.__version__, "mxnet_engine": os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice")}

    def settings(self) -> RowSettings:
        s = super().settings()
        s.precision = "f32"
        s.extras["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS", "default")
        return s

    def close(self) -> None:
        self._exec = None


def _read(path) -> Dict[str, np.ndarray]:
    from retinabench.graph.mxnet_import import read_params
    return read_params(path)
