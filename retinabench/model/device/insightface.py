"""Decode + NMS on the device for the insightface family, with only the kept faces copied back.

The family names this decoder (retinabench.model.family.Family.make_device_decoder); the backends
that run device stages reach it through retinabench.model.device.pipeline.DeviceStages.

The numpy decoder (retinabench.model.insightface) filters by score, decodes the survivors and runs
greedy NMS; its shapes depend on the data. A CUDA graph needs fixed shapes, so here:

1. the `candidates` highest scores per image are taken (top-k), ordered as the numpy decoder
   orders them (score descending, ties by anchor index) and masked by the threshold;
2. those are decoded (float32, "+1" widths, exp for sizes, linear landmarks) and clipped;
3. greedy NMS is computed as a fixed point: keep[j] = valid[j] and no kept i < j overlaps j by
   IoU >= 0.4 (float64, "+1" areas, as insightface's cpu_nms). Entry j depends only on earlier
   entries, so the fixed point is unique and equals the greedy result; `nms_iterations` rounds
   reach it unless suppression chains are longer, which the last round detects;
4. kept faces are compacted to the front of a [B, 1 + max_faces, 16] buffer (row 0: count and a
   flag), the one thing copied to the host.

Its GPU timer (`gpu_postprocess_ms`) covers the stage's device work, transfer included: the decode +
NMS graph and the copy of the compact result into pinned host memory (POSTPROCESS_TIMER).

An image whose candidates exceed `candidates`, whose NMS did not converge or that keeps more than
`max_faces` faces is flagged and decoded on the host by the numpy decoder from its raw outputs:
slower, never different. `decode_topk` is device-agnostic; the CPU tests compare it with the numpy
decoder on MXNet's outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from retinabench.model.anchors import anchors_plane, net3_base_anchors
from retinabench.model.detections import Faces
from retinabench.model.insightface import NMS_THRESHOLD, STRIDES, InsightFaceDecoder, output_roles
from retinabench.model.preprocess import ImageMeta

ROW = 16  # x1 y1 x2 y2, score, 5 landmarks (x, y), one spare column
POSTPROCESS_TIMER = "decode + NMS graph and the device-to-host copy of the kept faces (pinned memory)"


@dataclass(frozen=True)
class PostConfig:
    threshold: float
    nms_threshold: float = NMS_THRESHOLD
    candidates: int = 256
    max_faces: int = 64
    nms_iterations: int = 8


def anchor_table(shapes: Sequence[Tuple[int, ...]]) -> np.ndarray:
    """All anchors [N, 4] in the order of the dense scores: stride 32, 16, 8; then anchor, y, x."""
    base = net3_base_anchors()
    planes = []
    for stride, shape in zip(STRIDES, shapes):
        h, w = int(shape[2]), int(shape[3])
        planes.append(anchors_plane(h, w, stride, base[stride]).transpose(2, 0, 1, 3).reshape(-1, 4))
    return np.concatenate(planes).astype(np.float32)


def nms_fixed_point(boxes: Any, valid: Any, threshold: float, iterations: int) -> Tuple[Any, Any]:
    """(keep [B, k], converged [B]) for boxes [B, k, 4] already sorted by descending score."""
    import torch

    x1, y1, x2, y2 = boxes.double().unbind(-1)
    area = (x2 - x1 + 1.0) * (y2 - y1 + 1.0)
    iw = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :]) + 1.0).clamp(min=0.0)
    ih = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :]) + 1.0).clamp(min=0.0)
    inter = iw * ih
    iou = inter / (area[:, :, None] + area[:, None, :] - inter)
    k = boxes.shape[1]
    later = torch.ones((k, k), dtype=torch.bool, device=boxes.device).triu(1)
    suppresses = (iou >= threshold) & later  # [b, i, j]: i, ranked before j, removes j if i is kept
    keep = prev = valid
    for _ in range(iterations):
        prev = keep
        keep = valid & ~(suppresses & prev[:, :, None]).any(1)
    return keep, (keep == prev).all(1)


def _decode(anchor: Any, deltas: Any, lmk: Any) -> Tuple[Any, Any]:
    """insightface's bbox_pred / landmark_pred in float32 (retinabench.model.insightface._decode)."""
    import torch

    w = anchor[..., 2] - anchor[..., 0] + 1.0
    h = anchor[..., 3] - anchor[..., 1] + 1.0
    cx = anchor[..., 0] + 0.5 * (w - 1.0)
    cy = anchor[..., 1] + 0.5 * (h - 1.0)
    pcx = deltas[..., 0] * w + cx
    pcy = deltas[..., 1] * h + cy
    pw = torch.exp(deltas[..., 2]) * w
    ph = torch.exp(deltas[..., 3]) * h
    box = torch.stack([pcx - 0.5 * (pw - 1.0), pcy - 0.5 * (ph - 1.0),
                       pcx + 0.5 * (pw - 1.0), pcy + 0.5 * (ph - 1.0)], -1)
    lm = torch.stack([lmk[..., 0] * w[..., None] + cx[..., None], lmk[..., 1] * h[..., None] + cy[..., None]], -1)
    return box, lm


def decode_topk(outs: Sequence[Any], anchors: Any, bounds: Any, cfg: PostConfig) -> Any:
    """outs: cls, bbox, landmark per stride (32, 16, 8); bounds [B, 2]: content width-1, height-1.

    Returns [B, 1 + min(candidates, max_faces), 16]: row 0 = (faces kept, fallback flag), then the
    kept faces in score order.
    """
    import torch
    import torch.nn.functional as F

    b = outs[0].shape[0]
    a = outs[0].shape[1] // 2
    scores, deltas, lmks = [], [], []
    for i in range(0, len(outs), 3):
        cls, bbox, lmk = outs[i], outs[i + 1], outs[i + 2]
        hw = cls.shape[2] * cls.shape[3]
        scores.append(cls[:, a:].reshape(b, a * hw))
        deltas.append(bbox.reshape(b, a, 4, hw).transpose(2, 3).reshape(b, a * hw, 4))
        lmks.append(lmk.reshape(b, a, 10, hw).transpose(2, 3).reshape(b, a * hw, 10))
    score = torch.cat(scores, 1).float()  # float32 before comparing: as the host decoder sees f16 outputs
    k = min(cfg.candidates, score.shape[1])
    over = (score >= cfg.threshold).sum(1)
    top, idx = score.topk(k, dim=1)
    idx, perm = idx.sort(dim=1)                     # ties: lower anchor index first, as a stable argsort
    top = top.gather(1, perm)
    top, perm = top.sort(dim=1, descending=True, stable=True)
    idx = idx.gather(1, perm)
    valid = top >= cfg.threshold
    d = torch.cat(deltas, 1).gather(1, idx[..., None].expand(b, k, 4)).float()
    lm_raw = torch.cat(lmks, 1).gather(1, idx[..., None].expand(b, k, 10)).float().view(b, k, 5, 2)
    box, lm = _decode(anchors[idx], d, lm_raw)
    lo = torch.zeros_like(bounds[:, None, :])
    hi = bounds[:, None, :]
    box = torch.cat([torch.minimum(box[..., 0:2], hi), torch.minimum(box[..., 2:4], hi)], -1)
    box = torch.maximum(box, torch.cat([lo, lo], -1))
    keep, converged = nms_fixed_point(box, valid, cfg.nms_threshold, cfg.nms_iterations)
    n_keep = keep.sum(1)
    m = min(k, cfg.max_faces)
    order = (~keep).to(torch.uint8).argsort(dim=1, stable=True)[:, :m]  # kept first, in score order
    rows = torch.cat([box, top[..., None], lm.reshape(b, k, 10), torch.zeros_like(top[..., None])], -1)
    rows = rows.gather(1, order[..., None].expand(b, m, ROW))
    flag = (over > k) | ~converged | (n_keep > m)
    head = F.pad(torch.stack([n_keep.float(), flag.float()], 1), (0, ROW - 2))[:, None, :]
    return torch.cat([head, rows], 1)


class DevicePostprocessor:
    """Callable like the family decoder: (outputs by name, metas) -> one Faces per image.

    On CUDA the decode runs as one CUDA graph (torch.compile'd when `compile_stage`) over the
    inference outputs; the compact result comes back through a pinned buffer and one stream sync.
    """

    def __init__(self, output_names: Sequence[str], cfg: PostConfig, compile_stage: bool = True):
        self.roles = output_roles(output_names)
        self.names = [n for s in STRIDES for n in self.roles[s]]
        self.cfg = cfg
        self.compile_stage = compile_stage
        self.host_decoder = InsightFaceDecoder(output_names, cfg.threshold, cfg.nms_threshold)
        self.fallbacks = 0        # images decoded on the host (flagged), counted for the record
        self.compile_s = 0.0
        self.build_s = 0.0        # anchors, buffers, compile and capture: the one-time cost (first call)
        self.timer: Any = None
        self._built = False
        self._bounds_key: Optional[Tuple[Tuple[int, int], ...]] = None

    def _build(self, outs: List[Any]) -> None:
        import torch

        dev = outs[0].device
        b = outs[0].shape[0]
        self._anchors = torch.from_numpy(anchor_table([o.shape for o in outs[0::3]])).to(dev)
        self._bounds = torch.zeros((b, 2), dtype=torch.float32, device=dev)
        self._cuda = dev.type == "cuda"
        self._built = True
        if not self._cuda:
            return
        from retinabench.model.device.cuda import GpuTimer, capture, compiled

        self.timer = GpuTimer(POSTPROCESS_TIMER)
        self._bounds_host = torch.zeros((b, 2), dtype=torch.float32, pin_memory=True)
        self._static = outs  # the model's static outputs when it runs as a CUDA graph
        cfg, anchors, bounds = self.cfg, self._anchors, self._bounds

        def fn(*o: Any) -> Any:
            return decode_topk(o, anchors, bounds, cfg)
        if self.compile_stage:
            fn, self.compile_s = compiled(fn, *outs)
        self._graph, self._result = capture(lambda: fn(*self._static))
        self._host = torch.empty(self._result.shape, dtype=torch.float32, pin_memory=True)
        self._done = torch.cuda.Event()

    def _set_bounds(self, metas: Sequence[ImageMeta]) -> None:
        key = tuple((m.content_width, m.content_height) for m in metas)
        if key == self._bounds_key:
            return
        values = np.array([[w - 1, h - 1] for w, h in key], np.float32)
        if self._cuda:
            self._bounds_host.numpy()[:] = values
            self._bounds.copy_(self._bounds_host, non_blocking=True)
        else:
            self._bounds.copy_(self._torch_from(values))
        self._bounds_key = key

    @staticmethod
    def _torch_from(values: np.ndarray) -> Any:
        import torch
        return torch.from_numpy(values)

    def __call__(self, outputs: Dict[str, Any], metas: List[ImageMeta]) -> List[Faces]:
        import torch

        with torch.inference_mode():  # the outputs are inference tensors
            return self._run(outputs, metas)

    def _run(self, outputs: Dict[str, Any], metas: List[ImageMeta]) -> List[Faces]:
        self._enqueue(outputs, metas)
        return self._collect(outputs, metas, wait_stream=True)

    def enqueue(self, outputs: Dict[str, Any], metas: List[ImageMeta]) -> None:
        """Decode + NMS and the copy back queued on the current stream; `collect` waits and decodes faces."""
        import torch
        with torch.inference_mode():
            self._enqueue(outputs, metas)

    def collect(self, outputs: Dict[str, Any], metas: List[ImageMeta]) -> List[Faces]:
        """Wait for the queued work (its own event, not the whole device) and turn the rows into faces."""
        import torch
        with torch.inference_mode():
            return self._collect(outputs, metas, wait_stream=False)

    def _enqueue(self, outputs: Dict[str, Any], metas: List[ImageMeta]) -> None:
        outs = [outputs[n] for n in self.names]
        if not self._built:
            import time
            t0 = time.perf_counter()
            self._build(outs)
            self.build_s = time.perf_counter() - t0
        self._set_bounds(metas)
        if not self._cuda:
            self._cpu_result = decode_topk(outs, self._anchors, self._bounds, self.cfg).numpy()
            return
        for s, o in zip(self._static, outs):
            if s.data_ptr() != o.data_ptr():  # eager outputs: bring them into the graph's inputs
                s.copy_(o)
        self.timer.start()
        self._graph.replay()
        self._host.copy_(self._result, non_blocking=True)
        self.timer.stop()
        self._done.record()

    def _collect(self, outputs: Dict[str, Any], metas: List[ImageMeta], wait_stream: bool) -> List[Faces]:
        import torch
        if not self._cuda:
            return self._faces(self._cpu_result, outputs, metas)
        if wait_stream:
            torch.cuda.current_stream().synchronize()
        else:
            self._done.synchronize()
        self.timer.read()
        result = self._host.numpy().copy()  # the pinned buffer is rewritten next loop
        return self._faces(result, outputs, metas)

    def _faces(self, result: np.ndarray, outputs: Dict[str, Any], metas: List[ImageMeta]) -> List[Faces]:
        faces = []
        for b, meta in enumerate(metas):
            n, flagged = int(result[b, 0, 0]), bool(result[b, 0, 1])
            if flagged:
                self.fallbacks += 1
                host = {k: v[b:b + 1].float().cpu().numpy() for k, v in outputs.items()}
                faces.append(self.host_decoder(host, [meta])[0])
                continue
            rows = result[b, 1:1 + n]
            box, score, lm = rows[:, 0:4], rows[:, 4], rows[:, 5:15].reshape(n, 5, 2)
            if meta.scale != 1.0:
                inv = np.float32(1.0 / meta.scale)
                box, lm = box * inv, lm * inv
            faces.append(Faces(box, score, lm))
        return faces


def make_device_decoder(output_names: Sequence[str], threshold: float, candidates: int = 256,
                        max_faces: int = 64, nms_iterations: int = 8,
                        compile_stage: bool = False) -> DevicePostprocessor:
    """The insightface family's device decoder (retinabench.model.family names it)."""
    cfg = PostConfig(float(threshold), candidates=int(candidates), max_faces=int(max_faces),
                     nms_iterations=int(nms_iterations))
    return DevicePostprocessor(output_names, cfg, compile_stage)
