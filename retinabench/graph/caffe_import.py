"""Import a Caffe model (deploy .prototxt + .caffemodel) into the graph IR.

Parsing uses our own caffe_pb2 (a subset of BVLC caffe.proto), so this runs wherever protobuf does,
without pycaffe. Weights come from the caffemodel layer of the same name, as Caffe's
CopyTrainedLayersFrom matches them; a pair that does not match (missing blobs, wrong count or
shape) fails naming the layer, before any runtime sees it (pycaffe aborts the process instead).

Caffe allows in-place layers (top == bottom); the IR has one output per node named after the
node, so the latest producer of a blob always carries the blob's name and earlier producers are
renamed. Output names are therefore Caffe's blob names (the insightface decoder finds them so).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from retinabench.errors import ModelError
from retinabench.graph.ir import Graph, Node, infer_shapes

# Layer types that map onto IR ops (Input declares the graph input; Scale may fold into BatchNorm).
SUPPORTED = ("Input", "Convolution", "Deconvolution", "BatchNorm", "Scale", "ReLU", "Crop", "Eltwise",
             "Concat", "Softmax", "Reshape", "Permute")


def _pb2():
    from retinabench.graph.caffe_proto import caffe_pb2
    return caffe_pb2


def read_prototxt(path: Path):
    """Parse a text prototxt into a NetParameter; a syntax error names the file and line."""
    from google.protobuf import text_format
    net = _pb2().NetParameter()
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot read prototxt ({e})") from None
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        raise ModelError(f"{path}: not a Caffe prototxt we can read ({e})") from None
    return net


def read_caffemodel(path: Path):
    """Parse a binary caffemodel into a NetParameter (weights in layer.blobs)."""
    from google.protobuf.message import DecodeError
    net = _pb2().NetParameter()
    try:
        net.ParseFromString(Path(path).read_bytes())
    except OSError as e:
        raise ModelError(f"{path}: cannot read caffemodel ({e.strerror})") from None
    except DecodeError as e:
        raise ModelError(f"{path}: not a Caffe caffemodel (protobuf decode failed: {e})") from None
    if not net.layer:
        raise ModelError(f"{path}: caffemodel holds no layers (old V1 'layers' format is not supported)")
    return net


def in_test_phase(layer) -> bool:
    """Caffe's include/exclude rules, evaluated for the TEST phase that deployment uses."""
    test = _pb2().TEST
    if layer.include:
        return any(not r.HasField("phase") or r.phase == test for r in layer.include)
    return not any(r.HasField("phase") and r.phase == test for r in layer.exclude)


def deploy_layers(net) -> list:
    return [l for l in net.layer if in_test_phase(l)]


def net_input(net) -> Tuple[str, Optional[Tuple[int, ...]]]:
    """The input blob's name and declared shape (Input layer or the deprecated net-level fields)."""
    for layer in deploy_layers(net):
        if layer.type == "Input":
            shape = tuple(int(d) for d in layer.input_param.shape[0].dim) if layer.input_param.shape else None
            return layer.top[0], shape
    if net.input:
        if net.input_shape:
            return net.input[0], tuple(int(d) for d in net.input_shape[0].dim)
        if len(net.input_dim) >= 4:
            return net.input[0], tuple(int(d) for d in net.input_dim[:4])
        return net.input[0], None
    raise ModelError("prototxt declares no input (no Input layer, no 'input:' field)")


def net_outputs(net) -> List[Tuple[str, str]]:
    """(blob, producing layer) for every blob no later layer consumes: Caffe's net outputs, in order."""
    available: Dict[str, str] = {}
    for layer in deploy_layers(net):
        for b in layer.bottom:
            available.pop(b, None)
        for t in layer.top:
            available.pop(t, None)  # re-insert: an in-place layer moves the blob to the end
            available[t] = layer.name
    return list(available.items())


def blob_array(blob) -> Tuple[np.ndarray, bool]:
    """A BlobProto as float32; the flag says the shape came from the legacy num/channels/h/w fields."""
    data = blob.data if len(blob.data) else blob.double_data
    arr = np.asarray(data, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
        legacy = False
    else:
        shape = (int(blob.num), int(blob.channels), int(blob.height), int(blob.width))
        legacy = True
    if int(np.prod(shape)) != arr.size:
        raise ValueError(f"blob shape {shape} does not hold its {arr.size} values")
    return arr.reshape(shape), legacy


def _pair(repeated: Sequence[int], h: Optional[int], w: Optional[int], default: int) -> Tuple[int, int]:
    if h is not None or w is not None:
        return int(h if h is not None else default), int(w if w is not None else default)
    vals = [int(v) for v in repeated]
    if not vals:
        return default, default
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])


def _conv_attrs(layer) -> Dict[str, object]:
    p = layer.convolution_param
    kernel = _pair(p.kernel_size, p.kernel_h if p.HasField("kernel_h") else None,
                   p.kernel_w if p.HasField("kernel_w") else None, 0)
    if 0 in kernel:
        raise ModelError(f"layer {layer.name!r}: convolution_param has no kernel size")
    has_pad_hw = p.HasField("pad_h") or p.HasField("pad_w")
    pad = _pair(p.pad, p.pad_h if has_pad_hw else None, p.pad_w if has_pad_hw else None, 0)
    stride = _pair(p.stride, p.stride_h if p.HasField("stride_h") else None,
                   p.stride_w if p.HasField("stride_w") else None, 1)
    dilate = _pair(p.dilation, None, None, 1)
    if p.axis != 1 or len(p.kernel_size) > 2:
        raise ModelError(f"layer {layer.name!r}: only 2-D convolution over axis 1 is supported")
    return dict(kernel=kernel, stride=stride, pad=pad, dilate=dilate, group=int(p.group),
                num_filter=int(p.num_output))


class _Builder:
    """Collects IR nodes while keeping 'the latest producer of a blob is named after the blob'."""

    def __init__(self, input_name: str):
        self.nodes: List[Node] = []
        self.names = {input_name}
        self.input_name = input_name

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}/{i}", i + 1
        return name

    def add(self, top: str, layer_name: str, op: str, inputs: List[str],
            attrs: Optional[Dict[str, object]] = None, params: Optional[Dict[str, np.ndarray]] = None) -> Node:
        if top in self.names:  # in-place: the earlier producer gives up the blob's name
            if top == self.input_name:
                raise ModelError(f"layer {layer_name!r}: writing the input blob in place is not supported")
            old = self.fresh(f"{top}/{layer_name}/in")
            self._rename(top, old)
            inputs = [old if i == top else i for i in inputs]
        node = Node(top, op, inputs, dict(attrs or {}), dict(params or {}))
        self.nodes.append(node)
        self.names.add(top)
        return node

    def _rename(self, name: str, new: str) -> None:
        for n in self.nodes:
            if n.name == name:
                n.name = new
            n.inputs = [new if i == name else i for i in n.inputs]
        self.names.discard(name)
        self.names.add(new)

    def producer(self, name: str) -> Optional[Node]:
        for n in reversed(self.nodes):
            if n.name == name:
                return n
        return None

    def consumers(self, name: str) -> int:
        return sum(i == name for n in self.nodes for i in n.inputs)


def _expected_blobs(layer, in_shape: Tuple[int, ...]) -> List[Tuple[int, ...]]:
    """Blob shapes the prototxt implies for a layer, given its input shape."""
    t = layer.type
    if t in ("Convolution", "Deconvolution"):
        a = _conv_attrs(layer)
        c, o, g = in_shape[1], a["num_filter"], a["group"]
        kh, kw = a["kernel"]
        w = (o, c // g, kh, kw) if t == "Convolution" else (c, o // g, kh, kw)
        return [w, (o,)] if layer.convolution_param.bias_term else [w]
    if t == "BatchNorm":
        c = in_shape[1]
        return [(c,), (c,), (1,)]
    if t == "Scale":
        c = in_shape[1]
        return [(c,), (c,)] if layer.scale_param.bias_term else [(c,)]
    return []


def _blobs(layer, weights: Dict[str, list], in_shape: Tuple[int, ...], caffemodel: Path) -> List[np.ndarray]:
    expected = _expected_blobs(layer, in_shape)
    if not expected:
        return []
    blobs = weights.get(layer.name)
    if blobs is None:
        raise ModelError(f"layer {layer.name!r} ({layer.type}): {caffemodel.name} has no layer of that name "
                         "(prototxt and caffemodel do not match)")
    if len(blobs) != len(expected):
        raise ModelError(f"layer {layer.name!r} ({layer.type}): {caffemodel.name} has {len(blobs)} blob(s), "
                         f"the prototxt needs {len(expected)} (prototxt and caffemodel do not match)")
    out = []
    for i, (blob, want) in enumerate(zip(blobs, expected)):
        try:
            arr, legacy = blob_array(blob)
        except ValueError as e:
            raise ModelError(f"layer {layer.name!r}: blob {i} in {caffemodel.name} is corrupt ({e})") from None
        if legacy and arr.size == int(np.prod(want)):
            arr = arr.reshape(want)  # legacy 4-D shapes (1,1,1,C) for vectors: Caffe accepts them too
        if arr.shape != want:
            raise ModelError(f"layer {layer.name!r} ({layer.type}): blob {i} in {caffemodel.name} has shape "
                             f"{arr.shape}, the prototxt needs {want} (prototxt and caffemodel do not match)")
        out.append(arr)
    return out


def _reshape_spec(layer, in_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Caffe's reshape (axis, num_axes, dims with 0 and -1) as a full IR spec over every axis."""
    p = layer.reshape_param
    dims = [int(d) for d in p.shape.dim]
    n = len(in_shape)
    axis = p.axis if p.axis >= 0 else n + p.axis + 1
    end = n if p.num_axes == -1 else axis + p.num_axes
    if not 0 <= axis <= end <= n:
        raise ModelError(f"layer {layer.name!r}: reshape axis {p.axis}/num_axes {p.num_axes} out of range")
    if end != n and len(dims) != end - axis:
        raise ModelError(f"layer {layer.name!r}: reshape with num_axes that changes the rank is not supported")
    # Leading and trailing kept axes become 0 ("copy"); inside the spec Caffe's 0 copies the
    # same-index input axis, which is also what 0 means at that position of the full spec.
    return tuple([0] * axis + dims + [0] * (n - end))


def load_caffe(prototxt: Path, caffemodel: Path) -> Graph:
    """Parse a deploy prototxt and its weights into a Graph; unknown layers fail naming the layer."""
    prototxt, caffemodel = Path(prototxt), Path(caffemodel)
    net = read_prototxt(prototxt)
    model = read_caffemodel(caffemodel)
    weights = {l.name: list(l.blobs) for l in model.layer if len(l.blobs)}
    try:
        input_name, input_shape = net_input(net)
    except ModelError as e:
        raise ModelError(f"{prototxt}: {e}") from None
    if input_shape is None or len(input_shape) != 4:
        raise ModelError(f"{prototxt}: input {input_name!r} needs a 4-D shape (N, C, H, W)")
    b = _Builder(input_name)
    shapes: Dict[str, Tuple[int, ...]] = {input_name: input_shape}

    def shape_of(name: str) -> Tuple[int, ...]:
        return shapes[name]

    for layer in deploy_layers(net):
        t = layer.type
        if t not in SUPPORTED:
            raise ModelError(f"{prototxt.name}: layer {layer.name!r} has type {t!r}, which the converter does not "
                             f"support (supported: {', '.join(SUPPORTED)})")
        if t == "Input":
            continue
        for bottom in layer.bottom:
            if bottom not in b.names:
                raise ModelError(f"{prototxt.name}: layer {layer.name!r} reads blob {bottom!r} that no layer produced")
        if len(layer.top) != 1:
            raise ModelError(f"{prototxt.name}: layer {layer.name!r} has {len(layer.top)} tops; one is supported")
        top, ins = layer.top[0], list(layer.bottom)
        in_shape = shape_of(ins[0]) if ins else input_shape
        blobs = _blobs(layer, weights, in_shape, caffemodel)
        if t in ("Convolution", "Deconvolution"):
            params = {"weight": blobs[0]}
            if len(blobs) > 1:
                params["bias"] = blobs[1]
            attrs = _conv_attrs(layer)
            if t == "Deconvolution":
                if attrs.pop("dilate") != (1, 1):
                    raise ModelError(f"layer {layer.name!r}: dilated Deconvolution is not supported")
            b.add(top, layer.name, "conv" if t == "Convolution" else "deconv", ins[:1], attrs, params)
        elif t == "BatchNorm":
            sf = float(blobs[2][0])
            inv = 0.0 if sf == 0 else 1.0 / sf  # Caffe stores running sums scaled by this factor
            c = in_shape[1]
            b.add(top, layer.name, "batchnorm", ins[:1], dict(eps=float(layer.batch_norm_param.eps)),
                  {"gamma": np.ones(c, np.float32), "beta": np.zeros(c, np.float32),
                   "mean": blobs[0] * np.float32(inv), "var": blobs[1] * np.float32(inv)})
        elif t == "Scale":
            if len(ins) != 1 or layer.scale_param.axis != 1 or layer.scale_param.num_axes != 1:
                raise ModelError(f"layer {layer.name!r}: only a per-channel Scale (axis 1, learned) is supported")
            gamma = blobs[0]
            beta = blobs[1] if len(blobs) > 1 else np.zeros_like(gamma)
            prev = b.producer(ins[0])
            fresh_bn = (prev is not None and prev.op == "batchnorm" and b.consumers(prev.name) == 0
                        and not prev.attrs.get("scaled"))
            if fresh_bn:  # BatchNorm + Scale is Caffe's spelling of one batch norm
                prev.params["gamma"], prev.params["beta"] = gamma, beta
                prev.attrs["scaled"] = True
                if top != prev.name:
                    b._rename(prev.name, top)
                    shapes[top] = shapes[ins[0]]
            else:  # x * gamma + beta is a batch norm with mean 0, var 1, eps 0
                c = in_shape[1]
                b.add(top, layer.name, "batchnorm", ins, dict(eps=0.0),
                      {"gamma": gamma, "beta": beta, "mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32)})
        elif t == "ReLU":
            slope = float(layer.relu_param.negative_slope)
            if slope:
                b.add(top, layer.name, "leaky_relu", ins[:1], dict(alpha=slope))
            else:
                b.add(top, layer.name, "relu", ins[:1])
        elif t == "Crop":
            b.add(top, layer.name, "crop_like", ins[:2], dict(offset=_crop_offset(layer, shape_of(ins[0]), shape_of(ins[1]))))
        elif t == "Eltwise":
            p = layer.eltwise_param
            if p.operation != p.SUM or any(c != 1.0 for c in p.coeff) or len(ins) < 2:
                raise ModelError(f"layer {layer.name!r}: only Eltwise SUM of 2+ inputs without coefficients is supported")
            acc = ins[0]
            for k, other in enumerate(ins[1:], 1):
                last = k == len(ins) - 1
                name = top if last else b.fresh(f"{layer.name}/sum{k}")
                b.add(name, layer.name, "add", [acc, other])
                shapes[name] = shape_of(ins[0])
                acc = name
        elif t == "Concat":
            p = layer.concat_param
            axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
            b.add(top, layer.name, "concat", ins, dict(axis=int(axis) % len(in_shape)))
        elif t == "Softmax":
            b.add(top, layer.name, "softmax", ins[:1], dict(axis=int(layer.softmax_param.axis) % len(in_shape)))
        elif t == "Reshape":
            b.add(top, layer.name, "reshape", ins[:1], dict(shape=_reshape_spec(layer, in_shape)))
        elif t == "Permute":
            order = tuple(int(o) for o in layer.permute_param.order)
            order = order + tuple(i for i in range(len(in_shape)) if i not in order)  # Caffe fills the rest
            b.add(top, layer.name, "transpose", ins[:1], dict(perm=order))
        # Keep shapes current: crops, reshapes and channel counts of later layers need them.
        try:
            shapes.update(infer_shapes(_partial(b, input_name), input_shape))
        except (ModelError, KeyError, ZeroDivisionError) as e:
            raise ModelError(f"{prototxt.name}: layer {layer.name!r}: shapes do not work out ({e})") from None

    for n in b.nodes:
        n.attrs.pop("scaled", None)
    outputs = [blob for blob, _ in net_outputs(net) if blob != input_name]
    graph = Graph(nodes=b.nodes, outputs=outputs, input_name=input_name, source=str(prototxt))
    graph.validate()
    return graph


def _partial(b: _Builder, input_name: str) -> Graph:
    return Graph(nodes=b.nodes, outputs=[], input_name=input_name)


def _crop_offset(layer, x: Tuple[int, ...], ref: Tuple[int, ...]) -> Tuple[int, int]:
    """Caffe Crop (axis, offsets) as the IR's spatial (oy, ox); non-spatial axes must not change."""
    p = layer.crop_param
    n = len(x)
    axis = p.axis if p.axis >= 0 else n + p.axis
    cropped = n - axis
    offs = [int(o) for o in p.offset]
    if len(offs) == 1:
        offs = offs * cropped
    elif not offs:
        offs = [0] * cropped
    if len(offs) != cropped or n != 4 or axis < 0:
        raise ModelError(f"layer {layer.name!r}: Crop axis {p.axis} with {len(p.offset)} offsets does not fit a 4-D input")
    full = [0] * axis + offs
    for d in range(2):
        size = ref[d] if d >= axis else x[d]
        if full[d] != 0 or size != x[d]:
            raise ModelError(f"layer {layer.name!r}: Crop that changes axis {d} (batch/channels) is not supported")
    return full[2], full[3]
