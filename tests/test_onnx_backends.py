"""ONNX Runtime, PyTorch, OpenVINO and OpenCV DNN against the MXNet reference on t1.jpg.

f32 rows must agree with MXNet within the float32 bound of each output's chain of accumulations
(tests/tolerance.py) on every raw output and find the same six faces; the bf16 OpenVINO row must
find the same faces (IoU >= 0.9), and its raw difference is printed (-s).
Each backend loads once per size (module-scoped), native 1280x886 once, a small batch of 2 once.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import pytest

from backends.base import create_backend
from retinabench.errors import BackendUnavailable
from retinabench.model.family import get_family
from retinabench.report.accuracy import compare_faces, output_diffs
from tolerance import THREADS, assert_all_close, bound, output_chain_lengths

F32 = [("onnxruntime", "default"), ("torch", "default"), ("openvino", "default"), ("opencv-onnx", "default")]
SCORE_TOL = 1e-4  # detections: the largest score difference of a matched face
THRESHOLD = 0.8
SMALL = (416, 320)  # fit mode, w x h: padded, not the native size


def _decode(names, outputs, metas):
    return get_family("insightface").make_decoder(names, THRESHOLD)(outputs, metas)


def _run(model, name: str, variant: str, blob: np.ndarray, threads=THREADS):
    with create_backend(name, variant=variant, threads=threads) as be:
        be.load(model, blob.shape[0], blob.shape[2], blob.shape[3])
        out = be.infer(blob)
        return out, list(be.output_names), be.settings().to_json()


@pytest.fixture(scope="module")
def native_runs(mnet25, mxnet_native) -> Dict[Tuple[str, str], tuple]:
    """(name, variant) -> (outputs, output names, settings) at native size, loaded on first use."""
    cache: Dict[Tuple[str, str], tuple] = {}

    def get(name: str, variant: str = "default"):
        if (name, variant) not in cache:
            cache[(name, variant)] = _run(mnet25, name, variant, mxnet_native["blob"])
        return cache[(name, variant)]
    return get


@pytest.fixture(scope="module")
def reference_faces(mxnet_native):
    faces = _decode(mxnet_native["names"], mxnet_native["outputs"], mxnet_native["metas"])[0]
    return faces


def test_reference_finds_the_six_faces(reference_faces):
    assert len(reference_faces) == 6


@pytest.mark.parametrize("name,variant", F32)
def test_f32_outputs_match_mxnet(native_runs, mnet25, mxnet_native, name, variant):
    out, names, settings = native_runs(name, variant)
    ref = mxnet_native["outputs"]
    assert sorted(names) == sorted(mxnet_native["names"])
    diffs = output_diffs(ref, out)
    assert len(diffs) == len(ref)
    print(f"\n{name}/{variant}: " + ", ".join(f"{d.output}={d.max_abs:.2e}" for d in diffs))
    chains = output_chain_lengths(mnet25.graph(), mxnet_native["blob"].shape)
    assert_all_close(out, ref, chains, f"{name} vs mxnet")
    assert settings.get("precision") in ("f32", None) and settings.get("dtype", "float32") == "float32"
    assert settings["threads"] == THREADS


@pytest.mark.parametrize("name,variant", F32)
def test_f32_finds_the_same_faces(native_runs, mxnet_native, reference_faces, name, variant):
    out, names, _ = native_runs(name, variant)
    agree = compare_faces(reference_faces, _decode(names, out, mxnet_native["metas"])[0])
    assert (agree.matched, agree.missed, agree.extra) == (6, 0, 0), agree
    assert agree.min_iou > 0.999 and agree.max_box_shift_px < 0.05 and agree.max_score_diff < SCORE_TOL, agree


def test_openvino_bf16_finds_the_same_faces(native_runs, mnet25, mxnet_native, reference_faces):
    import openvino as ov
    out, names, settings = native_runs("openvino", "bf16")
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert settings["requested_precision"] == "bf16"
    assert settings["precision"] == ("bf16" if has_bf16 else "f32")  # what ran, not what was asked
    diffs = output_diffs(mxnet_native["outputs"], out)
    print("\nopenvino/bf16: " + ", ".join(f"{d.output}={d.max_abs:.2e}" for d in diffs))
    if has_bf16:  # the variant really runs in bf16: its outputs are not within the f32 bound
        chains = output_chain_lengths(mnet25.graph(), mxnet_native["blob"].shape)
        ref = mxnet_native["outputs"]
        assert any((np.abs(out[k] - ref[k]) > bound(ref[k], chains[k])).any() for k in ref)
    agree = compare_faces(reference_faces, _decode(names, out, mxnet_native["metas"])[0])
    print(f"openvino/bf16 faces: {agree}")
    assert (agree.matched, agree.missed, agree.extra) == (6, 0, 0), agree
    assert agree.min_iou >= 0.9, agree


@pytest.fixture(scope="module")
def small_batch(mnet25, t1_image):
    """A batch of two different images in fit mode at 416x320, and MXNet's outputs for it."""
    import cv2
    from retinabench.model.preprocess import Preprocessor

    pre = Preprocessor(get_family("insightface").normalization, "fit", SMALL)
    blob, metas = pre([t1_image, cv2.flip(t1_image, 1)])
    blob = blob.copy()
    ref, _, _ = _run(mnet25, "mxnet", "default", blob)
    return blob, metas, ref


@pytest.fixture
def restore_threads():
    """torch and OpenCV thread counts are process-wide: give later tests theirs back."""
    import cv2
    import torch
    before = torch.get_num_threads(), cv2.getNumThreads()
    yield
    torch.set_num_threads(before[0]); cv2.setNumThreads(before[1])


@pytest.mark.parametrize("name,variant", F32)
def test_batch_of_two_at_another_size_with_one_thread(mnet25, small_batch, restore_threads, name, variant):
    blob, metas, ref = small_batch
    out, names, settings = _run(mnet25, name, variant, blob, threads=1)
    assert settings["threads"] == 1
    assert_all_close(out, ref, output_chain_lengths(mnet25.graph(), blob.shape), f"{name}, 1 thread, vs mxnet")
    assert all(out[n].shape[0] == 2 for n in names)
    ref_faces = _decode(names, ref, metas)
    for b, faces in enumerate(_decode(names, out, metas)):
        agree = compare_faces(ref_faces[b], faces)
        assert agree.missed == agree.extra == 0 and agree.matched == len(ref_faces[b]) > 0, (b, agree)


@pytest.mark.parametrize("name", ["onnxruntime", "torch", "openvino", "opencv-onnx"])
def test_missing_cuda_is_a_clear_unavailable(mnet25, name):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with create_backend(name, device="cuda") as be:
        with pytest.raises(BackendUnavailable) as err:
            be.load(mnet25, 1, 64, 64)
    assert "\n" not in str(err.value) and str(err.value)
