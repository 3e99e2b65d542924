"""The ONNX exporter and the PyTorch module: valid files, truthful opsets, shapes, and op semantics.

Op semantics are checked on a small graph against a numpy reference written from the IR's
definitions, through every runtime that consumes the export (ONNX Runtime, OpenVINO, OpenCV) and
through the torch module: an odd-sized crop at a (1, 0) offset after nearest upsampling, softmax
over channels behind 0/-1 reshapes, a grouped padded deconvolution, and the exact-upsampling deconv.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import ort_session  # noqa: E402
from retinabench.errors import ModelError  # noqa: E402
from retinabench.graph.ir import Graph, Node, infer_shapes  # noqa: E402
from retinabench.graph.onnx_export import export_onnx, onnx_for  # noqa: E402
from tolerance import THREADS, assert_close, output_chain_lengths  # noqa: E402

SMALL = (1, 3, 100, 150)  # not a multiple of 32: crops cut the upsampled maps


def _session(path: Path):
    return ort_session(path)


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def small_blob(t1_image):
    import cv2
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor

    pre = Preprocessor(get_family("insightface").normalization, "fit", (SMALL[3], SMALL[2]))
    images = [t1_image, cv2.flip(t1_image, 1), cv2.flip(t1_image, 0)]
    return np.concatenate([pre([im])[0].copy() for im in images])  # three different images


@pytest.mark.parametrize("opset", [13, 17])
def test_export_passes_checker_and_records_its_opset(tmp_path, mnet25, opset):
    path = export_onnx(mnet25.graph(), tmp_path / "m.onnx", SMALL, opset=opset)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import))
    for node in model.graph.node:  # each op exists in the recorded opset (raises if not)
        assert onnx.defs.get_schema(node.op_type, opset, "").since_version <= opset
    ops = {n.op_type for n in model.graph.node}
    assert ops == {"Conv", "BatchNormalization", "Relu", "Resize", "Slice", "Add", "Concat", "Softmax", "Reshape"}
    # Output names stay the graph's: the insightface decoder finds outputs by name.
    assert [o.name for o in model.graph.output] == mnet25.graph().outputs


def test_opsets_before_13_are_refused(tmp_path, mnet25):
    # Softmax-11 flattens from the axis on: softmax over channels of a 4D map cannot be written.
    with pytest.raises(ModelError, match="opset 11"):
        export_onnx(mnet25.graph(), tmp_path / "m.onnx", SMALL, opset=11)


def test_static_export_fixes_the_input_shape(tmp_path, mnet25, small_blob):
    path = export_onnx(mnet25.graph(), tmp_path / "m.onnx", SMALL)
    model = onnx.load(str(path))
    assert _dims(model.graph.input[0]) == list(SMALL)
    shapes = infer_shapes(mnet25.graph(), SMALL)
    assert [_dims(o) for o in model.graph.output] == [list(shapes[o.name]) for o in model.graph.output]
    sess = _session(path)
    assert sess.run(None, {"data": small_blob[:1]})[0].shape == shapes[model.graph.output[0].name]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, {"data": small_blob})  # batch 3 into a batch-1 model


def test_dynamic_batch_runs_batch_1_and_3(tmp_path, mnet25, small_blob):
    path = export_onnx(mnet25.graph(), tmp_path / "m.onnx", SMALL, dynamic_batch=True)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert _dims(model.graph.input[0]) == ["batch"] + list(SMALL[1:])
    assert all(_dims(o)[0] == "batch" for o in model.graph.output)
    sess = _session(path)
    three = sess.run(None, {"data": small_blob})
    chains = output_chain_lengths(mnet25.graph(), small_blob.shape)
    for b in range(3):
        one = sess.run(None, {"data": small_blob[b:b + 1]})
        for name, o1, o3 in zip([o.name for o in sess.get_outputs()], one, three):
            assert o3.shape[0] == 3 and o1.shape[1:] == o3.shape[1:]
            assert_close(o3[b:b + 1], o1, chains[name], f"batch 3 vs 1, image {b}: {name}")
    assert np.abs(three[-1][0] - three[-1][1]).max() > 1e-2  # the three images really differ


def test_onnx_for_caches_by_shape_and_returns_onnx_models_as_they_are(tmp_path, monkeypatch, mnet25):
    monkeypatch.setenv("RETINABENCH_CACHE", str(tmp_path / "cache"))
    a = onnx_for(mnet25, SMALL)
    assert a == onnx_for(mnet25, SMALL) and a.is_file()
    b = onnx_for(mnet25, (2,) + SMALL[1:])
    c = onnx_for(mnet25, (2,) + SMALL[1:], dynamic_batch=True)
    d = onnx_for(mnet25, (5,) + SMALL[1:], dynamic_batch=True)  # the batch does not matter when dynamic
    assert len({a, b, c}) == 3 and c == d
    assert _dims(onnx.load(str(b)).graph.input[0])[0] == 2
    from retinabench.model.source import open_model
    assert onnx_for(open_model(a), SMALL) == a  # an ONNX model is used as it is, not re-exported


def test_dynamic_batch_refuses_a_reshape_that_fixes_the_batch(tmp_path):
    g = Graph([Node("r", "reshape", ["data"], {"shape": (1, -1)})], ["r"])
    export_onnx(g, tmp_path / "static.onnx", (1, 2, 3, 4))
    with pytest.raises(ModelError, match="fixes the batch"):
        export_onnx(g, tmp_path / "dyn.onnx", (1, 2, 3, 4), dynamic_batch=True)


# --- op semantics on a small graph, every runtime against numpy --------------------------------

TINY_SHAPE = (2, 3, 7, 9)


def _tiny_graph() -> Graph:
    rng = np.random.default_rng(0)
    f = lambda *s: rng.normal(0, 0.5, s).astype(np.float32)  # noqa: E731
    conv = lambda o, i, k, s, p, g=1: dict(kernel=(k, k), stride=(s, s), pad=(p, p), dilate=(1, 1),  # noqa: E731
                                           group=g, num_filter=o)
    nodes = [
        Node("down", "conv", ["data"], conv(4, 3, 1, 2, 0), {"weight": f(4, 3, 1, 1), "bias": f(4)}),
        Node("bn", "batchnorm", ["down"], {"eps": 1e-3},
             {"gamma": f(4), "beta": f(4), "mean": f(4), "var": np.abs(f(4)) + 0.5}),
        Node("up", "upsample_nearest", ["bn"], {"scale": 2}),                       # 4x5 -> 8x10
        Node("lat", "conv", ["data"], conv(4, 3, 1, 1, 0), {"weight": f(4, 3, 1, 1)}),
        Node("lat_relu", "relu", ["lat"]),
        Node("crop", "crop_like", ["up", "lat_relu"], {"offset": (1, 0)}),          # 8x10 -> 7x9
        Node("sum", "add", ["lat_relu", "crop"]),
        Node("leaky", "leaky_relu", ["sum"], {"alpha": 0.1}),
        Node("dec", "deconv", ["leaky"], dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), group=4, num_filter=4),
             {"weight": np.ones((4, 1, 2, 2), np.float32)}),
        Node("dec2", "deconv", ["leaky"], dict(kernel=(4, 4), stride=(2, 2), pad=(1, 1), group=2, num_filter=6),
             {"weight": f(4, 3, 4, 4), "bias": f(6)}),
        Node("cat", "concat", ["leaky", "sum"], {"axis": 1}),
        Node("score_reshape", "reshape", ["cat"], {"shape": (0, 2, -1, 0)}),
        Node("prob", "softmax", ["score_reshape"], {"axis": 1}),
        Node("prob_reshape", "reshape", ["prob"], {"shape": (0, 8, -1, 0)}),
        Node("perm", "transpose", ["prob_reshape"], {"perm": (0, 2, 3, 1)}),
    ]
    return Graph(nodes, ["bn", "leaky", "dec", "dec2", "prob_reshape", "perm"], source="tiny")


def _numpy_reference(g: Graph, x: np.ndarray) -> dict:
    """The IR's definitions, written out in float64 numpy."""
    P = lambda name, key: g.node(name).params[key].astype(np.float64)  # noqa: E731
    x = x.astype(np.float64)
    down = np.einsum("oi,nihw->nohw", P("down", "weight")[:, :, 0, 0], x[:, :, ::2, ::2]) + P("down", "bias")[:, None, None]
    c = lambda v: v[:, None, None]  # noqa: E731
    bn = (down - c(P("bn", "mean"))) / np.sqrt(c(P("bn", "var")) + 1e-3) * c(P("bn", "gamma")) + c(P("bn", "beta"))
    up = bn.repeat(2, axis=2).repeat(2, axis=3)
    lat = np.maximum(np.einsum("oi,nihw->nohw", P("lat", "weight")[:, :, 0, 0], x), 0)
    s = lat + up[:, :, 1:8, 0:9]
    leaky = np.where(s > 0, s, 0.1 * s)
    dec = leaky.repeat(2, axis=2).repeat(2, axis=3)
    w, (n, _, h, wd) = P("dec2", "weight"), leaky.shape
    full = np.zeros((n, 6, (h - 1) * 2 + 4, (wd - 1) * 2 + 4))
    for ci in range(4):
        grp = ci // 2
        for co in range(3):
            for ky in range(4):
                for kx in range(4):
                    full[:, grp * 3 + co, ky:ky + 2 * h - 1:2, kx:kx + 2 * wd - 1:2] += leaky[:, ci] * w[ci, co, ky, kx]
    dec2 = full[:, :, 1:-1, 1:-1] + c(P("dec2", "bias"))
    score = np.concatenate([leaky, s], axis=1).reshape(n, 2, -1, wd)
    e = np.exp(score - score.max(axis=1, keepdims=True))
    prob = (e / e.sum(axis=1, keepdims=True)).reshape(n, 8, -1, wd)
    return {"bn": bn, "leaky": leaky, "dec": dec, "dec2": dec2, "prob_reshape": prob, "perm": prob.transpose(0, 2, 3, 1)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from retinabench.model.source import ModelSource

    g = _tiny_graph()
    path = export_onnx(g, tmp_path_factory.mktemp("tiny") / "tiny.onnx", TINY_SHAPE)
    x = np.random.default_rng(1).normal(0, 1, TINY_SHAPE).astype(np.float32)
    # An ONNX-format source: ONNX backends run this file, the torch backend builds from the graph.
    source = ModelSource(path, "onnx", [path], "insightface", _graph=g)
    return source, x, _numpy_reference(g, x)


@pytest.mark.parametrize("backend,variant", [("onnxruntime", "default"), ("openvino", "default"),
                                             ("opencv-onnx", "default"), ("torch", "default")])
def test_every_op_means_what_the_ir_says(tiny, backend, variant):
    from backends.base import create_backend

    source, x, ref = tiny
    with create_backend(backend, variant=variant, threads=THREADS) as be:
        be.load(source, *TINY_SHAPE[:1], *TINY_SHAPE[2:])
        out = be.infer(x)
    assert set(out) == set(ref)
    chains = output_chain_lengths(source.graph(), TINY_SHAPE)
    for name, want in ref.items():
        assert out[name].shape == want.shape, name
        assert_close(out[name], want, chains[name], f"{backend}: {name}", exact_want=True)  # want: float64
    # Nearest x2 is pixel duplication, bit for bit, as is the all-ones stride-2 deconvolution.
    np.testing.assert_array_equal(out["dec"], out["leaky"].repeat(2, axis=2).repeat(2, axis=3))


def test_torch_module_scripts_compiles_and_folds(mnet25, small_blob):
    torch = pytest.importorskip("torch")
    from retinabench.graph.torch_module import to_torch

    module = to_torch(mnet25.graph())
    x = torch.from_numpy(small_blob)
    # Folding rounds each weight once more (w * gamma / sqrt(var + eps)): within the batchnorm's 6 roundings.
    chains = output_chain_lengths(mnet25.graph(), small_blob.shape)
    with torch.inference_mode():
        want = module(x)
        scripted = torch.jit.script(module)(x)
        # fullgraph: no graph breaks, so inductor and CUDA graphs get the whole network.
        compiled = torch.compile(module, fullgraph=True, backend="eager")(x)
        folded = to_torch(mnet25.graph(), fold_batchnorm=True)(x)
        one = module(x[1:2])
    assert len(want) == len(mnet25.graph().outputs)
    for name, w, s, c, f, o in zip(mnet25.graph().outputs, want, scripted, compiled, folded, one):
        assert torch.equal(w, s) and torch.equal(w, c)
        assert_close(f.numpy(), w.numpy(), chains[name], f"folded batchnorm: {name}")
        assert_close(o.numpy(), w[1:2].numpy(), chains[name], f"batch 1 vs 3: {name}")  # any batch, one module
    n_bn = sum(n.op == "batchnorm" for n in mnet25.graph().nodes)
    n_bn_folded = sum(isinstance(m, torch.nn.BatchNorm2d) for m in to_torch(mnet25.graph(), True).modules())
    assert n_bn == 47 and n_bn_folded == 0
