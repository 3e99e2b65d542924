"""A line-by-line port of insightface's RetinaFace.detect() (network 'net3', scales [1.0], no flip,
nms 0.4, vote False) for use as the test oracle: full anchor planes, decode of every anchor,
clip_boxes, argsort by score, and the cython cpu_nms's loop. It runs MXNet's Module exactly as
insightface does (mx.mod.Module, bind, forward on nd.array of the per-channel float tensor).
It is deliberately not vectorised or clever: it is what the fast code must equal.
"""
from __future__ import annotations

import numpy as np


def generate_anchors(base_size=16, ratios=(1.0,), scales=(32, 16)):
    base_anchor = np.array([1, 1, base_size, base_size]) - 1

    def whctrs(a):
        w = a[2] - a[0] + 1; h = a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mkanchors(ws, hs, x_ctr, y_ctr):
        ws = ws[:, np.newaxis]; hs = hs[:, np.newaxis]
        return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))

    w, h, x_ctr, y_ctr = whctrs(base_anchor)
    size = w * h
    size_ratios = size / np.array(ratios)
    ws = np.round(np.sqrt(size_ratios)); hs = np.round(ws * np.array(ratios))
    ratio_anchors = mkanchors(ws, hs, x_ctr, y_ctr)
    out = []
    for i in range(ratio_anchors.shape[0]):
        w, h, x_ctr, y_ctr = whctrs(ratio_anchors[i, :])
        out.append(mkanchors(w * np.array(scales), h * np.array(scales), x_ctr, y_ctr))
    return np.vstack(out)


def anchors_plane(height, width, stride, base_anchors):
    A = base_anchors.shape[0]
    all_anchors = np.zeros((height, width, A, 4), dtype=np.float32)
    for iw in range(width):
        sw = iw * stride
        for ih in range(height):
            sh = ih * stride
            for k in range(A):
                all_anchors[ih, iw, k, 0] = base_anchors[k, 0] + sw
                all_anchors[ih, iw, k, 1] = base_anchors[k, 1] + sh
                all_anchors[ih, iw, k, 2] = base_anchors[k, 2] + sw
                all_anchors[ih, iw, k, 3] = base_anchors[k, 3] + sh
    return all_anchors


def clip_boxes(boxes, im_shape):
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], im_shape[1] - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], im_shape[0] - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], im_shape[1] - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], im_shape[0] - 1), 0)
    return boxes


def bbox_pred(boxes, box_deltas):
    boxes = boxes.astype(np.float32, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * (widths - 1.0)
    ctr_y = boxes[:, 1] + 0.5 * (heights - 1.0)
    dx = box_deltas[:, 0:1]; dy = box_deltas[:, 1:2]; dw = box_deltas[:, 2:3]; dh = box_deltas[:, 3:4]
    pred_ctr_x = dx * widths[:, np.newaxis] + ctr_x[:, np.newaxis]
    pred_ctr_y = dy * heights[:, np.newaxis] + ctr_y[:, np.newaxis]
    pred_w = np.exp(dw) * widths[:, np.newaxis]
    pred_h = np.exp(dh) * heights[:, np.newaxis]
    pred_boxes = np.zeros(box_deltas.shape)
    pred_boxes[:, 0:1] = pred_ctr_x - 0.5 * (pred_w - 1.0)
    pred_boxes[:, 1:2] = pred_ctr_y - 0.5 * (pred_h - 1.0)
    pred_boxes[:, 2:3] = pred_ctr_x + 0.5 * (pred_w - 1.0)
    pred_boxes[:, 3:4] = pred_ctr_y + 0.5 * (pred_h - 1.0)
    return pred_boxes


def landmark_pred(boxes, landmark_deltas):
    boxes = boxes.astype(np.float32, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * (widths - 1.0)
    ctr_y = boxes[:, 1] + 0.5 * (heights - 1.0)
    pred = landmark_deltas.copy()
    for i in range(5):
        pred[:, i, 0] = landmark_deltas[:, i, 0] * widths + ctr_x
        pred[:, i, 1] = landmark_deltas[:, i, 1] * heights + ctr_y
    return pred


def cpu_nms(dets, thresh):
    x1 = dets[:, 0]; y1 = dets[:, 1]; x2 = dets[:, 2]; y2 = dets[:, 3]; scores = dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    suppressed = np.zeros(dets.shape[0], dtype=int)
    keep = []
    for _i in range(dets.shape[0]):
        i = order[_i]
        if suppressed[i] == 1:
            continue
        keep.append(i)
        for _j in range(_i + 1, dets.shape[0]):
            j = order[_j]
            if suppressed[j] == 1:
                continue
            xx1 = max(x1[i], x1[j]); yy1 = max(y1[i], y1[j]); xx2 = min(x2[i], x2[j]); yy2 = min(y2[i], y2[j])
            w = max(0.0, xx2 - xx1 + 1); h = max(0.0, yy2 - yy1 + 1)
            inter = w * h
            ovr = inter / (areas[i] + areas[j] - inter)
            if ovr >= thresh:
                suppressed[j] = 1
    return keep


def insightface_detect(symbol_prefix: str, img: np.ndarray, threshold: float):
    """(det [N,5] x1 y1 x2 y2 score, landmarks [N,5,2]) as insightface's detect() returns them."""
    import mxnet as mx
    from mxnet import ndarray as nd
    strides = [32, 16, 8]
    cfg = {32: (32, 16), 16: (8, 4), 8: (2, 1)}
    anchors_fpn = {s: generate_anchors(16, (1.0,), cfg[s]).astype(np.float32) for s in strides}
    sym, arg_params, aux_params = mx.model.load_checkpoint(symbol_prefix, 0)
    model = mx.mod.Module(symbol=sym, context=mx.cpu(), label_names=None)
    model.bind(data_shapes=[("data", (1, 3, 640, 640))], for_training=False)
    model.set_params(arg_params, aux_params)

    im = img.copy().astype(np.float32)
    im_info = [im.shape[0], im.shape[1]]
    im_tensor = np.zeros((1, 3, im.shape[0], im.shape[1]))
    for i in range(3):
        im_tensor[0, i, :, :] = im[:, :, 2 - i]
    data = nd.array(im_tensor)
    db = mx.io.DataBatch(data=(data,), provide_data=[("data", data.shape)])
    model.forward(db, is_train=False)
    net_out = model.get_outputs()
    proposals_list, scores_list, landmarks_list = [], [], []
    for idx, s in enumerate(strides):
        A = anchors_fpn[s].shape[0]
        scores = net_out[idx * 3].asnumpy()[:, A:, :, :]
        bbox_deltas = net_out[idx * 3 + 1].asnumpy()
        height, width = bbox_deltas.shape[2], bbox_deltas.shape[3]
        K = height * width
        anchors = anchors_plane(height, width, s, anchors_fpn[s]).reshape((K * A, 4))
        scores = scores.transpose((0, 2, 3, 1)).reshape((-1, 1))
        bbox_deltas = bbox_deltas.transpose((0, 2, 3, 1))
        bbox_deltas = bbox_deltas.reshape((-1, bbox_deltas.shape[3] // A))
        proposals = clip_boxes(bbox_pred(anchors, bbox_deltas), im_info[:2])
        order = np.where(scores.ravel() >= threshold)[0]
        proposals_list.append(proposals[order, :]); scores_list.append(scores[order])
        landmark_deltas = net_out[idx * 3 + 2].asnumpy()
        lp = landmark_deltas.shape[1] // A
        landmark_deltas = landmark_deltas.transpose((0, 2, 3, 1)).reshape((-1, 5, lp // 5))
        landmarks_list.append(landmark_pred(anchors, landmark_deltas)[order, :])
    proposals = np.vstack(proposals_list); scores = np.vstack(scores_list)
    order = scores.ravel().argsort()[::-1]
    proposals = proposals[order, :]; scores = scores[order]
    landmarks = np.vstack(landmarks_list)[order].astype(np.float32, copy=False)
    pre_det = np.hstack((proposals[:, 0:4], scores)).astype(np.float32, copy=False)
    keep = cpu_nms(pre_det, 0.4)
    return pre_det[keep, :], landmarks[keep]
