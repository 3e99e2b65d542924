"""The model graph: a dozen ops, enough for every RetinaFace in the wild.

Every importer (MXNet, ONNX, Caffe) produces a `Graph`; every exporter (MXNet, Caffe,
ONNX, PyTorch) consumes one. Each node has exactly one output tensor, named after the
node, so edges are just names. Parameters are float32 numpy arrays kept on the node.

Ops and their meaning (NCHW tensors):
  conv             attrs kernel, stride, pad, dilate (pairs), group, num_filter;
                   params weight [O, I/group, kh, kw], optional bias [O]
  deconv           attrs kernel, stride, pad (pairs), group, num_filter;
                   params weight [I, O/group, kh, kw], optional bias [O]
  batchnorm        attrs eps; params gamma, beta, mean, var (inference form)
  relu             -
  leaky_relu       attrs alpha
  upsample_nearest attrs scale (int, both spatial axes)
  crop_like        inputs [x, reference]; attrs offset (y, x): x[..., oy:oy+H, ox:ox+W]
                   where H, W are the reference's spatial size
  add              elementwise sum of two inputs of the same shape
  concat           attrs axis
  softmax          attrs axis
  reshape          attrs shape: 0 copies the input dim, -1 is inferred (MXNet/ONNX/Caffe rule)
  transpose        attrs perm
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from retinabench.errors import ModelError

OPS = (
    "conv", "deconv", "batchnorm", "relu", "leaky_relu", "upsample_nearest", "crop_like",
    "add", "concat", "softmax", "reshape", "transpose",
)


@dataclass
class Node:
    name: str
    op: str
    inputs: List[str]
    attrs: Dict[str, object] = field(default_factory=dict)
    params: Dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Graph:
    """A topologically ordered list of nodes from one input tensor to named outputs."""

    nodes: List[Node]
    outputs: List[str]
    input_name: str = "data"
    # Which model family decodes the outputs ("insightface" or "biubug6"); see retinabench.model.
    family: str = "insightface"
    source: str = ""

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def validate(self) -> None:
        """Check ops are known, edges resolve and every output exists: fail early and by name."""
        known = {self.input_name}
        for n in self.nodes:
            if n.op not in OPS:
                raise ModelError(f"node {n.name!r}: op {n.op!r} is not supported (known: {', '.join(OPS)})")
            for i in n.inputs:
                if i not in known:
                    raise ModelError(f"node {n.name!r}: input {i!r} is not produced before it")
            if n.name in known:
                raise ModelError(f"node {n.name!r} is defined twice")
            known.add(n.name)
        for o in self.outputs:
            if o not in known:
                raise ModelError(f"graph output {o!r} is not produced by any node")

    def content_hash(self) -> str:
        """sha256 over structure and weights: the key for converted-model caches."""
        h = hashlib.sha256()
        spec = [(n.name, n.op, n.inputs, _jsonable(n.attrs), sorted(n.params)) for n in self.nodes]
        h.update(json.dumps([spec, self.outputs, self.input_name, self.family], sort_keys=True).encode())
        for n in self.nodes:
            for k in sorted(n.params):
                h.update(np.ascontiguousarray(n.params[k], dtype=np.float32).tobytes())
        return h.hexdigest()


def _jsonable(attrs: Dict[str, object]) -> Dict[str, object]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()}


Shape = Tuple[int, ...]


def infer_shapes(graph: Graph, input_shape: Sequence[int]) -> Dict[str, Shape]:
    """Shape of every tensor for a fixed NCHW input: exporters need it for crops and reshapes."""
    shapes: Dict[str, Shape] = {graph.input_name: tuple(int(d) for d in input_shape)}
    for n in graph.nodes:
        x = shapes[n.inputs[0]]
        a = n.attrs
        if n.op == "conv":
            kh, kw = a["kernel"]; sh, sw = a["stride"]; ph, pw = a["pad"]; dh, dw = a.get("dilate", (1, 1))
            h = (x[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            w = (x[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            out: Shape = (x[0], int(a["num_filter"]), h, w)
        elif n.op == "deconv":
            kh, kw = a["kernel"]; sh, sw = a["stride"]; ph, pw = a["pad"]
            out = (x[0], int(a["num_filter"]), (x[2] - 1) * sh - 2 * ph + kh, (x[3] - 1) * sw - 2 * pw + kw)
        elif n.op == "upsample_nearest":
            s = int(a["scale"])
            out = (x[0], x[1], x[2] * s, x[3] * s)
        elif n.op == "crop_like":
            ref = shapes[n.inputs[1]]
            out = (x[0], x[1], ref[2], ref[3])
        elif n.op == "concat":
            axis = int(a["axis"])
            parts = [shapes[i] for i in n.inputs]
            out = tuple(sum(p[axis] for p in parts) if d == axis else x[d] for d in range(len(x)))
        elif n.op == "reshape":
            out = reshape_shape(x, a["shape"])
        elif n.op == "transpose":
            out = tuple(x[p] for p in a["perm"])
        else:  # batchnorm, relu, leaky_relu, add, softmax keep the shape
            out = x
        shapes[n.name] = out
    return shapes


def reshape_shape(x: Shape, spec: Sequence[int]) -> Shape:
    """Resolve a reshape spec with 0 (copy) and -1 (infer), as MXNet, ONNX and Caffe define them."""
    dims = [x[i] if d == 0 else int(d) for i, d in enumerate(spec)]
    if dims.count(-1) > 1:
        raise ModelError(f"reshape {tuple(spec)}: more than one -1")
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = int(np.prod(x)) // max(known, 1)
    if int(np.prod(dims)) != int(np.prod(x)):
        raise ModelError(f"reshape {tuple(spec)} does not fit input shape {x}")
    return tuple(dims)

