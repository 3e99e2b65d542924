"""The dataset layer: WIDER FACE protocol (hand-computed and against the official code), COCO AP,
plain AP and bootstrap, dlib's faces from Debian (fetched here), downscaling, and bad input."""
from __future__ import annotations

import json
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from retinabench.datasets import (DatasetError, SourceUnreachable, average_precision, bootstrap_ap, coco_ap,
                                  default_cache_dir, fetch_dlib_faces, open_dataset, paired_ap_difference,
                                  read_dlib_xml, recall_at, wider_ap)
from retinabench.datasets import fetch as fetch_mod
from retinabench.datasets.downscale import scale_items, scaled_size
from retinabench.datasets.records import make_item
from retinabench.datasets.wider_protocol import normalize_scores, write_wider_predictions
from retinabench.errors import BenchError


# ---------------------------------------------------------------- helpers
def write_image(path: Path, w: int, h: int, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def cell(values) -> np.ndarray:
    """A MATLAB cell column (n x 1 object array), as scipy.io.loadmat returns the real .mat files' cells."""
    out = np.empty((len(values), 1), dtype=object)
    for i, v in enumerate(values):
        out[i, 0] = v
    return out


def write_wider(root: Path, images: dict, keep: dict, sizes=None) -> Path:
    """A WIDER FACE val layout under root.

    images: {"event/name": [[x, y, w, h, invalid], ...]} in file order ([] = no face);
    keep: {setting: {"event/name": [1-based indices]}}.
    """
    lines = []
    for key, faces in images.items():
        lines.append(key + ".jpg")
        lines.append(str(len(faces)))
        if not faces:
            lines.append("0 0 0 0 0 0 0 0 0 0 ")
        for x, y, w, h, invalid in faces:
            lines.append(f"{x} {y} {w} {h} 0 0 0 {invalid} 0 0 ")
        w, h = (sizes or {}).get(key, (200, 100))
        write_image(root / "WIDER_val" / "images" / (key + ".jpg"), w, h)
    (root / "wider_face_split").mkdir(parents=True, exist_ok=True)
    (root / "wider_face_split" / "wider_face_val_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    events = list(dict.fromkeys(k.split("/")[0] for k in images))
    gt_dir = root / "eval_tools" / "ground_truth"
    gt_dir.mkdir(parents=True, exist_ok=True)
    for setting, table in keep.items():
        files, gts = [], []
        for ev in events:
            names = [k for k in images if k.split("/")[0] == ev]
            files.append(cell([k.split("/")[1] for k in names]))
            # the real files: Kx1 uint8 (uint16 past 255) index columns, 0x0 where an image has no face
            gts.append(cell([np.array(table.get(k, []), dtype=np.uint8).reshape(-1, 1) if images[k]
                             else np.zeros((0, 0), np.uint8) for k in names]))
        savemat(str(gt_dir / f"wider_{setting}_val.mat"),
                {"event_list": cell(events), "file_list": cell(files), "gt_list": cell(gts)})
    return root


def one_line_naming(err: BaseException, name) -> str:
    msg = str(err)
    assert "\n" not in msg, msg
    assert str(name) in msg, f"{name} not named in: {msg}"
    return msg


# ---------------------------------------------------------------- WIDER FACE protocol
# Image A (0--Parade/0_Parade_a, 200x100): faces f1, f2, f3 (x y w h); image B: face g1;
# image C: no face (the txt's line of zeros, the official [0 0 0 0] box).
# Settings: easy keeps f1, g1; medium f1, f2, g1; hard f1, f2, f3, g1.
WIDER_IMAGES = {
    "0--Parade/0_Parade_a": [[10, 10, 20, 20, 0], [50, 10, 20, 20, 0], [100, 10, 6, 6, 0]],
    "1--Handshaking/1_Handshaking_b": [[20, 20, 30, 30, 0]],
    "1--Handshaking/1_Handshaking_c": [],
}
WIDER_KEEP = {
    "easy": {"0--Parade/0_Parade_a": [1], "1--Handshaking/1_Handshaking_b": [1]},
    "medium": {"0--Parade/0_Parade_a": [1, 2], "1--Handshaking/1_Handshaking_b": [1]},
    "hard": {"0--Parade/0_Parade_a": [1, 2, 3], "1--Handshaking/1_Handshaking_b": [1]},
}


def corners(x, y, w, h):
    return [x, y, x + w, y + h]


def wider_predictions():
    """Detections by item (x1 y1 x2 y2 score), scores chosen so each is its own threshold step.

    Global score order: e1 .95 (B g1), d2 .9 (A f2), d4 .85 (A, on nothing), d1 .8 (A f1),
    c1 .65 (C, on nothing), d3 .6 (A f3), d5 .5 (A, f1 again).
    """
    a = [corners(50, 10, 20, 20) + [0.9],      # d2 on f2
         [150, 50, 180, 80, 0.85],              # d4 on nothing
         corners(10, 10, 20, 20) + [0.8],       # d1 on f1
         corners(100, 10, 6, 6) + [0.6],        # d3 on f3
         corners(10, 10, 20, 20) + [0.5]]       # d5 on f1 again (a duplicate)
    b = [corners(20, 20, 30, 30) + [0.95]]     # e1 on g1
    c = [[50, 50, 70, 70, 0.65]]               # c1 on the image without faces
    return [np.array(a), np.array(b), np.array(c)]


# Hand computation (P = proposals, R = recalled faces of the setting, after each detection):
# easy (2 faces: f1, g1): e1 TP (P1,R1) p=1 r=.5 | d2 on f2, outside easy: neither way (P1,R1) |
#   d4 FP (2,1) | d1 TP (3,2) p=2/3 r=1 | c1 FP | d3 on f3: neither | d5 FP (duplicate).
#   Envelope: p=1 up to r=.5, 2/3 up to r=1 -> AP = .5*1 + .5*2/3 = 5/6.
#   (Were d2 a false positive: (2,1) then d1 at (4,2) -> .5*1 + .5*.5 = .75.)
# medium (3 faces: f1, f2, g1): e1 TP (1,1) r=1/3 | d2 TP (2,2) r=2/3 p=1 | d4 FP (3,2) |
#   d1 TP (4,3) r=1 p=3/4 | c1 FP | d3: neither | d5 FP -> AP = 1/3 + 1/3 + 1/3*3/4 = 11/12.
# hard (4 faces): e1 TP (1,1) r=.25 | d2 TP (2,2) r=.5 | d4 FP (3,2) | d1 TP (4,3) r=.75 p=3/4 |
#   c1 FP (5,3) | d3 TP (6,4) r=1 p=4/6 | d5 FP (7,4).
#   Envelope: 1 to r=.5, max(3/4, 4/6) = 3/4 at r=.75, 2/3 at r=1
#   -> AP = .25 + .25 + .25*3/4 + .25*2/3 = 41/48 = 0.854166...
#   (Were image C skipped, as it would be with no box at all: d3 at (5,4) p=.8 -> AP = .9.)
WIDER_EXPECTED = {"easy": 5 / 6, "medium": 11 / 12, "hard": 41 / 48}


@pytest.fixture
def wider_root(tmp_path):
    return write_wider(tmp_path / "WIDER", WIDER_IMAGES, WIDER_KEEP)


def test_wider_fixture_reads_as_written(wider_root, tmp_path):
    ds = open_dataset(f"widerface:{wider_root}", tmp_path)
    assert ds.kind == "widerface" and ds.num_images == 3 and ds.settings == ("easy", "medium", "hard")
    a, b, c = ds.items
    assert a.key == "0--Parade/0_Parade_a" and a.size == (200, 100)
    np.testing.assert_array_equal(a.boxes[2], [100, 10, 106, 16])  # x1 = x, x2 = x + w
    assert a.settings["easy"].tolist() == [True, False, False]
    assert a.settings["hard"].tolist() == [True, True, True]
    # the image without faces keeps the official placeholder box, ignored and in no setting
    assert c.boxes.tolist() == [[0, 0, 0, 0]] and c.ignore.tolist() == [True]
    assert not any(m.any() for m in c.settings.values())
    d = ds.describe()
    assert d["images"] == 3 and d["settings"] == {"easy": 2, "medium": 3, "hard": 4}
    assert len(d["annotations"]) == 4 and all(len(h) == 64 for h in d["annotations"].values())
    json.dumps(d)
    # the txt given directly finds the same layout
    assert open_dataset(f"widerface:{wider_root / 'wider_face_split' / 'wider_face_val_bbx_gt.txt'}",
                        tmp_path).num_boxes == ds.num_boxes


def test_wider_protocol_hand_computed(wider_root, tmp_path):
    ds = open_dataset(f"widerface:{wider_root}", tmp_path)
    aps = wider_ap(ds.items, wider_predictions())
    for s, want in WIDER_EXPECTED.items():
        assert aps[s] == pytest.approx(want, abs=1e-12), s
    # an increasing transform of the scores changes nothing (normalisation keeps the order and spacing)
    logits = [np.column_stack([p[:, :4], 10 * p[:, 4] + 3]) for p in wider_predictions()]
    assert wider_ap(ds.items, logits) == pytest.approx(aps, abs=1e-12)
    # detection order within an image does not matter (the official code assumes descending scores)
    shuffled = [p[::-1].copy() for p in wider_predictions()]
    assert wider_ap(ds.items, shuffled) == pytest.approx(aps, abs=1e-12)


def test_wider_score_normalisation_is_the_official_one():
    # the official running min starts at 1 and max at 0: scores above 1 are not min-max normalised
    p = normalize_scores([np.array([[0, 0, 1, 1, 8.0], [0, 0, 1, 1, 12.5]])])[0]
    assert p[:, 4].tolist() == pytest.approx([1.0, (8 - 1) / 11.5])
    p = normalize_scores([np.array([[0, 0, 1, 1, 0.2], [0, 0, 1, 1, 0.6]])])[0]
    assert p[:, 4].tolist() == pytest.approx([1.0, 0.0])


# A literal transcription of the official evaluation (biubug6/Pytorch_Retinaface,
# widerface_evaluate/evaluation.py and box_overlaps.pyx; MIT licence), loops and all, to check
# the vectorised protocol against on random data.
def _official_bbox_overlaps(boxes, query_boxes):
    N, K = boxes.shape[0], query_boxes.shape[0]
    overlaps = np.zeros((N, K), dtype=np.float64)
    for k in range(K):
        box_area = ((query_boxes[k, 2] - query_boxes[k, 0] + 1) * (query_boxes[k, 3] - query_boxes[k, 1] + 1))
        for n in range(N):
            iw = min(boxes[n, 2], query_boxes[k, 2]) - max(boxes[n, 0], query_boxes[k, 0]) + 1
            if iw > 0:
                ih = min(boxes[n, 3], query_boxes[k, 3]) - max(boxes[n, 1], query_boxes[k, 1]) + 1
                if ih > 0:
                    ua = float((boxes[n, 2] - boxes[n, 0] + 1) * (boxes[n, 3] - boxes[n, 1] + 1) + box_area - iw * ih)
                    overlaps[n, k] = iw * ih / ua
    return overlaps


def _official_image_eval(pred, gt, ignore, iou_thresh):
    _pred = pred.copy()
    _gt = gt.copy()
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])
    _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
    _pred[:, 3] = _pred[:, 3] + _pred[:, 1]
    _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
    _gt[:, 3] = _gt[:, 3] + _gt[:, 1]
    overlaps = _official_bbox_overlaps(_pred[:, :4], _gt)
    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), gt_overlap.argmax()
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        r_keep_index = np.where(recall_list == 1)[0]
        pred_recall[h] = len(r_keep_index)
    return pred_recall, proposal_list


def _official_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall):
    pr_info = np.zeros((thresh_num, 2)).astype('float')
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        r_index = np.where(pred_info[:, 4] >= thresh)[0]
        if len(r_index) == 0:
            pr_info[t, 0] = 0
            pr_info[t, 1] = 0
        else:
            r_index = r_index[-1]
            p_index = np.where(proposal_list[:r_index + 1] == 1)[0]
            pr_info[t, 0] = len(p_index)
            pr_info[t, 1] = pred_recall[r_index]
    return pr_info


def _official_voc_ap(rec, prec):
    mrec = np.concatenate(([0.], rec, [1.]))
    mpre = np.concatenate(([0.], prec, [0.]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _official_evaluation(gt_xywh, keeps, preds_xywh, iou_thresh=0.5, thresh_num=1000):
    """evaluation() with its inputs in memory: gt boxes x,y,w,h per image, 1-based keep lists per
    setting, predictions x,y,w,h,score per image in descending score order (as its files are)."""
    max_score, min_score = 0, 1
    for v in preds_xywh:
        if len(v) == 0:
            continue
        min_score = min(np.min(v[:, -1]), min_score)
        max_score = max(np.max(v[:, -1]), max_score)
    diff = max_score - min_score
    preds = []
    for v in preds_xywh:
        v = v.copy()
        if len(v):
            v[:, -1] = (v[:, -1] - min_score) / diff
        preds.append(v)
    aps = {}
    for setting, keep_lists in keeps.items():
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2)).astype('float')
        for gt_boxes, keep_index, pred_info in zip(gt_xywh, keep_lists, preds):
            keep_index = np.asarray(keep_index, dtype=np.int64).reshape(-1, 1)
            count_face += len(keep_index)
            if len(gt_boxes) == 0 or len(pred_info) == 0:
                continue
            ignore = np.zeros(gt_boxes.shape[0])
            if len(keep_index) != 0:
                ignore[keep_index - 1] = 1
            pred_recall, proposal_list = _official_image_eval(pred_info, gt_boxes, ignore, iou_thresh)
            pr_curve += _official_img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        with np.errstate(divide="ignore", invalid="ignore"):
            propose = pr_curve[:, 1] / pr_curve[:, 0]
            recall = pr_curve[:, 1] / count_face
        aps[setting] = _official_voc_ap(recall, propose)
    return aps


def test_wider_protocol_matches_the_official_code(tmp_path):
    """Random crowded images (overlapping faces, duplicates, near-misses, ties of IoU) through the
    official code's transcription and through ours: equal to 1e-9."""
    rng = np.random.default_rng(7)
    images, keep = {}, {"easy": {}, "medium": {}, "hard": {}}
    gt_xywh, keeps, preds_xywh, preds_ours = [], {s: [] for s in keep}, [], []
    for i in range(12):
        key = f"{i % 3}--Ev/{i % 3}_Ev_{i}"
        n = int(rng.integers(0, 7))
        faces = [[int(rng.integers(0, 150)), int(rng.integers(0, 70)), int(rng.integers(2, 45)),
                  int(rng.integers(2, 30)), 0] for _ in range(n)]
        faces = [[x, y, min(w, 200 - x), min(h, 100 - y), 0] for x, y, w, h, _ in faces]
        images[key] = faces
        hard = sorted(rng.choice(np.arange(1, n + 1), size=int(rng.integers(0, n + 1)), replace=False).tolist()) if n else []
        medium = [k for k in hard if rng.random() < 0.6]
        easy = [k for k in medium if rng.random() < 0.6]
        for s, lst in (("easy", easy), ("medium", medium), ("hard", hard)):
            keep[s][key] = lst
            keeps[s].append(lst)
        gt = np.array([f[:4] for f in faces], dtype=np.float64).reshape(-1, 4) if n else np.zeros((1, 4))
        gt_xywh.append(gt)
        m = int(rng.integers(0, 9))
        dets = []
        for _ in range(m):
            if n and rng.random() < 0.7:  # near a face, jittered
                x, y, w, h = gt[int(rng.integers(0, n))]
                x, y = x + rng.normal(0, 2), y + rng.normal(0, 2)
                w, h = max(1.0, w + rng.normal(0, 2)), max(1.0, h + rng.normal(0, 2))
            else:
                x, y, w, h = rng.uniform(0, 150), rng.uniform(0, 70), rng.uniform(3, 40), rng.uniform(3, 30)
            dets.append([x, y, w, h, round(float(rng.uniform(0.02, 1.0)), 3)])
        d = np.array(dets, dtype=np.float64).reshape(-1, 5)
        d = d[np.argsort(-d[:, 4], kind="stable")]
        preds_xywh.append(d)
        preds_ours.append(np.column_stack([d[:, 0], d[:, 1], d[:, 0] + d[:, 2], d[:, 1] + d[:, 3], d[:, 4]]))
    root = write_wider(tmp_path / "W", images, keep)
    ds = open_dataset(f"widerface:{root}", tmp_path)
    want = _official_evaluation(gt_xywh, keeps, preds_xywh)
    got = wider_ap(ds.items, preds_ours)
    assert got == pytest.approx(want, abs=1e-9)
    assert 0.05 < got["hard"] < 0.95  # a case that exercises the curve, not a trivial one
    # the official input files, written for the official code, hold the same numbers
    write_wider_predictions(tmp_path / "pred", ds.items, preds_ours)
    lines = (tmp_path / "pred" / "0--Ev" / "0_Ev_0.txt").read_text().splitlines()
    assert lines[0] == "0_Ev_0" and int(lines[1]) == len(preds_ours[0])


# ---------------------------------------------------------------- COCO AP, plain AP, bootstrap
def items_two_faces(tmp_path):
    a = make_item(tmp_path / "a.png", "a.png", (200, 100), [[10, 10, 60, 60]])
    b = make_item(tmp_path / "b.png", "b.png", (200, 100), [[100, 20, 150, 70]])
    return [a, b]


def test_coco_ap_perfect_detections_is_one(tmp_path):
    items = items_two_faces(tmp_path)
    preds = [np.array([[10, 10, 60, 60, 0.9]]), np.array([[100, 20, 150, 70, 0.8]])]
    assert coco_ap(items, preds) == pytest.approx({"ap": 1.0, "ap50": 1.0, "ap75": 1.0})


def test_coco_ap_hand_computed(tmp_path):
    items = items_two_faces(tmp_path)
    # one face found, the other missed (a false positive elsewhere): precision 1 up to recall .5 at every
    # IoU threshold; COCO's 101 recall points 0, .01, ..., .50 get precision 1 -> AP = 51/101
    preds = [np.array([[10, 10, 60, 60, 0.9]]), np.array([[0, 80, 20, 100, 0.8]])]
    assert coco_ap(items, preds) == pytest.approx({"ap": 51 / 101, "ap50": 51 / 101, "ap75": 51 / 101})
    # one face, one detection at IoU .64 (50x32 of a 50x50 face): a match at thresholds .50, .55, .60 only
    one = items[:1]
    r = coco_ap(one, [np.array([[10, 10, 60, 42, 0.9]])])
    assert r == pytest.approx({"ap": 0.3, "ap50": 1.0, "ap75": 0.0})
    # an ignore box (iscrowd) absorbs the detection on it: neither way
    crowd = [make_item(tmp_path / "c.png", "c.png", (200, 100), [[10, 10, 60, 60], [100, 10, 150, 60]], [False, True])]
    r = coco_ap(crowd, [np.array([[100, 10, 150, 60, 0.95], [10, 10, 60, 60, 0.9]])])
    assert r["ap"] == pytest.approx(1.0)
    assert coco_ap(items, [np.zeros((0, 5)), np.zeros((0, 5))]) == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}


def test_plain_ap_hand_computed(tmp_path):
    items = [make_item(tmp_path / "a.png", "a.png", (200, 100), [[10, 10, 60, 60], [100, 10, 150, 60], [0, 70, 20, 90]],
                       [False, False, True]),
             make_item(tmp_path / "b.png", "b.png", (200, 100), [])]
    preds = [np.array([[10, 10, 60, 60, 0.9],     # TP
                       [0, 70, 20, 90, 0.85],     # on the ignore box: neither way
                       [12, 10, 62, 60, 0.7],     # duplicate of the first face: FP
                       [100, 10, 150, 60, 0.6]]),  # TP
             np.array([[5, 5, 30, 30, 0.8]])]     # on an image without faces: FP
    # order: TP(.9) p=1 r=.5 | ignore | FP(.8) | FP(.7) | TP(.6) p=2/4 r=1 -> AP = .5*1 + .5*.5 = .75
    assert average_precision(items, preds) == pytest.approx(0.75)
    assert recall_at(items, preds, 0.65) == pytest.approx(0.5)
    assert recall_at(items, preds, 0.5) == pytest.approx(1.0)


def test_bootstrap_is_seeded_and_paired(tmp_path):
    rng = np.random.default_rng(3)
    items, good, bad = [], [], []
    for k in range(12):
        boxes = [[20 * j, 10, 20 * j + 15, 25] for j in range(1 + k % 3)]
        items.append(make_item(tmp_path / f"{k}.png", f"{k}.png", (100, 40), boxes))
        good.append(np.array([b + [rng.uniform(0.5, 1)] for b in boxes]))
        bad.append(np.array([b + [rng.uniform(0.5, 1)] for b in boxes[:1]] + [[60, 0, 75, 15, 0.9]]))
    first = bootstrap_ap(items, bad, n_boot=300, seed=11)
    assert first == bootstrap_ap(items, bad, n_boot=300, seed=11)
    assert first.low <= first.estimate <= first.high and first.low < first.high
    assert first.estimate == pytest.approx(average_precision(items, bad))
    assert bootstrap_ap(items, good, n_boot=50).as_dict()["low"] == pytest.approx(1.0)
    same = paired_ap_difference(items, bad, bad, n_boot=200, seed=1)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    d = paired_ap_difference(items, good, bad, n_boot=300, seed=1)
    assert d.estimate == pytest.approx(1.0 - first.estimate) and 0 < d.low <= d.estimate <= d.high


# ---------------------------------------------------------------- dlib's faces
@pytest.fixture(scope="module")
def dlib_cache():
    cache = default_cache_dir()
    try:
        fetch_dlib_faces(cache)
    except SourceUnreachable as e:
        pytest.skip(f"apt cannot reach Debian's sources here: {e}")
    return cache


def test_dlib_fetch_verified_and_cached(dlib_cache, monkeypatch):
    folder = fetch_mod.faces_dir(dlib_cache)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["archive_sha256"] == fetch_mod.ARCHIVE_SHA256
    names = sorted(manifest["files"])
    assert len([n for n in names if n.endswith(".jpg")]) == 9
    assert {"training.xml", "testing.xml", "training_with_face_landmarks.xml",
            "testing_with_face_landmarks.xml"} <= set(names)
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(names + ["manifest.json"])

    def no_apt(*a, **k):
        raise AssertionError("apt ran although the set is cached")
    monkeypatch.setattr(subprocess, "run", no_apt)
    start = time.perf_counter()
    assert fetch_dlib_faces(dlib_cache) == folder
    assert time.perf_counter() - start < 2


def test_dlib_split_counts(dlib_cache):
    train = open_dataset("dlib:train", dlib_cache)
    test = open_dataset("dlib", dlib_cache)
    assert (train.num_images, train.num_boxes) == (4, 18)
    assert (test.name, test.num_images, test.num_boxes) == ("dlib:test", 5, 25)
    assert not {it.key for it in train.items} & {it.key for it in test.items}
    # dlib's <box top=90 left=194 width=37 height=37> is x1=194, y1=90, x2=231, y2=127
    first = next(it for it in train.items if it.key == "2007_007763.jpg")
    assert first.boxes[0].tolist() == [194, 90, 231, 127] and first.size == (500, 375)
    small = open_dataset("dlib:test@0.35", dlib_cache)
    assert small.name == "dlib:test@0.35" and small.num_boxes == 25
    for it, big in zip(small.items, test.items):
        assert it.size == scaled_size(*big.size, Fraction("0.35"))
        assert cv2.imread(str(it.path)).shape[:2] == (it.size[1], it.size[0])


def test_dlib_fetch_errors(tmp_path, monkeypatch):
    # a mismatching archive names both digests
    fake = tmp_path / fetch_mod.ARCHIVE
    fake.write_bytes(b"not the archive")
    download_source = fetch_mod.download_source
    monkeypatch.setattr(fetch_mod, "debian_source", lambda: ("http://mirror", "bookworm", []))
    monkeypatch.setattr(fetch_mod, "download_source", lambda *a: fake)
    with pytest.raises(DatasetError) as e:
        fetch_dlib_faces(tmp_path / "c1")
    msg = one_line_naming(e.value, fetch_mod.ARCHIVE_SHA256)
    assert fetch_mod.sha256_file(fake) in msg
    # apt unable to reach the mirror: SourceUnreachable with apt's error line

    def unreachable(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, "Err:1 http://mirror bookworm InRelease\n",
                                           "W: Failed to fetch http://mirror/dists/bookworm/InRelease  "
                                           "Could not resolve 'mirror'\nW: Some index files failed to download.\n")
    monkeypatch.setattr(fetch_mod.subprocess, "run", unreachable)
    monkeypatch.setattr(fetch_mod.shutil, "which", lambda name: "/usr/bin/apt-get")
    with pytest.raises(SourceUnreachable) as e:
        download_source(tmp_path, "http://mirror", "bookworm", [], 5)
    one_line_naming(e.value, "Could not resolve 'mirror'")


def test_apt_sources_read_both_formats(tmp_path):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# comment\ndeb [arch=amd64] http://ftp.example.org/debian/ bookworm main contrib\n")
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.example.org/debian\nSuites: bookworm\nComponents: main\n")
    (etc / "sources.list.d" / "other.list.disabled").write_text("deb http://nope/debian bookworm main\n")
    entries = fetch_mod.read_apt_sources(etc)
    assert [(u, s) for u, s, *_ in entries] == [
        ("http://ftp.example.org/debian", ["bookworm"]),
        ("http://deb.debian.org/debian", ["bookworm", "bookworm-updates"]),
        ("http://deb.debian.org/debian-security", ["bookworm-security"])]
    uri, suite, opts = fetch_mod.debian_source(etc)
    assert suite in ("bookworm", fetch_mod._codename()) and uri.endswith("/debian")


# ---------------------------------------------------------------- downscaling
def test_downscaled_boxes_are_exact(tmp_path):
    # a 333x201 black photo with a white 60x40 face at x 101..160, y 51..90 (x1=101, x2=161)
    img = np.zeros((201, 333, 3), np.uint8)
    img[51:91, 101:161] = 255
    cv2.imwrite(str(tmp_path / "p.png"), img)
    xml = tmp_path / "faces.xml"
    xml.write_text("<dataset><images><image file='p.png'><box top='51' left='101' width='60' height='40'/>"
                   "</image></images></dataset>")
    (item,) = read_dlib_xml(xml)
    assert item.boxes.tolist() == [[101, 51, 161, 91]]
    (small,), facts = scale_items([item], "0.5", tmp_path / "scaled", xml)
    # 333 * .5 = 166.5 -> 167 and 201 * .5 = 100.5 -> 101 (half up); the ratios are 167/333 and 101/201
    assert small.size == (167, 101) and facts["sizes"]["p.png"] == [333, 201, 167, 101]
    assert small.boxes.tolist() == [[101 * 167 / 333, 51 * 101 / 201, 161 * 167 / 333, 91 * 101 / 201]]
    # the pixels agree: the white mass's bounds and centre are where the transformed box says
    out = cv2.imread(str(small.path), cv2.IMREAD_GRAYSCALE).astype(np.float64) / 255
    x1, y1, x2, y2 = small.boxes[0]
    # (uint8 rounding of the partly covered edge pixels allows a few thousandths; a half-pixel error would
    # move the centre by 0.25 px)
    assert out.sum() == pytest.approx((x2 - x1) * (y2 - y1), rel=5e-3)
    ys, xs = np.mgrid[0:out.shape[0], 0:out.shape[1]] + 0.5
    assert (out * xs).sum() / out.sum() == pytest.approx((x1 + x2) / 2, abs=0.02)
    assert (out * ys).sum() / out.sum() == pytest.approx((y1 + y2) / 2, abs=0.02)
    # written once: a second call reuses the PNG
    mtime = small.path.stat().st_mtime_ns
    scale_items([item], "0.5", tmp_path / "scaled", xml)
    assert small.path.stat().st_mtime_ns == mtime
    assert scaled_size(500, 375, Fraction("0.35")) == (175, 131)
    with pytest.raises(DatasetError) as e:
        scale_items([item], "1.5", tmp_path / "scaled", xml)
    one_line_naming(e.value, xml)


def test_image_size_from_headers_as_cv2_decodes(tmp_path):
    from retinabench.datasets.image_size import image_size

    ok, jpg = cv2.imencode(".jpg", np.zeros((50, 100, 3), np.uint8))
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(jpg.tobytes())
    # the same JPEG with an EXIF APP1 segment saying "rotate 90" (orientation 6): cv2.imread turns it
    ifd = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00" + b"\x00" * 4
    app1 = b"Exif\x00\x00" + ifd
    turned = tmp_path / "turned.jpg"
    turned.write_bytes(jpg.tobytes()[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpg.tobytes()[2:])
    png = tmp_path / "p.png"
    cv2.imwrite(str(png), np.zeros((7, 9, 3), np.uint8))
    bmp = tmp_path / "b.bmp"  # no header parser: decoded
    cv2.imwrite(str(bmp), np.zeros((5, 6, 3), np.uint8))
    for path in (plain, turned, png, bmp):
        h, w = cv2.imread(str(path)).shape[:2]
        assert image_size(path) == (w, h), path
    assert image_size(turned) == (50, 100)


# ---------------------------------------------------------------- COCO / VOC folders and bad input
def write_coco(tmp_path, images, annotations, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "person"}]}))
    return path


def test_coco_folder_reads(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg", 100, 80)
    write_image(tmp_path / "imgs" / "b.jpg", 100, 80)
    ann = write_coco(tmp_path, [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
                                {"id": 8, "file_name": "b.jpg"}],
                     [{"image_id": 7, "bbox": [10, 10, 20, 30], "category_id": 1},
                      {"image_id": 7, "bbox": [50, 10, 20, 20], "category_id": 1, "iscrowd": 1},
                      {"image_id": 7, "bbox": [0, 0, 100, 80], "category_id": 2}])
    ds = open_dataset(f"coco:{ann},images={tmp_path / 'imgs'}", tmp_path)
    assert ds.num_images == 2 and ds.num_boxes == 3 and ds.items[1].num_boxes == 0
    ds = open_dataset(f"coco:{ann},images={tmp_path / 'imgs'},names=face", tmp_path)
    a = ds.items[0]
    assert a.boxes.tolist() == [[10, 10, 30, 40], [50, 10, 70, 30]] and a.ignore.tolist() == [False, True]


def test_voc_folder_reads(tmp_path):
    write_image(tmp_path / "JPEGImages" / "x.jpg", 120, 90)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "x.xml").write_text(
        "<annotation><filename>x.jpg</filename><size><width>120</width><height>90</height></size>"
        "<object><name>face</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>120</xmax><ymax>90</ymax></bndbox></object>"
        "<object><name>face</name><difficult>1</difficult><bndbox><xmin>11</xmin><ymin>21</ymin>"
        "<xmax>30</xmax><ymax>40</ymax></bndbox></object>"
        "<object><name>hand</name><bndbox><xmin>50</xmin><ymin>50</ymin><xmax>60</xmax><ymax>60</ymax></bndbox>"
        "</object></annotation>")
    ds = open_dataset(f"voc:{tmp_path}", tmp_path)
    (it,) = ds.items
    # VOC's 1-based inclusive pixels: xmin=1..xmax=120 is the whole 120-pixel row: x1 = 0, x2 = 120
    assert it.boxes.tolist()[:2] == [[0, 0, 120, 90], [10, 20, 30, 40]] and it.ignore.tolist() == [False, True, False]
    assert open_dataset(f"voc:{tmp_path},names=face", tmp_path).num_boxes == 2


def _raises_one_line(spec, cache, name):
    with pytest.raises(DatasetError) as e:
        open_dataset(spec, cache)
    assert isinstance(e.value, BenchError)
    return one_line_naming(e.value, name)


def test_bad_input_path_does_not_exist(tmp_path):
    for spec, name in ((f"widerface:{tmp_path / 'nope'}", tmp_path / "nope"),
                       (f"coco:{tmp_path / 'nope.json'}", tmp_path / "nope.json"),
                       (f"voc:{tmp_path / 'nope'}", tmp_path / "nope")):
        assert "does not exist" in _raises_one_line(spec, tmp_path, name)


def test_bad_input_missing_images(tmp_path, wider_root):
    write_image(tmp_path / "a.jpg", 100, 80)
    ann = write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "gone.jpg"}],
                     [{"image_id": 1, "bbox": [10, 10, 20, 20], "category_id": 1}])
    assert "gone.jpg" in _raises_one_line(f"coco:{ann}", tmp_path, ann)
    xml = tmp_path / "faces.xml"
    xml.write_text("<dataset><images><image file='gone.jpg'><box top='1' left='1' width='5' height='5'/>"
                   "</image></images></dataset>")
    with pytest.raises(DatasetError) as e:
        read_dlib_xml(xml)
    assert "gone.jpg" in one_line_naming(e.value, xml)
    (wider_root / "WIDER_val" / "images" / "0--Parade" / "0_Parade_a.jpg").unlink()
    txt = wider_root / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    assert "0_Parade_a.jpg" in _raises_one_line(f"widerface:{wider_root}", tmp_path, txt)


def test_bad_input_box_outside_image(tmp_path):
    write_image(tmp_path / "a.jpg", 100, 80)

    def coco(bbox, name):
        return write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}],
                          [{"image_id": 1, "bbox": bbox, "category_id": 1}], name)
    # touching the edges, and 1 px past them (the tolerance), is accepted
    assert open_dataset(f"coco:{coco([0, 0, 100, 80], 'edge.json')}", tmp_path).num_boxes == 1
    assert open_dataset(f"coco:{coco([-1, -1, 102, 82], 'tol.json')}", tmp_path).num_boxes == 1
    bad = coco([50, 40, 51.5, 20], "out.json")
    assert "outside the 100x80 image" in _raises_one_line(f"coco:{bad}", tmp_path, bad)
    neg = coco([50, 40, -5, 20], "neg.json")
    assert "negative" in _raises_one_line(f"coco:{neg}", tmp_path, neg)
    (tmp_path / "voc").mkdir()
    write_image(tmp_path / "voc" / "v.jpg", 100, 80)
    vxml = tmp_path / "voc" / "v.xml"
    vxml.write_text("<annotation><filename>v.jpg</filename><object><name>face</name><bndbox><xmin>90</xmin>"
                    "<ymin>10</ymin><xmax>140</xmax><ymax>30</ymax></bndbox></object></annotation>")
    _raises_one_line(f"voc:{tmp_path / 'voc'}", tmp_path, vxml)
    root = write_wider(tmp_path / "W", {"0--E/0_E_1": [[180, 10, 40, 20, 0]]}, {s: {} for s in WIDER_KEEP})
    _raises_one_line(f"widerface:{root}", tmp_path, root / "wider_face_split" / "wider_face_val_bbx_gt.txt")


def test_wider_accepts_the_official_negative_width_box(tmp_path):
    # the official val annotations hold x=1026 w=-2 on a 1024-wide image, and the hard setting counts it
    root = write_wider(tmp_path / "W", {"39--Ice/39_Ice_1": [[10, 10, 20, 20, 0], [1026, 474, -2, 23, 0]]},
                       {"easy": {}, "medium": {}, "hard": {"39--Ice/39_Ice_1": [1, 2]}},
                       sizes={"39--Ice/39_Ice_1": (1024, 600)})
    ds = open_dataset(f"widerface:{root}", tmp_path)
    assert ds.describe()["accepted_defects"] == ["39--Ice/39_Ice_1 box 2: x=1026 y=474 w=-2 h=23"]
    # found face 1, face 2 can never be: recall 1/2, precision 1 -> AP .5, as the official code says
    aps = wider_ap(ds.items, [np.array([[10, 10, 30, 30, 0.9], [0, 0, 5, 5, 0.1]])], settings=("hard",))
    assert aps["hard"] == pytest.approx(0.5)


def test_bad_input_empty_dataset(tmp_path):
    empty = write_coco(tmp_path, [], [], "empty.json")
    assert "empty" in _raises_one_line(f"coco:{empty}", tmp_path, empty)
    write_image(tmp_path / "a.jpg", 100, 80)
    nofaces = write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg"}], [], "nofaces.json")
    assert "no face boxes" in _raises_one_line(f"coco:{nofaces}", tmp_path, nofaces)
    (tmp_path / "vocempty").mkdir()
    assert "empty" in _raises_one_line(f"voc:{tmp_path / 'vocempty'}", tmp_path, tmp_path / "vocempty")
    xml = tmp_path / "none.xml"
    xml.write_text("<dataset><images></images></dataset>")
    with pytest.raises(DatasetError) as e:
        read_dlib_xml(xml)
    one_line_naming(e.value, xml)


def test_bad_input_unknown_kind_and_spec(tmp_path):
    msg = _raises_one_line(f"fddb:{tmp_path}", tmp_path, "fddb")
    assert "widerface, coco, voc, dlib" in msg
    assert "known: train, test" in _raises_one_line("dlib:val", tmp_path, "dlib:val")
    assert "not a number" in _raises_one_line("dlib:test@big", tmp_path, "dlib:test@big")
    assert "outside (0, 1]" in _raises_one_line("dlib@2", tmp_path, "dlib@2")


def test_bad_input_settings_disagree_with_txt(tmp_path):
    root = write_wider(tmp_path / "W", {"0--E/0_E_1": [[10, 10, 20, 20, 0]]},
                       {"easy": {}, "medium": {}, "hard": {"0--E/0_E_1": [1, 2]}})
    mat = root / "eval_tools" / "ground_truth" / "wider_hard_val.mat"
    assert "outside its 1 boxes" in _raises_one_line(f"widerface:{root}", tmp_path, mat)
    (root / "eval_tools" / "ground_truth" / "wider_easy_val.mat").unlink()
    _raises_one_line(f"widerface:{root}", tmp_path, "wider_easy_val.mat")
