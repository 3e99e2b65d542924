"""Real Caffe (pycaffe, BVLC 1.0) backend. Its worker runs in its own Python (<= 3.9).

pycaffe has no wheels past Python 3.9, so the harness starts this backend's worker under
`interpreter()`: env RETINABENCH_CAFFE_PYTHON, else <repo>/.venv-caffe/bin/python, which
scripts/setup_caffe.sh creates. This module must therefore import and run on Python 3.9.

A Caffe model runs as it is (only its prototxt's input shape is rewritten to the scenario's);
any other format is converted through the graph (option `upsample`: 'exact' or 'bilinear').
Everything pycaffe would abort the process on (a layer type this build lacks, a prototxt and
caffemodel that do not match, GPU mode in a CPU-only build) is checked first and raised as one line.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from backends.base import Backend, choices
from retinabench.errors import BackendUnavailable, BenchError, ModelError
from retinabench.graph.caffe_export import UPSAMPLE_POLICIES
from retinabench.records import RowSettings

ROOT = Path(__file__).resolve().parents[1]
ENV_PYTHON = "RETINABENCH_CAFFE_PYTHON"
_probe_cache: Dict[str, Tuple[bool, str]] = {}


def _import_caffe():
    # Quiet glog's per-layer INFO lines; must be set before libcaffe initialises logging.
    os.environ.setdefault("GLOG_minloglevel", "2")
    import caffe
    return caffe


def _is_current(python: str) -> bool:
    # Compare the paths as given: a venv's python is a symlink to its base interpreter.
    return os.path.abspath(python) == os.path.abspath(sys.executable)


def _probe(python: str) -> Tuple[bool, str]:
    """Does `import caffe` work under that interpreter? Asked once per process."""
    if python not in _probe_cache:
        try:
            proc = subprocess.run([python, "-c", "import caffe"], capture_output=True, text=True, timeout=120,
                                  env=dict(os.environ, GLOG_minloglevel="2"))
            ok = proc.returncode == 0
            last = (proc.stderr.strip().splitlines() or [""])[-1]
            _probe_cache[python] = (True, "") if ok else (False, f"pycaffe does not import under {python} ({last})")
        except (OSError, subprocess.TimeoutExpired) as e:
            _probe_cache[python] = (False, f"Caffe interpreter {python} does not run ({e})")
    return _probe_cache[python]


def _openblas(caffe) -> Optional[ctypes.CDLL]:
    """The OpenBLAS inside pycaffe (kendryte-caffe links it statically), to set and record threads."""
    try:
        lib = ctypes.CDLL(caffe._caffe.__file__)
        lib.openblas_get_num_threads  # noqa: B018 - raises AttributeError when absent
        return lib
    except (OSError, AttributeError):
        return None


def _has_cuda(caffe) -> bool:
    """CPU_ONLY builds abort on set_mode_gpu(); a CUDA build references the CUDA runtime."""
    try:
        data = Path(caffe._caffe.__file__).read_bytes()
    except OSError:
        return False
    return b"cudaGetDeviceCount" in data or b"libcudart" in data


@dataclass(frozen=True)
class CaffeVariant:
    upsample: str     # how a converted model's nearest UpSampling becomes a Deconvolution


# Variants name the upsampling policy of a converted model, so exact and bilinear are two rows of
# one scenario: 'default' is exact (identical to nearest x2), 'bilinear' is the original port's.
# Shared by the opencv-caffe backend, which runs the same files.
VARIANTS = {"default": CaffeVariant("exact"), "bilinear": CaffeVariant("bilinear")}


@dataclass(frozen=True)
class CaffeOptions:
    upsample: Optional[str] = choices(*UPSAMPLE_POLICIES)   # overrides the variant's policy


class CaffeModelBackend(Backend):
    """What both runtimes of Caffe models share (this backend and opencv-caffe): the upsampling
    policy of a converted model (variant, or option), the files run, and what is recorded of them."""

    variants = VARIANTS
    Options = CaffeOptions

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.upsample: str = self.options.upsample or self.spec.upsample
        self.files: Any = None        # retinabench.graph.caffe_export.CaffeFiles, once loaded

    def settings(self) -> RowSettings:
        s = super().settings()
        converted = self.files is not None and bool(self.files.converted)
        s.upsample = self.upsample if converted else "as in model"
        s.extras["converted"] = converted if self.files is not None else None
        return s


class CaffeBackend(CaffeModelBackend):
    name = "caffe"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._blas: Optional[ctypes.CDLL] = None
        self._net: Any = None
        self._input: Any = None
        self._outs: List[Any] = []

    @classmethod
    def interpreter(cls) -> Optional[str]:
        return os.environ.get(ENV_PYTHON) or str(ROOT / ".venv-caffe" / "bin" / "python")

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        python = cls.interpreter()
        if python and not _is_current(python):  # the main process, deciding whether to start a worker
            if not Path(python).exists():
                return False, (f"Caffe interpreter {python} not found; run scripts/setup_caffe.sh "
                               f"or set {ENV_PYTHON}")
            return _probe(python)
        try:
            _import_caffe()
        except Exception as e:  # ImportError, or protobuf/numpy too new for pycaffe
            return False, f"pycaffe does not import in {sys.executable} ({type(e).__name__}: {e})"
        return True, ""

    def load(self, model, batch: int, height: int, width: int) -> None:
        from retinabench.graph.caffe_export import cached_caffe_files
        from retinabench.graph.caffe_import import deploy_layers, load_caffe, read_prototxt

        if self.threads:  # read by OpenBLAS when libcaffe loads; set again below for an early import
            os.environ.setdefault("OPENBLAS_NUM_THREADS", str(self.threads))
        caffe = _import_caffe()
        self._blas = _openblas(caffe)
        if self.threads and self._blas is not None:
            self._blas.openblas_set_num_threads(int(self.threads))
        if self.device.startswith("cuda"):
            if not _has_cuda(caffe):
                raise BackendUnavailable("this Caffe build is CPU-only (no CUDA)")
            caffe.set_device(int(self.device.split(":")[1]) if ":" in self.device else 0)
            caffe.set_mode_gpu()
        else:
            caffe.set_mode_cpu()

        files = cached_caffe_files(model, (batch, 3, height, width), self.upsample)
        known = set(caffe.layer_type_list())
        for layer in deploy_layers(read_prototxt(files.prototxt)):
            if layer.type not in known:
                raise ModelError(f"{files.prototxt.name}: layer {layer.name!r} has type {layer.type!r}, "
                                 f"which this Caffe build does not have")
        if not files.converted:  # a third-party pair: pycaffe aborts on a mismatch, so check it first
            load_caffe(files.prototxt, files.caffemodel)
        self._net = caffe.Net(str(files.prototxt), str(files.caffemodel), caffe.TEST)
        self.files = files
        self._input = self._net.blobs[files.input_name]
        self._shape = (batch, 3, height, width)
        if tuple(self._input.data.shape) != self._shape:
            raise BenchError(f"caffe: input blob {files.input_name!r} has shape {self._input.data.shape}, "
                             f"expected {self._shape}")
        self.output_names = list(files.outputs)
        self._outs = [self._net.blobs[n] for n in self.output_names]

    def infer(self, blob: np.ndarray) -> Dict[str, np.ndarray]:
        if blob.shape != self._shape:
            raise BenchError(f"caffe: blob shape {blob.shape} != loaded shape {self._shape}")
        self._input.data[...] = blob
        self._net.forward()  # synchronous on the CPU; in GPU mode reading .data syncs to the host
        # Copies: the next forward overwrites Caffe's blobs, and a result must stay valid.
        return {n: b.data.copy() for n, b in zip(self.output_names, self._outs)}

    def versions(self) -> Dict[str, str]:
        import platform
        import google.protobuf
        caffe = _import_caffe()
        return {"caffe": getattr(caffe, "__version__", "?"), "python": platform.python_version(),
                "numpy": np.__version__, "protobuf": google.protobuf.__version__}

    def settings(self) -> RowSettings:
        s = super().settings()
        blas = self._blas
        s.extras["openblas_threads"] = int(blas.openblas_get_num_threads()) if blas is not None else None
        return s

    def close(self) -> None:
        self._net = None
        self._input = None
        self._outs = []
