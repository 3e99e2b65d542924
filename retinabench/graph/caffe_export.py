"""Export the graph IR to a Caffe deploy prototxt + caffemodel (the original project's MXNet2Caffe step).

Caffe has no nearest-neighbour upsampling, so `upsample_nearest` becomes a depthwise Deconvolution:
- `exact` (default): kernel = stride = scale, pad 0, all-ones weights, no bias. Each output pixel
  receives exactly one input pixel times 1.0, so it is nearest upsampling, bit for bit.
- `bilinear`: kernel 2s - s%2, stride s, pad ceil((s-1)/2) with Caffe's bilinear filler weights
  (kernel 4, stride 2, pad 1 for s = 2), as the original project and the seed Caffe models did.
  It changes the network's outputs; retinabench.report.accuracy measures by how much.

Other mappings: batchnorm -> BatchNorm (use_global_stats) + in-place Scale with bias; crop_like ->
Crop on the spatial axes (axis 2, two offsets: TensorRT's parser rejects channel-axis crops);
add -> Eltwise SUM; softmax -> Softmax(axis); reshape -> Reshape (same 0/-1 rules); transpose ->
Permute (SSD-Caffe's layer, also in kendryte-caffe and OpenCV; not in BVLC Caffe 1.0 proper).
Blob names are the IR node names, so outputs keep the source model's names.

The prototxt fixes the input shape, so a converted model is cached per (model hash, input shape,
upsample policy, converter version): `cached_caffe_files` is what backends call.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from retinabench.errors import BenchError, ModelError
from retinabench.graph.cache import cached, file_sha256
from retinabench.graph.ir import Graph, infer_shapes

UPSAMPLE_POLICIES = ("exact", "bilinear")
# Bump when the exported files would change for the same graph: cached conversions key on it.
CONVERTER_VERSION = "caffe-export-1"


def _pb2():
    from retinabench.graph.caffe_proto import caffe_pb2
    return caffe_pb2


def check_upsample(policy: object) -> str:
    if policy not in UPSAMPLE_POLICIES:
        raise BenchError(f"upsample policy {policy!r}: expected one of {', '.join(UPSAMPLE_POLICIES)}")
    return str(policy)


def bilinear_kernel(size: int) -> np.ndarray:
    """Caffe's 'bilinear' weight filler for a square kernel (the formula in filler.hpp)."""
    f = math.ceil(size / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    x = np.arange(size, dtype=np.float64)
    w = 1 - np.abs(x / f - c)
    return np.outer(w, w).astype(np.float32)


def upsample_deconv(scale: int, policy: str) -> Tuple[int, int, np.ndarray]:
    """(kernel, pad, kernel weights) of the Deconvolution that stands in for nearest x`scale`."""
    if check_upsample(policy) == "exact":
        return scale, 0, np.ones((scale, scale), np.float32)
    k = 2 * scale - scale % 2
    return k, int(math.ceil((scale - 1) / 2.0)), bilinear_kernel(k)


def _blob(arr: np.ndarray):
    b = _pb2().BlobProto()
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    b.shape.dim.extend(int(d) for d in arr.shape)
    b.data.extend(arr.ravel().tolist())
    return b


def _set_conv(p, attrs: Dict[str, object], bias: bool) -> None:
    p.num_output = int(attrs["num_filter"])
    p.bias_term = bias
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["pad"]
    if kh == kw:
        p.kernel_size.append(int(kh))
    else:
        p.kernel_h, p.kernel_w = int(kh), int(kw)
    if sh == sw:
        if sh != 1:
            p.stride.append(int(sh))
    else:
        p.stride_h, p.stride_w = int(sh), int(sw)
    if ph == pw:
        if ph != 0:
            p.pad.append(int(ph))
    else:
        p.pad_h, p.pad_w = int(ph), int(pw)
    dh, dw = attrs.get("dilate", (1, 1))
    if (dh, dw) != (1, 1):
        p.dilation.extend([int(dh)] if dh == dw else [int(dh), int(dw)])
    if int(attrs.get("group", 1)) != 1:
        p.group = int(attrs["group"])


def graph_to_caffe(graph: Graph, input_shape: Sequence[int], upsample: str = "exact") -> Tuple[object, object]:
    """(deploy NetParameter without weights, NetParameter with weights) for a fixed NCHW input."""
    check_upsample(upsample)
    if len(input_shape) != 4 or any(int(d) <= 0 for d in input_shape):
        raise BenchError(f"input shape {tuple(input_shape)}: expected four positive sizes (N, C, H, W)")
    graph.validate()
    shapes = infer_shapes(graph, input_shape)
    pb = _pb2()
    net = pb.NetParameter()
    net.name = Path(graph.source).name if graph.source else "retinaface"
    layer = net.layer.add(name=graph.input_name, type="Input", top=[graph.input_name])
    layer.input_param.shape.add().dim.extend(int(d) for d in input_shape)
    weights: Dict[str, List[np.ndarray]] = {}
    layer_names = {graph.input_name}

    def add(name: str, type_: str, bottoms: List[str], top: str):
        if name in layer_names:
            raise ModelError(f"node {name!r}: layer name used twice in the Caffe export")
        layer_names.add(name)
        return net.layer.add(name=name, type=type_, bottom=bottoms, top=[top])

    for n in graph.nodes:
        a, ins = n.attrs, list(n.inputs)
        if n.op in ("conv", "deconv"):
            l = add(n.name, "Convolution" if n.op == "conv" else "Deconvolution", ins[:1], n.name)
            _set_conv(l.convolution_param, a, "bias" in n.params)
            weights[n.name] = [n.params["weight"]] + ([n.params["bias"]] if "bias" in n.params else [])
        elif n.op == "batchnorm":
            l = add(n.name, "BatchNorm", ins[:1], n.name)
            l.batch_norm_param.use_global_stats = True
            l.batch_norm_param.eps = float(a.get("eps", 1e-3))
            weights[n.name] = [n.params["mean"], n.params["var"], np.ones(1, np.float32)]
            s = add(n.name + "_scale", "Scale", [n.name], n.name)
            s.scale_param.bias_term = True
            weights[n.name + "_scale"] = [n.params["gamma"], n.params["beta"]]
        elif n.op in ("relu", "leaky_relu"):
            l = add(n.name, "ReLU", ins[:1], n.name)
            if n.op == "leaky_relu":
                l.relu_param.negative_slope = float(a["alpha"])
        elif n.op == "upsample_nearest":
            scale, c = int(a["scale"]), shapes[ins[0]][1]
            k, pad, kernel = upsample_deconv(scale, upsample)
            l = add(n.name, "Deconvolution", ins[:1], n.name)
            _set_conv(l.convolution_param, dict(num_filter=c, kernel=(k, k), stride=(scale, scale),
                                                pad=(pad, pad), group=c), bias=False)
            weights[n.name] = [np.broadcast_to(kernel, (c, 1, k, k))]
        elif n.op == "crop_like":
            l = add(n.name, "Crop", ins[:2], n.name)
            l.crop_param.axis = 2
            l.crop_param.offset.extend(int(o) for o in a.get("offset", (0, 0)))
        elif n.op == "add":
            l = add(n.name, "Eltwise", ins, n.name)
            l.eltwise_param.operation = pb.EltwiseParameter.SUM
        elif n.op == "concat":
            l = add(n.name, "Concat", ins, n.name)
            l.concat_param.axis = int(a["axis"])
        elif n.op == "softmax":
            l = add(n.name, "Softmax", ins[:1], n.name)
            l.softmax_param.axis = int(a["axis"])
        elif n.op == "reshape":
            l = add(n.name, "Reshape", ins[:1], n.name)
            l.reshape_param.shape.dim.extend(int(d) for d in a["shape"])
        elif n.op == "transpose":
            l = add(n.name, "Permute", ins[:1], n.name)
            l.permute_param.order.extend(int(p) for p in a["perm"])
        else:
            raise ModelError(f"node {n.name!r}: op {n.op!r} has no Caffe export")

    model = pb.NetParameter()
    model.CopyFrom(net)
    for l in model.layer:
        if l.name in weights:
            l.blobs.extend(_blob(w) for w in weights[l.name])
    return net, model


def write_caffe(graph: Graph, prototxt: Path, caffemodel: Path, input_shape: Sequence[int],
                upsample: str = "exact") -> None:
    from google.protobuf import text_format
    net, model = graph_to_caffe(graph, input_shape, upsample)
    Path(prototxt).write_text(text_format.MessageToString(net))
    Path(caffemodel).write_bytes(model.SerializeToString())


def model_stem(model) -> str:
    """A file stem for a model's converted files: 'mnet.25' for mnet.25-symbol.json."""
    first = Path(model.files[0]).name
    return first[: -len("-symbol.json")] if first.endswith("-symbol.json") else Path(first).stem


def convert_to_caffe(model, out_dir: Path, input_shape: tuple, upsample: str = "exact") -> Tuple[Path, Path]:
    """Write MODEL's graph as OUT_DIR/<stem>.prototxt + .caffemodel for an NCHW input (not cached)."""
    out_dir = Path(out_dir)
    graph = model.graph()
    out_dir.mkdir(parents=True, exist_ok=True)
    prototxt, caffemodel = out_dir / f"{model_stem(model)}.prototxt", out_dir / f"{model_stem(model)}.caffemodel"
    write_caffe(graph, prototxt, caffemodel, input_shape, upsample)
    return prototxt, caffemodel


@dataclass
class CaffeFiles:
    """What a Caffe runtime loads: the files, the input blob and the outputs (blob and producing layer)."""

    prototxt: Path
    caffemodel: Path
    input_name: str
    outputs: List[str]
    output_layers: List[str]  # OpenCV's forward() asks for layer names
    converted: bool           # True when made from another format through the graph


def cached_caffe_files(model, input_shape: Sequence[int], upsample: str = "exact") -> CaffeFiles:
    """Caffe files for `model` at `input_shape`, built once per (model, shape, policy, converter).

    A Caffe model runs as it is (its weights, its upsampling), with only the input shape of its
    prototxt rewritten; any other format is converted through the graph with `upsample`.
    """
    from retinabench.graph.caffe_import import deploy_layers, net_input, net_outputs, read_prototxt
    shape = [int(d) for d in input_shape]
    if model.format == "caffe":
        src_proto, caffemodel = Path(model.files[0]), Path(model.files[1])
        key = {"prototxt": file_sha256(src_proto), "input_shape": shape, "converter": CONVERTER_VERSION,
               "what": "reshaped prototxt"}
        entry = cached("caffe-reshaped", key, lambda tmp: _write_reshaped(src_proto, tmp / "model.prototxt", shape))
        prototxt, converted = entry / "model.prototxt", False
    else:
        check_upsample(upsample)
        key = {"source": model.sha256(), "format": model.format, "input_shape": shape, "upsample": upsample,
               "converter": CONVERTER_VERSION}

        def build(tmp: Path) -> None:
            graph = model.graph()
            write_caffe(graph, tmp / "model.prototxt", tmp / "model.caffemodel", shape, upsample)
            (tmp / "outputs.json").write_text(json.dumps(list(graph.outputs)))

        entry = cached("caffe", key, build)
        prototxt, caffemodel, converted = entry / "model.prototxt", entry / "model.caffemodel", True
    net = read_prototxt(prototxt)
    input_name, _ = net_input(net)
    if converted:  # the source graph's outputs, in its order (Caffe would list them in layer order)
        outputs = json.loads((entry / "outputs.json").read_text())
    else:
        outputs = [blob for blob, _ in net_outputs(net)]
    producer = {top: l.name for l in deploy_layers(net) for top in l.top}  # the last writer wins
    return CaffeFiles(prototxt, caffemodel, input_name, outputs, [producer[o] for o in outputs], converted)


def _write_reshaped(src: Path, dst: Path, shape: List[int]) -> None:
    """Copy a prototxt with its input shape set to `shape` (Input layer or legacy input fields)."""
    from google.protobuf import text_format
    from retinabench.graph.caffe_import import deploy_layers, read_prototxt
    net = read_prototxt(src)
    done = False
    for layer in deploy_layers(net):
        if layer.type == "Input":
            del layer.input_param.shape[:]
            layer.input_param.shape.add().dim.extend(shape)
            done = True
            break
    if not done and net.input:
        del net.input_shape[:]
        del net.input_dim[:]
        net.input_shape.add().dim.extend(shape)
        done = True
    if not done:
        raise ModelError(f"{src}: declares no input (no Input layer, no 'input:' field) to reshape")
    dst.write_text(text_format.MessageToString(net))
