"""The GPU pipeline's arithmetic, run on CPU tensors: it must equal the numpy family stages.

GPU preprocessing (retinabench/model/device/preprocess.py) against the numpy Preprocessor; GPU decode + NMS
(retinabench/model/device/insightface.py) against the numpy insightface decoder on MXNet's outputs for t1.jpg; the
fixed-point NMS against greedy NMS on random overlapping boxes. On a GPU the same functions run
inside CUDA graphs (the GPU runs compare them through the accuracy files).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from backends.base import create_backend
from backends.torch_backend import VARIANTS
from retinabench.model.device.insightface import DevicePostprocessor, PostConfig, nms_fixed_point
from retinabench.model.device.preprocess import DevicePreprocessor
from retinabench.errors import BackendUnavailable
from retinabench.model.family import get_family
from retinabench.model.nms import nms
from retinabench.model.preprocess import Preprocessor
from tolerance import assert_close

FAMILY = get_family("insightface")
THRESHOLD = 0.8
# Decoding, in rounded float32 operations on pixel coordinates (anchors, "+1" widths and centres are
# exact), torch against numpy: centre d * w + c (2), half size 0.5 * (exp(d) * w - 1) (5, exp counted as 3:
# within 3 ulp), centre +- half (6), times the same float32(1 / scale) (7). Landmarks: l * w + c, scaled (3).
BOX_CHAIN, LANDMARK_CHAIN = 7, 3


@pytest.mark.parametrize("variant", [v for v, spec in VARIANTS.items() if spec.cuda_only])
def test_cuda_variants_say_why_on_cpu(mnet25, variant):
    with create_backend("torch", variant=variant, device="cpu") as be:
        with pytest.raises(BackendUnavailable, match="needs a CUDA device"):
            be.load(mnet25, 1, 448, 448)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_missing_is_unavailable(mnet25):
    with create_backend("torch", variant="default", device="cuda") as be:
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            be.load(mnet25, 1, 448, 448)


@pytest.mark.parametrize("size", [(1280, 896), (320, 416), (448, 448)])
def test_device_preprocessing_matches_numpy(t1_image, size):
    small = np.ascontiguousarray(t1_image[:600, :500])  # a second image size in the same batch
    images = [t1_image, t1_image, small]
    ref, ref_metas = Preprocessor(FAMILY.normalization, "fit", size)(images)
    target = torch.full(ref.shape, -7.0)  # poisoned: every element must be written
    got, metas = DevicePreprocessor(target, FAMILY.normalization, "fit", size)(images)
    assert metas == ref_metas
    diff = np.abs(got.numpy() - ref)
    if size == (1280, 896):  # no resize for t1.jpg: the blob is exact
        assert diff[:2].max() == 0.0
    # cv2 resizes with 11-bit fixed-point weights, torch in float: at most one grey level apart
    assert diff.max() <= 1.0 and diff.mean() < 0.1, (diff.max(), diff.mean())


def _decoders(names, **cfg):
    return FAMILY.make_decoder(names, THRESHOLD), DevicePostprocessor(names, PostConfig(THRESHOLD, **cfg))


def _assert_same_faces(ref, got):
    """Same faces in the same (score) order; coordinates to float32 rounding of a different op order."""
    assert len(got) == len(ref)
    np.testing.assert_array_equal(got.scores, ref.scores)
    assert_close(got.boxes, ref.boxes, BOX_CHAIN, "boxes")
    assert_close(got.landmarks, ref.landmarks, LANDMARK_CHAIN, "landmarks")


def test_device_decode_matches_numpy_decoder(reference_native):
    names, outs, metas = reference_native["names"], reference_native["outputs"], reference_native["metas"]
    ref_dec, dev_dec = _decoders(names)
    ref = ref_dec(outs, metas)
    got = dev_dec({k: torch.from_numpy(v) for k, v in outs.items()}, metas)
    assert len(ref[0]) == 6
    _assert_same_faces(ref[0], got[0])
    assert dev_dec.fallbacks == 0


def test_device_decode_per_image_bounds_and_scale(reference_native):
    """Two images in one batch with different content sizes and scales: clipping and rescaling per image."""
    names, outs, metas = reference_native["names"], reference_native["outputs"], reference_native["metas"]
    outs2 = {k: np.concatenate([v, v]) for k, v in outs.items()}
    m = metas[0]
    metas2 = [replace(m, content_width=900, content_height=700, scale=0.5), m]
    ref_dec, dev_dec = _decoders(names)
    ref = ref_dec(outs2, metas2)
    got = dev_dec({k: torch.from_numpy(v) for k, v in outs2.items()}, metas2)
    assert len(ref[0]) != len(ref[1]) or not np.array_equal(ref[0].boxes, ref[1].boxes)
    for r, g in zip(ref, got):
        _assert_same_faces(r, g)


@pytest.mark.parametrize("cfg", [{"candidates": 8}, {"nms_iterations": 1}, {"max_faces": 3}])
def test_flagged_images_fall_back_to_the_numpy_decoder(reference_native, cfg):
    names, outs, metas = reference_native["names"], reference_native["outputs"], reference_native["metas"]
    ref_dec, dev_dec = _decoders(names, **cfg)
    got = dev_dec({k: torch.from_numpy(v) for k, v in outs.items()}, metas)
    assert dev_dec.fallbacks == 1
    _assert_same_faces(ref_dec(outs, metas)[0], got[0])


def _clustered_boxes(rng, n):
    centres = rng.uniform(0, 200, size=(max(1, n // 6), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, size=(n, 2))
    wh = rng.uniform(10, 40, size=(n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(8))
def test_fixed_point_nms_equals_greedy_nms(seed):
    rng = np.random.default_rng(seed)
    k = 64
    boxes = _clustered_boxes(rng, k)
    scores = np.sort(rng.uniform(0, 1, k).astype(np.float32))[::-1].copy()
    valid = scores >= 0.3
    keep, converged = nms_fixed_point(torch.from_numpy(boxes)[None], torch.from_numpy(valid)[None], 0.4, 64)
    assert bool(converged[0])
    expected = np.flatnonzero(valid)[nms(boxes[valid], scores[valid], 0.4)]
    assert np.flatnonzero(keep[0].numpy()).tolist() == sorted(expected.tolist())


def test_fixed_point_nms_reports_a_chain_it_has_not_resolved():
    # a suppresses b, b would suppress c: greedy keeps a and c; one round cannot know that
    boxes = torch.tensor([[[0, 0, 9, 9], [3, 0, 12, 9], [6, 0, 15, 9]]], dtype=torch.float32)
    valid = torch.ones((1, 3), dtype=torch.bool)
    keep, converged = nms_fixed_point(boxes, valid, 0.4, 1)
    assert not bool(converged[0])
    keep, converged = nms_fixed_point(boxes, valid, 0.4, 3)
    assert bool(converged[0]) and keep[0].tolist() == [True, False, True]
