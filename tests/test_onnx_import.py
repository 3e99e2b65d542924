"""ONNX importer: the default model and hand-built graphs, checked against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import ort_session
from retinabench.errors import ModelError
from retinabench.graph.onnx_import import load_onnx, nearest_source_index
from retinabench.graph.torch_module import to_torch
from tolerance import assert_all_close, output_chain_lengths


@pytest.fixture(scope="module")
def default_onnx():
    from retinabench.defaults import default_model_path
    return default_model_path()


def ort_run(path, x: np.ndarray) -> dict:
    sess = ort_session(path)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


def torch_run(graph, x: np.ndarray) -> dict:
    with torch.no_grad():
        outs = to_torch(graph)(torch.from_numpy(x))
    return {name: o.numpy() for name, o in zip(graph.outputs, outs)}


def assert_same_outputs(ref: dict, got: dict, graph, shape, label: str) -> None:
    """Every output within the float32 bound of its chain of accumulations (tests/tolerance.py)."""
    assert_all_close(got, ref, output_chain_lengths(graph, shape), label)


def test_default_model_structure(default_onnx):
    g = load_onnx(default_onnx)
    assert g.input_name == "input"
    assert g.outputs == ["loc", "conf", "landmarks"]
    assert g.family == "biubug6"
    ops = {n.op for n in g.nodes}
    assert ops <= {"conv", "leaky_relu", "relu", "add", "concat", "softmax", "reshape", "transpose",
                   "upsample_nearest", "crop_like"}
    # Shape subgraphs fold to size-independent IR: reshapes keep the batch, resizes crop to a tensor.
    assert sorted({n.attrs["shape"] for n in g.nodes if n.op == "reshape"}) == [(0, -1, 2), (0, -1, 4), (0, -1, 10)]
    crops = [n for n in g.nodes if n.op == "crop_like"]
    assert len(crops) == 2 and all(g.node(c.inputs[0]).op == "upsample_nearest" for c in crops)
    assert g.node("conf").op == "softmax" and g.node("conf").attrs["axis"] == 2


@pytest.mark.parametrize("shape", [(1, 3, 896, 1280), (2, 3, 886, 640), (1, 3, 100, 70)])
def test_default_model_matches_onnxruntime(default_onnx, shape):
    """One imported graph serves every size and batch: the folding kept the shapes symbolic."""
    x = np.random.default_rng(0).uniform(-123, 151, shape).astype(np.float32)
    g = load_onnx(default_onnx)
    assert_same_outputs(ort_run(default_onnx, x), torch_run(g, x), g, shape, "torch vs onnxruntime")


def test_default_model_on_t1(default_onnx, t1_image):
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor

    blob, _ = Preprocessor(get_family("biubug6").normalization, "fit", (1280, 896))([t1_image])
    g = load_onnx(default_onnx)
    assert_same_outputs(ort_run(default_onnx, blob), torch_run(g, blob), g, blob.shape, "torch vs onnxruntime")


def test_model_source_imports_onnx(default_onnx):
    from retinabench.model.source import open_model

    src = open_model(default_onnx)
    assert src.format == "onnx" and src.family == "biubug6"
    assert src.graph().outputs == ["loc", "conf", "landmarks"]


# ---- hand-built graphs
def _save(tmp_path, nodes, inits, outputs, opset=13, name="m.onnx"):
    rng = np.random.default_rng(1)
    tensors = []
    for key, value in inits.items():
        arr = value if isinstance(value, np.ndarray) else rng.normal(0, 0.5, value).astype(np.float32)
        tensors.append(numpy_helper.from_array(arr, key))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _i64(*v):
    return np.array(v, np.int64)


def _every_op_model(tmp_path):
    """Conv (bias, group, dilation, stride), BN, activations, a PyTorch-style Resize to another
    tensor's size, Resize by scales, ConvTranspose, Add, Concat, Transpose, Reshape from Shape
    arithmetic, Softmax, and an Identity as a graph output."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1], name="c1"),
        n("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"], epsilon=1e-3, name="bn"),
        n("LeakyRelu", ["bn"], ["r"], alpha=0.2, name="lrelu"),
        n("Conv", ["r", "wdw"], ["dw"], group=8, dilations=[2, 2], pads=[2, 2, 2, 2], name="dw"),
        n("Relu", ["dw"], ["dwr"], name="relu"),
        n("Conv", ["dwr", "w2"], ["p"], strides=[2, 2], pads=[1, 1, 1, 1], name="down"),
        # PyTorch's F.interpolate(p, size=r.shape[2:]): sizes = Shape(p)[:2] ++ Shape(r)[2:4]
        n("Shape", ["p"], ["sp"], name="shape_p"), n("Shape", ["r"], ["sr"], name="shape_r"),
        n("Slice", ["sp", "zero", "two", "zero"], ["nc"], name="slice_nc"),
        n("Slice", ["sr", "two", "four", "zero"], ["hw"], name="slice_hw"),
        n("Concat", ["nc", "hw"], ["sizes"], axis=0, name="sizes"),
        n("Resize", ["p", "", "", "sizes"], ["up"], mode="nearest", coordinate_transformation_mode="asymmetric",
          nearest_mode="floor", name="resize_to"),
        n("Add", ["r", "up"], ["s"], name="add"),
        n("Resize", ["s", "", "scales"], ["up2"], mode="nearest", name="resize_x2"),
        n("ConvTranspose", ["up2", "wt", "bt"], ["dc"], strides=[2, 2], name="deconv"),
        n("Concat", ["s", "dwr"], ["cat"], axis=-3, name="cat"),
        n("Transpose", ["cat"], ["t"], perm=[0, 2, 3, 1], name="t"),
        n("Shape", ["t"], ["st"], name="shape_t"),
        n("Gather", ["st", "zero_s"], ["batch"], axis=0, name="gather"),
        n("Unsqueeze", ["batch", "zero"], ["batch1"], name="unsq"),
        n("Concat", ["batch1", "minus1", "four"], ["rshape"], axis=0, name="rshape"),
        n("Reshape", ["t", "rshape"], ["rs"], name="reshape"),
        n("Softmax", ["rs"], ["prob"], axis=-1, name="softmax"),
        n("Identity", ["s"], ["feat"], name="identity"),
    ]
    inits = {"w1": (8, 3, 3, 3), "b1": (8,), "g": np.random.default_rng(2).uniform(0.5, 1.5, 8).astype(np.float32),
             "beta": (8,), "mean": (8,), "var": np.random.default_rng(3).uniform(0.5, 2, 8).astype(np.float32),
             "wdw": (8, 1, 3, 3), "w2": (8, 8, 3, 3), "wt": (8, 4, 2, 2), "bt": (4,),
             "scales": np.array([1, 1, 2, 2], np.float32), "zero": _i64(0), "two": _i64(2), "four": _i64(4),
             "minus1": _i64(-1), "zero_s": np.array(0, np.int64)}
    return _save(tmp_path, nodes, inits, ["prob", "dc", "feat"])


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 50, 70)])
def test_every_op_matches_onnxruntime(tmp_path, shape):
    path = _every_op_model(tmp_path)
    g = load_onnx(path)
    assert g.outputs == ["prob", "dc", "feat"]
    assert {n.op for n in g.nodes} == {"conv", "batchnorm", "leaky_relu", "relu", "upsample_nearest", "crop_like",
                                       "add", "deconv", "concat", "transpose", "reshape", "softmax"}
    x = np.random.default_rng(4).normal(0, 1, shape).astype(np.float32)
    # dc's chain (tolerance.chain_lengths): conv 27+1, batchnorm 6, leaky 1, depthwise 9, conv 72, add 1,
    # deconv 8+1: n = 126
    assert_same_outputs(ort_run(path, x), torch_run(g, x), g, shape, "torch vs onnxruntime")


def test_every_op_through_mxnet(tmp_path):
    pytest.importorskip("mxnet")
    from test_mxnet_export import mxnet_run

    path = _every_op_model(tmp_path)
    x = np.random.default_rng(5).normal(0, 1, (1, 3, 50, 70)).astype(np.float32)
    g = load_onnx(path)
    assert_same_outputs(ort_run(path, x), mxnet_run(g, x), g, x.shape, "mxnet vs onnxruntime")


def test_opset9_upsample(tmp_path):
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], name="c"),
             n("Upsample", ["c", "scales"], ["y"], mode="nearest", name="up")]
    path = _save(tmp_path, nodes, {"w": (4, 3, 1, 1), "scales": np.array([1, 1, 2, 2], np.float32)}, ["y"], opset=9)
    x = np.random.default_rng(6).normal(0, 1, (1, 3, 12, 10)).astype(np.float32)
    g = load_onnx(path)
    assert [n.op for n in g.nodes] == ["conv", "upsample_nearest"]
    assert_same_outputs(ort_run(path, x), torch_run(g, x), g, x.shape, "torch vs onnxruntime")  # n = 3


# ---- errors
def _one_op(tmp_path, node, inits=None, opset=13):
    return _save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["c"], name="c"), node],
                 {"w": (4, 3, 1, 1), **(inits or {})}, [node.output[0]], opset=opset)


def test_unknown_op_names_node_and_op(tmp_path):
    from retinabench.graph.onnx_import import ConversionError  # a ModelError the native runtimes run past
    path = _one_op(tmp_path, helper.make_node("Sigmoid", ["c"], ["y"], name="gate"))
    with pytest.raises(ConversionError, match=r"^conversion needs Sigmoid \(node gate\)$"):
        load_onnx(path)


@pytest.mark.parametrize("node, inits, opset, match", [
    (helper.make_node("Conv", ["c", "w2"], ["y"], pads=[0, 0, 1, 1], name="asym"), {"w2": (4, 4, 3, 3)}, 13,
     r"\(node asym\): asymmetric pads"),
    (helper.make_node("Resize", ["c", "", "scales"], ["y"], mode="linear", name="bilinear"),
     {"scales": np.array([1, 1, 2, 2], np.float32)}, 13, r"Resize \(node bilinear\): .*linear"),
    (helper.make_node("Resize", ["c", "", "scales"], ["y"], mode="nearest", name="third"),
     {"scales": np.array([1, 1, 1.5, 1.5], np.float32)}, 13, r"Resize \(node third\): .*integer"),
    (helper.make_node("Softmax", ["c"], ["y"], axis=1, name="flat"), {}, 11, r"Softmax \(node flat\): .*Softmax"),
])
def test_unsupported_forms(tmp_path, node, inits, opset, match):
    with pytest.raises(ModelError, match=match):
        load_onnx(_one_op(tmp_path, node, inits, opset))


def test_truncated_file_is_one_line_error(tmp_path, default_onnx):
    cut = tmp_path / "cut.onnx"
    data = default_onnx.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as e:
        load_onnx(cut)
    assert str(cut) in str(e.value) and "\n" not in str(e.value)


def test_not_onnx_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(ModelError) as e:
        load_onnx(bad)
    assert "\n" not in str(e.value)


def test_fixed_input_size_is_respected(tmp_path):
    n = helper.make_node
    graph = helper.make_graph(
        [n("Conv", ["x", "w"], ["y"], name="c")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")])
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    assert load_onnx(path).outputs == ["y"]
    with pytest.raises(ModelError, match="fixed"):
        load_onnx(path, input_shape=(1, 3, 64, 64))


# ---- nearest-neighbour index rule against onnx's reference Resize
@pytest.mark.parametrize("transform", ["asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners"])
@pytest.mark.parametrize("rounding", ["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"])
def test_nearest_index_rule_matches_onnx_reference(transform, rounding):
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("Resize", ["x", "", "scales", "sizes"], ["y"], mode="nearest",
                            coordinate_transformation_mode=transform, nearest_mode=rounding)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                      helper.make_tensor_value_info("scales", TensorProto.FLOAT, None),
                      helper.make_tensor_value_info("sizes", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    ev = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    for n, out in [(5, 10), (5, 9), (7, 21), (7, 20), (4, 3), (13, 26), (13, 25)]:
        x = np.arange(n, dtype=np.float32).reshape(1, 1, n, 1)
        y = ev.run(None, {"x": x, "scales": np.zeros(0, np.float32), "sizes": _i64(1, 1, out, 1)})[0]
        np.testing.assert_array_equal(y.ravel().astype(np.int64), nearest_source_index(n, out, transform, rounding),
                                      err_msg=f"{n} -> {out}")


def test_malformed_attributes_name_the_node(tmp_path):
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], name="c"), n("Concat", ["c", "c"], ["y"], name="no_axis")]
    path = _save(tmp_path, nodes, {"w": (4, 3, 1, 1)}, ["y"])
    with pytest.raises(ModelError, match=r"'no_axis' \(Concat\)"):
        load_onnx(path)
