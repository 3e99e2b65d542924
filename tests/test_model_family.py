"""insightface family: anchors, decode and NMS on hand-made cases with known answers; preprocessing."""
from __future__ import annotations

import numpy as np
import pytest

from retinabench.model.anchors import anchors_plane, net3_base_anchors
from retinabench.model.insightface import InsightFaceDecoder, _decode
from retinabench.model.nms import nms
from retinabench.model.preprocess import ImageMeta, Normalization, Preprocessor

NAMES = [f"face_rpn_{k}_stride{s}" for s in (32, 16, 8) for k in ("cls_prob_reshape", "bbox_pred", "landmark_pred")]


def test_base_anchors_equal_facts():
    base = net3_base_anchors()
    np.testing.assert_array_equal(base[32], [[-248, -248, 263, 263], [-120, -120, 135, 135]])
    np.testing.assert_array_equal(base[16], [[-56, -56, 71, 71], [-24, -24, 39, 39]])
    np.testing.assert_array_equal(base[8], [[-8, -8, 23, 23], [0, 0, 15, 15]])


def test_anchor_plane_layout_is_row_column_anchor():
    base = net3_base_anchors()[8]
    plane = anchors_plane(3, 4, 8, base)
    assert plane.shape == (3, 4, 2, 4)
    # cell (y=2, x=3), anchor 1: base shifted by (x*8, y*8)
    np.testing.assert_array_equal(plane[2, 3, 1], base[1] + [24, 16, 24, 16])
    np.testing.assert_array_equal(plane[0, 1, 0], base[0] + [8, 0, 8, 0])


def test_anchor_count_at_1280x896():
    total = sum((896 // s) * (1280 // s) * 2 for s in (32, 16, 8))
    assert total == 47040


def test_decode_zero_deltas_returns_the_anchor():
    anchor = np.array([[0, 0, 15, 15]], np.float32)
    box, lmk = _decode(anchor, np.zeros((1, 4), np.float32), np.zeros((1, 5, 2), np.float32))
    np.testing.assert_allclose(box, anchor)
    np.testing.assert_allclose(lmk, np.full((1, 5, 2), 7.5))  # the anchor's centre


def test_decode_known_deltas():
    anchor = np.array([[10, 20, 29, 59]], np.float32)  # w=20, h=40, centre (19.5, 39.5)
    deltas = np.array([[0.5, -0.25, np.log(2.0), 0.0]], np.float32)
    lmk = np.array([[[1.0, 0.5]] * 5], np.float32)
    box, pts = _decode(anchor, deltas, lmk)
    # centre moves by (0.5*20, -0.25*40) = (29.5, 29.5); width doubles to 40, height stays 40
    np.testing.assert_allclose(box[0], [29.5 - 19.5, 29.5 - 19.5, 29.5 + 19.5, 29.5 + 19.5], atol=1e-5)
    np.testing.assert_allclose(pts[0, 0], [19.5 + 20, 39.5 + 20], atol=1e-5)


def test_nms_suppresses_at_or_above_threshold_with_plus_one_areas():
    boxes = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [5, 0, 14, 9], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.95, 0.7], np.float32)
    # box 2 (best) overlaps box 0: inter 5x10=50, union 150 -> IoU 1/3 < 0.4: both stay; box 1 duplicates 0
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), [2, 0, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 1 / 3), [2, 3])  # IoU == threshold suppresses
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).size == 0


def _outputs(h32: int, w32: int):
    out = {}
    for s in (32, 16, 8):
        h, w = h32 * 32 // s, w32 * 32 // s
        out[f"face_rpn_cls_prob_reshape_stride{s}"] = np.zeros((1, 4, h, w), np.float32)
        out[f"face_rpn_bbox_pred_stride{s}"] = np.zeros((1, 8, h, w), np.float32)
        out[f"face_rpn_landmark_pred_stride{s}"] = np.zeros((1, 20, h, w), np.float32)
    return out


def test_decoder_hand_made_faces_threshold_and_clipping():
    out = _outputs(2, 3)  # a 96x64 input
    out["face_rpn_cls_prob_reshape_stride8"][0, 3, 4, 5] = 0.9   # anchor 1 at (y=4, x=5): [40,32,55,47]
    out["face_rpn_cls_prob_reshape_stride8"][0, 2, 0, 0] = 0.79  # below threshold
    out["face_rpn_cls_prob_reshape_stride32"][0, 2, 1, 2] = 0.85  # anchor 0 at (1, 2): huge, clipped
    dec = InsightFaceDecoder(NAMES, 0.8)
    faces = dec(out, [ImageMeta(1.0, 96, 64, 96, 64)])[0]
    assert len(faces) == 2
    i = int(np.argmax(faces.scores == np.float32(0.9)))
    np.testing.assert_allclose(faces.boxes[i], [40, 32, 55, 47])
    j = 1 - i
    np.testing.assert_allclose(faces.boxes[j], [0, 0, 95, 63])  # clipped to the image
    # a scale of 0.5 maps blob pixels back to twice the size
    faces2 = dec(out, [ImageMeta(0.5, 96, 64, 192, 128)])[0]
    np.testing.assert_allclose(np.sort(faces2.boxes, axis=0), np.sort(faces.boxes * 2, axis=0))


def test_decoder_no_faces():
    faces = InsightFaceDecoder(NAMES, 0.5)(_outputs(1, 1), [ImageMeta(1.0, 32, 32, 32, 32)])[0]
    assert len(faces) == 0 and faces.landmarks.shape == (0, 5, 2)


def test_preprocess_native_is_rgb_float_planes(t1_image):
    blob, metas = Preprocessor(Normalization(), "native")([t1_image])
    expected = t1_image[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(blob[0], expected)
    assert metas[0] == ImageMeta(1.0, 1280, 886, 1280, 886)


def test_preprocess_fit_pads_bottom_right_with_zeros_and_reuses_its_buffer(t1_image):
    pre = Preprocessor(Normalization(), "fit", (1280, 896))
    blob, metas = pre([t1_image])
    assert blob.shape == (1, 3, 896, 1280) and metas[0].scale == 1.0
    assert not blob[0, :, 886:, :].any()
    small = t1_image[:100, :200]
    blob2, metas2 = pre([small])  # a smaller image later: stale pixels must be cleared
    assert blob2 is blob
    assert metas2[0].scale == pytest.approx(min(1280 / 200, 896 / 100))
    pre2 = Preprocessor(Normalization(), "fit", (1280, 896))
    fresh, _ = pre2([small])
    np.testing.assert_array_equal(blob2, fresh)


def test_preprocess_mean_std_and_bgr():
    img = np.full((32, 32, 3), (10, 20, 30), np.uint8)
    blob, _ = Preprocessor(Normalization("bgr", (1.0, 2.0, 3.0), (1.0, 2.0, 3.0)), "native")([img])
    np.testing.assert_allclose(blob[0, :, 0, 0], [9.0, 9.0, 9.0])
