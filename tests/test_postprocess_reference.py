"""The postprocessing (both decoders and NMS) against the implementations it replaced.

The references are kept verbatim in reference_insightface_post.py and reference_biubug6_post.py.
Outputs must be the same: the same faces in the same order, the same float32 boxes, scores and
landmarks (np.array_equal), on real outputs of mnet.25 (MXNet) and of the default model (ONNX
Runtime) for t1.jpg at thresholds 0.8, 0.5 and 0.02 (hundreds of candidates), on batches, on
float16 outputs, and NMS on its own on random boxes built to exercise every block regime.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pytest

from reference_biubug6_post import ReferenceBiubug6Decoder
from reference_biubug6_post import decode as reference_decode
from reference_insightface_post import ReferenceInsightFaceDecoder
from reference_insightface_post import _decode as reference_if_decode
from reference_insightface_post import nms as reference_nms
from retinabench.model import biubug6, insightface
from retinabench.model.biubug6 import Biubug6Decoder
from retinabench.model.insightface import InsightFaceDecoder
from retinabench.model.nms import nms
from retinabench.model.preprocess import ImageMeta, Preprocessor

THRESHOLDS = (0.8, 0.5, 0.02)
SIZES = {"fit1280x896": ("fit", (1280, 896)), "fit320x416": ("fit", (320, 416)), "native": ("native", None)}


def _same_faces(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for field in ("boxes", "scores", "landmarks"):
            a, b = getattr(g, field), getattr(w, field)
            assert a.dtype == b.dtype == np.float32, field
            assert a.shape == b.shape, field
            assert np.array_equal(a, b), field


def _images(t1_image, batch: int):
    return [t1_image] if batch == 1 else [t1_image, np.ascontiguousarray(t1_image[:, ::-1])]


@pytest.fixture(scope="module")
def mnet25_outputs(mnet25, t1_image) -> Dict[str, dict]:
    """mnet.25's raw MXNet outputs for t1.jpg per input size, and a batch of two at 320x416."""
    from backends.base import create_backend

    runs = {}
    for key, (mode, size), batch in [(k, v, 1) for k, v in SIZES.items()] + [("batch2", SIZES["fit320x416"], 2)]:
        blob, metas = Preprocessor(insightface.NORMALIZATION, mode, size)(_images(t1_image, batch))
        with create_backend("mxnet") as be:
            be.load(mnet25, blob.shape[0], blob.shape[2], blob.shape[3])
            outs = {k: np.array(v) for k, v in be.infer(blob).items()}
            runs[key] = {"outputs": outs, "metas": metas, "names": list(be.output_names)}
    return runs


@pytest.fixture(scope="module")
def default_outputs(t1_image) -> Dict[str, dict]:
    """The default model's raw ONNX Runtime outputs for t1.jpg per input size, and a batch of two."""
    import onnxruntime as ort
    from retinabench.defaults import default_model_path

    session = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = {}
    for key, (mode, size), batch in [(k, v, 1) for k, v in SIZES.items()] + [("batch2", SIZES["fit320x416"], 2)]:
        blob, metas = Preprocessor(biubug6.NORMALIZATION, mode, size)(_images(t1_image, batch))
        outs = dict(zip(names, session.run(None, {"input": blob.copy()})))
        runs[key] = {"outputs": outs, "metas": metas, "names": names}
    return runs


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("key", list(SIZES) + ["batch2"])
def test_insightface_decoder_matches_reference(mnet25_outputs, key, threshold):
    run = mnet25_outputs[key]
    new = InsightFaceDecoder(run["names"], threshold)
    ref = ReferenceInsightFaceDecoder(run["names"], threshold)
    want = ref(run["outputs"], run["metas"])
    _same_faces(new(run["outputs"], run["metas"]), want)
    _same_faces(new(run["outputs"], run["metas"]), want)  # the reused buffers give the same again
    if threshold == 0.8:
        assert len(want[0]) == 6  # t1.jpg's six faces (its mirror image at 320x416: five for mnet.25)
    if threshold == 0.02:
        assert all(len(f) > 6 for f in want)


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("key", list(SIZES) + ["batch2"])
def test_biubug6_decoder_matches_reference(default_outputs, key, threshold):
    run = default_outputs[key]
    new = Biubug6Decoder(run["names"], threshold)
    ref = ReferenceBiubug6Decoder(run["names"], threshold)
    want = ref(run["outputs"], run["metas"])
    _same_faces(new(run["outputs"], run["metas"]), want)
    _same_faces(new(run["outputs"], run["metas"]), want)
    if threshold == 0.8:
        assert len(want[0]) == 6  # t1.jpg's six faces (its mirror image at 320x416: five for mnet.25)
    if threshold == 0.02:
        assert all(len(f) > 6 for f in want)


def test_biubug6_top_k_and_keep_top_k(default_outputs):
    run = default_outputs["fit1280x896"]
    for top_k, keep_top_k in [(40, 750), (5000, 3), (7, 2)]:
        new = Biubug6Decoder(run["names"], 0.02, top_k=top_k, keep_top_k=keep_top_k)
        ref = ReferenceBiubug6Decoder(run["names"], 0.02, top_k=top_k, keep_top_k=keep_top_k)
        _same_faces(new(run["outputs"], run["metas"]), ref(run["outputs"], run["metas"]))


@pytest.mark.parametrize("family", ["insightface", "biubug6"])
def test_float16_and_strided_outputs_match_reference(mnet25_outputs, default_outputs, family):
    """Runtimes may hand back float16 or non-contiguous arrays; the dtype flow stays the reference's."""
    runs, new_cls, ref_cls = ((mnet25_outputs, InsightFaceDecoder, ReferenceInsightFaceDecoder) if family == "insightface"
                              else (default_outputs, Biubug6Decoder, ReferenceBiubug6Decoder))
    run = runs["fit1280x896"]
    half = {k: v.astype(np.float16) for k, v in run["outputs"].items()}
    strided = {k: np.stack([v, v + 1], axis=-1)[..., 0] for k, v in run["outputs"].items()}
    assert not any(v.flags.c_contiguous for v in strided.values())
    for outs in (half, strided):
        for threshold in THRESHOLDS:
            _same_faces(new_cls(run["names"], threshold)(outs, run["metas"]),
                        ref_cls(run["names"], threshold)(outs, run["metas"]))


def test_decode_functions_match_reference():
    rng = np.random.default_rng(7)
    n = 300
    anchor = np.sort(rng.uniform(-300, 1500, (n, 2, 2)), axis=1).reshape(n, 4).astype(np.float32)
    anchor = anchor[:, [0, 2, 1, 3]]
    deltas = rng.normal(0, 1.5, (n, 4)).astype(np.float32)
    lmk = rng.normal(0, 2, (n, 10)).astype(np.float32)
    for got, want in zip(insightface._decode(anchor, deltas, lmk), reference_if_decode(anchor, deltas, lmk)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    priors = np.abs(rng.normal(100, 80, (n, 4))).astype(np.float32)
    for dtype in (np.float32, np.float16, np.float64):
        loc, lm = deltas.astype(dtype), lmk.astype(dtype)
        for got, want in zip(biubug6.decode(loc, lm, priors), reference_decode(loc, lm, priors)):
            assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want), dtype


# ---- NMS on its own
def _boxes(rng, n: int, clusters: int, dtype) -> np.ndarray:
    """n boxes around `clusters` centres (duplicates suppress each other), some degenerate."""
    centres = rng.uniform(0, 1000, (max(clusters, 1), 2))
    c = centres[rng.integers(0, max(clusters, 1), n)] + rng.normal(0, 6, (n, 2))
    half = rng.uniform(2, 60, (n, 2))
    boxes = np.concatenate([c - half, c + half], axis=1)
    if n > 4:
        boxes[rng.integers(0, n, n // 20 + 1)] = np.round(boxes[rng.integers(0, n, n // 20 + 1)])
        boxes[0, 2] = boxes[0, 0] - 3  # negative width
    return boxes.astype(dtype)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 15, 16, 17, 47, 48, 49, 64, 121, 130, 300, 900])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_nms_matches_reference_on_random_boxes(n, dtype):
    rng = np.random.default_rng(n * 7 + np.dtype(dtype).itemsize)
    for clusters in (1, 6, max(1, n // 3)):
        boxes = _boxes(rng, n, clusters, dtype)
        for scores in (rng.random(n).astype(np.float32), np.round(rng.random(n) * 4).astype(np.float32) / 4):
            for threshold in (0.0, 0.3, 0.4, 0.5, 1.0, 1.5):
                for plus_one in (True, False):
                    got = nms(boxes, scores, threshold, plus_one)
                    want = reference_nms(boxes, scores, threshold, plus_one)
                    assert got.dtype == want.dtype == np.int64
                    assert np.array_equal(got, want), (n, clusters, threshold, plus_one)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf, as in the reference
def test_nms_non_finite_boxes_match_reference():
    rng = np.random.default_rng(3)
    boxes = _boxes(rng, 200, 6, np.float32)
    boxes[5, 1] = np.nan
    boxes[17] = np.nan
    boxes[40, 2] = np.inf
    boxes[41, 0] = -np.inf
    boxes[42, 2:] = np.inf
    scores = rng.random(200).astype(np.float32)
    scores[[5, 17, 40]] = 1.0  # the non-finite ones lead
    for threshold in (0.0, 0.4, 1.0):
        for plus_one in (True, False):
            assert np.array_equal(nms(boxes, scores, threshold, plus_one),
                                  reference_nms(boxes, scores, threshold, plus_one))


def _special_conf(n: int, rng) -> np.ndarray:
    """[1, n, 2] probabilities whose face scores include every kind of float32 around the thresholds."""
    conf = rng.dirichlet((1.0, 1.0), n).astype(np.float32)
    specials = []
    for t in (0.8, 0.5, 0.02, 1.0, 1e-30):
        t32 = np.float32(t)
        specials += [t32, np.nextafter(t32, np.float32(2)), np.nextafter(t32, np.float32(-2))]
    bits = np.array([0x7FC00000, 0x7F800001, 0x7FEFFFFF, 0x7FF00000, 0xFFC00000, 0x80000000, 0x00000001,
                     0x007FFFFF], np.uint32).view(np.float32)  # NaNs of both signs, -0, subnormals
    specials += list(bits) + [np.float32(v) for v in (0.0, np.inf, -np.inf, -0.5, 0.99, 1.5)]
    specials = np.array(specials, np.float32)
    rows = 64 + rng.permutation(n - 64)[: len(specials) * 4]  # the first 64 rows stay probabilities
    conf[rows, 1] = np.tile(specials, 4)
    conf[rows[::3], 0] = np.float32(np.nan)
    return conf[None]


def test_biubug6_threshold_pass_on_special_scores():
    """The packed float64 comparison against `scores > threshold` on NaN, infinities, -0, subnormals
    and the float32 neighbours of each threshold; thresholds where it does not apply fall back."""
    rng = np.random.default_rng(11)
    n = biubug6.prior_count(128, 128)
    outputs = {"loc": rng.normal(0, 0.5, (1, n, 4)).astype(np.float32), "conf": _special_conf(n, rng),
               "landmarks": rng.normal(0, 0.5, (1, n, 10)).astype(np.float32)}
    metas = [ImageMeta(1.0, 128, 128, 128, 128)]
    for threshold in (0.8, 0.5, 0.02, 1.0, 1e-30, 0.0, -1.0, np.inf, 2.0 ** -120):
        got = Biubug6Decoder(list(outputs), threshold)(outputs, metas)
        want = ReferenceBiubug6Decoder(list(outputs), threshold)(outputs, metas)
        _same_faces(got, want)
        assert len(want[0]) > 0 or threshold >= 1.0
