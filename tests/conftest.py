"""Shared fixtures: the models and image in ../shared (RETINABENCH_SHARED), and MXNet references."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tolerance import THREADS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("RETINABENCH_SHARED", ROOT.parent / "shared")).resolve()
# Fixed intra-op threads, so partial sums never depend on the machine's core count: MXNet (and
# torch's default) read OMP_NUM_THREADS once, at import, which is after this line; workers and
# `bench.py` subprocesses inherit it. torch and OpenCV are also set explicitly below.
os.environ["OMP_NUM_THREADS"] = str(THREADS)


@pytest.fixture(scope="session", autouse=True)
def fixed_threads():
    """torch's and OpenCV's process-wide thread counts, for tests that run them without a backend."""
    import cv2
    import torch
    torch.set_num_threads(THREADS)
    cv2.setNumThreads(THREADS)


def ort_session(path):
    """An ONNX Runtime CPU session with fixed intra-op threads (its default is one per core)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def wait_for(what: Callable[[], object], timeout: float = 60.0, step: float = 0.02):
    """Poll `what` until it returns something true (and return that), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: set RETINABENCH_SHARED to the shared/ folder")
    return path


@pytest.fixture(scope="session")
def mnet25_dir() -> Path:
    return shared_path("models", "insightface-mnet25")


@pytest.fixture(scope="session")
def seed_caffe_dirs() -> dict:
    return {"mnet25": shared_path("models", "seed-caffe-mnet25"),
            "deconv0517": shared_path("models", "seed-caffe-deconv0517")}


@pytest.fixture(scope="session")
def t1_path() -> Path:
    return shared_path("images", "t1.jpg")


@pytest.fixture(scope="session")
def t1_image(t1_path):
    import cv2
    return cv2.imread(str(t1_path))


@pytest.fixture(scope="session")
def mnet25(mnet25_dir):
    from retinabench.model.source import open_model
    return open_model(mnet25_dir)


@pytest.fixture(scope="session")
def mxnet_native(mnet25, t1_image):
    """MXNet's raw outputs and the blob for t1.jpg in native mode: the reference for every backend.

    (Skipped where MXNet does not import: the GPU machine has none; every CI machine does.)"""
    pytest.importorskip("mxnet", reason="MXNet is the reference here and does not import on this machine")
    from backends.base import create_backend
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor

    pre = Preprocessor(get_family("insightface").normalization, "native")
    blob, metas = pre([t1_image])
    blob = blob.copy()
    with create_backend("mxnet", threads=THREADS) as be:
        be.load(mnet25, 1, blob.shape[2], blob.shape[3])
        outs = be.infer(blob)
        names = list(be.output_names)
    return {"blob": blob, "metas": metas, "outputs": outs, "names": names}


@pytest.fixture(scope="session")
def reference_native(mnet25, t1_image):
    """The raw outputs and blob for t1.jpg in native mode from a reference that runs wherever the test does:
    MXNet where it imports (every CPU machine), else ONNX Runtime on the CPU (the GPU machine has no MXNet),
    which agrees with MXNet to float32 rounding (tests/test_onnx_backends.py holds it to that). Tests of
    device stages need reference outputs, not MXNet's in particular: with this they run on the GPU machine."""
    from backends.base import create_backend
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor

    pre = Preprocessor(get_family("insightface").normalization, "native")
    blob, metas = pre([t1_image])
    blob = blob.copy()
    try:
        import mxnet  # noqa: F401
        name = "mxnet"
    except ImportError:
        name = "onnxruntime"
    with create_backend(name, threads=THREADS) as be:
        be.load(mnet25, 1, blob.shape[2], blob.shape[3])
        outs = be.infer(blob)
        names = list(be.output_names)
    return {"blob": blob, "metas": metas, "outputs": outs, "names": names, "reference": name}
