"""MXNet exporter: the IR back to a symbol, checked against MXNet's own checkpoint and ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mxnet")

from retinabench.graph.ir import Graph, Node  # noqa: E402
from retinabench.graph.mxnet_export import to_mxnet  # noqa: E402
from retinabench.graph.mxnet_import import load_mxnet  # noqa: E402
from retinabench.errors import ModelError  # noqa: E402
from tolerance import THREADS, assert_all_close, assert_close, output_chain_lengths  # noqa: E402


def mxnet_run(graph: Graph, x: np.ndarray) -> dict:
    """Bind the exported symbol as the MXNet backend does and run one forward pass (OMP_NUM_THREADS: conftest)."""
    sym, params = to_mxnet(graph)
    arg = {k[4:]: v for k, v in params.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in params.items() if k.startswith("aux:")}
    ex = sym.simple_bind(mx.cpu(), data=x.shape, grad_req="null")
    ex.copy_params_from(arg, aux)  # every parameter must be used: no allow_extra_params
    ex.arg_dict["data"][:] = x
    outs = [o.asnumpy() for o in ex.forward(is_train=False)]
    names = [n[: -len("_output")] for n in sym.list_outputs()]
    return dict(zip(names, outs))


def test_mnet25_round_trip_equals_checkpoint(mnet25_dir, mxnet_native):
    graph = load_mxnet(mnet25_dir)
    sym, params = to_mxnet(graph)
    assert [n[: -len("_output")] for n in sym.list_outputs()] == graph.outputs
    assert sym.list_arguments()[0] == "data"
    got = mxnet_run(graph, mxnet_native["blob"])
    assert set(got) == set(mxnet_native["outputs"])
    chains = output_chain_lengths(graph, mxnet_native["blob"].shape)
    for name, ref in mxnet_native["outputs"].items():
        assert got[name].shape == ref.shape
        assert_close(got[name], ref, chains[name], f"exported symbol vs checkpoint: {name}")


@pytest.fixture(scope="module")
def default_onnx():
    from retinabench.defaults import default_model_path
    return default_model_path()


@pytest.mark.parametrize("mode", ["fit", "native"])  # native: 1280x886, the crop after upsampling matters
def test_onnx_model_through_mxnet_matches_onnxruntime(default_onnx, t1_image, mode):
    from conftest import ort_session
    from retinabench.graph.onnx_import import load_onnx
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor

    pre = Preprocessor(get_family("biubug6").normalization, mode, (1280, 896) if mode == "fit" else None)
    blob, _ = pre([t1_image])
    sess = ort_session(default_onnx)
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": blob})))
    graph = load_onnx(default_onnx)
    got = mxnet_run(graph, blob)
    assert list(got) == ["loc", "conf", "landmarks"]
    assert_all_close(got, ref, output_chain_lengths(graph, blob.shape), "mxnet vs onnxruntime")


def test_mxnet_backend_runs_an_onnx_model(default_onnx, t1_image):
    """The backend's non-MXNet path: ModelSource -> graph -> to_mxnet -> detections."""
    from backends.base import create_backend
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import Preprocessor
    from retinabench.model.source import open_model

    family = get_family("biubug6")
    blob, metas = Preprocessor(family.normalization, "fit", (640, 640))([t1_image])
    with create_backend("mxnet", threads=THREADS) as be:
        be.load(open_model(default_onnx), 1, 640, 640)
        outs = be.infer(blob)
        assert list(be.output_names) == ["loc", "conf", "landmarks"]
    faces = family.make_decoder(list(outs), 0.8)(outs, metas)[0]
    assert len(faces) == 6


def test_every_ir_op_exports():
    """Each op on a small graph, against numpy written from the IR's definitions."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (4, 2, 2, 2)).astype(np.float32)
    bn = {k: rng.uniform(0.5, 1.5, 4).astype(np.float32) for k in ("gamma", "beta", "mean", "var")}
    g = Graph([
        Node("up", "upsample_nearest", ["x"], dict(scale=2)),
        Node("crop", "crop_like", ["up", "x"], dict(offset=(1, 2))),
        Node("dc", "deconv", ["crop"], dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), group=2, num_filter=4),
             {"weight": w}),
        Node("bn", "batchnorm", ["dc"], dict(eps=1e-3), bn),
        Node("lr", "leaky_relu", ["bn"], dict(alpha=0.1)),
        Node("tr", "transpose", ["lr"], dict(perm=(0, 2, 3, 1))),
        Node("rs", "reshape", ["tr"], dict(shape=(0, -1, 2))),
        Node("sm", "softmax", ["rs"], dict(axis=2)),
    ], ["sm", "crop"], input_name="x")
    x = rng.normal(0, 1, (1, 4, 3, 5)).astype(np.float32)
    got = mxnet_run(g, x)
    up = x.repeat(2, 2).repeat(2, 3)
    crop = up[:, :, 1:4, 2:7]
    dc = np.zeros((1, 4, 6, 10), np.float32)  # group 2: input channels 2g, 2g+1 -> output 2g, 2g+1
    for o in range(4):
        grp = o // 2
        for i in range(2):
            kern = w[grp * 2 + i, o % 2]
            dc[0, o] += np.kron(crop[0, grp * 2 + i], kern)
    bnv = (dc - bn["mean"][:, None, None]) / np.sqrt(bn["var"][:, None, None] + 1e-3) * bn["gamma"][:, None, None] \
        + bn["beta"][:, None, None]
    lr = np.where(bnv > 0, bnv, 0.1 * bnv)
    rs = lr.transpose(0, 2, 3, 1).reshape(1, -1, 2)
    sm = np.exp(rs) / np.exp(rs).sum(axis=2, keepdims=True)
    np.testing.assert_array_equal(got["crop"], crop)  # upsampling and cropping copy values
    # float32 on both sides; sm's chain: deconv 2 taps, batchnorm 6, leaky 1, softmax 2 + 4: n = 15
    assert_close(got["sm"], sm, output_chain_lengths(g, x.shape)["sm"], "softmax")


def test_node_named_data_is_refused():
    g = Graph([Node("data", "relu", ["x"])], ["data"], input_name="x")
    with pytest.raises(ModelError, match="data"):
        to_mxnet(g)
