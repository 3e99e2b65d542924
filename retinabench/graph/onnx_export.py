"""Export the graph IR to ONNX: our own exporter, so every op is written the way it is meant.

MXNet's exporter cannot do this model (no converter for SoftmaxActivation, no centre-free Crop,
a wrong opset stamp: see FACTS.md). Here each IR op maps to one ONNX op whose semantics match
exactly, the model records the opset it was written for, and the checker (with strict shape
inference) runs on every export.

  conv -> Conv, deconv -> ConvTranspose (same weight layouts as the IR), batchnorm ->
  BatchNormalization, relu -> Relu, leaky_relu -> LeakyRelu, upsample_nearest -> Resize
  (nearest, asymmetric, floor: source pixel = floor(dst / scale), which is MXNet's pixel
  duplication exactly), crop_like -> Slice with static ends from infer_shapes (H and W are fixed
  per export), add -> Add, concat -> Concat, softmax -> Softmax (opset >= 13: per axis; earlier
  opsets flatten from the axis on, which is why they are refused), reshape -> Reshape (0 copies,
  -1 infers: the same rule, allowzero=0), transpose -> Transpose.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from retinabench.errors import ModelError
from retinabench.graph.ir import Graph, Node, infer_shapes

# Bump when the exported bytes change for the same graph: it is part of the cache key.
EXPORTER_VERSION = "retinabench-onnx-1"
DEFAULT_OPSET = 13
MIN_OPSET = 13  # Softmax before 13 normalises over all axes from `axis` on, not over one axis
BATCH_DIM = "batch"


def export_onnx(graph: Graph, path: Union[str, Path], input_shape: Sequence[int],
                dynamic_batch: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """Write `graph` as an ONNX model for an NCHW input; with dynamic_batch the first dim is free.

    H and W stay fixed either way: crops are static slices computed for this input size.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ModelError(f"ONNX export: opset {opset} is not supported "
                         f"(use {MIN_OPSET}..{onnx.defs.onnx_opset_version()})")
    if len(input_shape) != 4:
        raise ModelError(f"ONNX export: input shape {tuple(input_shape)} is not NCHW")
    graph.validate()
    shapes = infer_shapes(graph, input_shape)

    def dims(shape: Tuple[int, ...]) -> List[Union[int, str]]:
        return [BATCH_DIM if dynamic_batch and i == 0 else d for i, d in enumerate(shape)]

    initializers: List = []
    nodes: List = []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    for n in graph.nodes:
        nodes.append(_convert(n, shapes, dynamic_batch, const, helper))

    inp = helper.make_tensor_value_info(graph.input_name, TensorProto.FLOAT, dims(shapes[graph.input_name]))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, dims(shapes[o])) for o in graph.outputs]
    onnx_graph = helper.make_graph(nodes, _graph_name(graph), [inp], outs, initializer=initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="retinabench",
                              producer_version=EXPORTER_VERSION, doc_string=graph.source)
    # The lowest IR version that can carry this opset: older runtimes load it too.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelError(f"ONNX export of {graph.source or 'graph'} failed the checker: {e}") from None
    path = Path(path)
    onnx.save(model, str(path))
    return path


def onnx_for(model, input_shape: Sequence[int], dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
             reexport: bool = False) -> Path:
    """The ONNX file to run `model` (a ModelSource) with: its own if it is ONNX, else a cached export.

    `reexport` exports an ONNX model again through our graph: static shapes and plain ops, for
    runtimes that cannot import the original's shape subgraphs (OpenCV DNN).
    """
    if model.format == "onnx" and not reexport:
        return Path(model.files[0])
    from retinabench.graph.cache import cached

    graph = model.graph()
    shape = [int(d) for d in input_shape]
    key = {"source": graph.content_hash(), "input_shape": [BATCH_DIM] + shape[1:] if dynamic_batch else shape,
           "dynamic_batch": bool(dynamic_batch), "opset": int(opset), "exporter": EXPORTER_VERSION}
    entry = cached("onnx", key, lambda d: export_onnx(graph, d / "model.onnx", shape, dynamic_batch, opset))
    return entry / "model.onnx"


def _convert(n: Node, shapes: Dict[str, Tuple[int, ...]], dynamic_batch: bool, const, helper):
    a, x = n.attrs, n.inputs[0]
    p = lambda key: const(f"{n.name}.{key}", np.ascontiguousarray(n.params[key], np.float32))  # noqa: E731
    if n.op in ("conv", "deconv"):
        ins = [x, p("weight")] + ([p("bias")] if "bias" in n.params else [])
        (ph, pw) = a["pad"]
        kw = dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=[ph, pw, ph, pw],
                  group=int(a["group"]))
        if n.op == "conv":
            return helper.make_node("Conv", ins, [n.name], n.name, dilations=list(a.get("dilate", (1, 1))), **kw)
        return helper.make_node("ConvTranspose", ins, [n.name], n.name, **kw)
    if n.op == "batchnorm":
        return helper.make_node("BatchNormalization", [x, p("gamma"), p("beta"), p("mean"), p("var")], [n.name],
                                n.name, epsilon=float(a["eps"]))
    if n.op == "relu":
        return helper.make_node("Relu", [x], [n.name], n.name)
    if n.op == "leaky_relu":
        return helper.make_node("LeakyRelu", [x], [n.name], n.name, alpha=float(a["alpha"]))
    if n.op == "upsample_nearest":
        s = float(a["scale"])
        scales = const(f"{n.name}.scales", np.array([1.0, 1.0, s, s], np.float32))
        return helper.make_node("Resize", [x, "", scales], [n.name], n.name, mode="nearest",
                                coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if n.op == "crop_like":
        oy, ox = a["offset"]
        h, w = shapes[n.inputs[1]][2:]
        starts = const(f"{n.name}.starts", np.array([oy, ox], np.int64))
        ends = const(f"{n.name}.ends", np.array([oy + h, ox + w], np.int64))
        axes = const(f"{n.name}.axes", np.array([2, 3], np.int64))
        return helper.make_node("Slice", [x, starts, ends, axes], [n.name], n.name)
    if n.op == "add":
        return helper.make_node("Add", n.inputs[:2], [n.name], n.name)
    if n.op == "concat":
        return helper.make_node("Concat", n.inputs, [n.name], n.name, axis=int(a["axis"]))
    if n.op == "softmax":
        return helper.make_node("Softmax", [x], [n.name], n.name, axis=int(a["axis"]))
    if n.op == "reshape":
        spec = [int(d) for d in a["shape"]]
        if dynamic_batch:
            _check_batch_free(n, spec, shapes[x])
        shape = const(f"{n.name}.shape", np.array(spec, np.int64))
        return helper.make_node("Reshape", [x, shape], [n.name], n.name)
    if n.op == "transpose":
        return helper.make_node("Transpose", [x], [n.name], n.name, perm=[int(v) for v in a["perm"]])
    raise ModelError(f"node {n.name!r}: op {n.op!r} has no ONNX export")


def _check_batch_free(n: Node, spec: List[int], in_shape: Tuple[int, ...]) -> None:
    """A reshape keeps a dynamic batch only if dim 0 is copied (0) or inferred (-1) from the batch."""
    rest = [in_shape[i] if d == 0 else d for i, d in enumerate(spec)][1:]
    if spec[0] == 0 or spec[0] == -1 and int(np.prod(rest)) == int(np.prod(in_shape[1:])):
        return
    raise ModelError(f"node {n.name!r}: reshape {tuple(spec)} fixes the batch dimension; "
                     "export with a static batch instead")


def _graph_name(graph: Graph) -> str:
    stem = Path(graph.source).name.replace("-symbol.json", "") if graph.source else "retinaface"
    return re.sub(r"[^\w.\-]", "_", stem) or "retinaface"
