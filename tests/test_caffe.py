"""The Caffe converter and the two Caffe backends, on real pycaffe and real OpenCV DNN.

pycaffe lives in its own Python 3.9 environment (.venv-caffe, made by scripts/setup_caffe.sh), so
its runs happen in one subprocess under that interpreter (CAFFE_SCRIPT below) and the outputs come
back as .npz files; decoding and comparison happen here, with the same code as every backend.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from backends.base import create_backend
from backends.caffe_backend import CaffeBackend
from retinabench.errors import BackendUnavailable, BenchError, ModelError
from retinabench.graph.caffe_export import (cached_caffe_files, convert_to_caffe, graph_to_caffe,
                                            upsample_deconv, write_caffe)
from retinabench.graph.caffe_import import load_caffe, net_input, read_caffemodel, read_prototxt
from retinabench.model.family import get_family
from retinabench.model.preprocess import Preprocessor
from retinabench.model.source import open_model
from retinabench.report.accuracy import compare_faces, output_diffs
from tolerance import THREADS, assert_all_close, assert_close, output_chain_lengths

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.8
FIT_SIZES = [(1280, 896), (640, 448)]
CAFFE_PY = CaffeBackend.interpreter()
needs_pycaffe = pytest.mark.skipif(not Path(CAFFE_PY).exists(),
                                   reason=f"{CAFFE_PY} absent: run scripts/setup_caffe.sh to test real pycaffe")

# Runs under the Caffe interpreter: each job loads a model into the real `caffe` backend, runs one
# blob and saves the outputs; a user-facing error is recorded instead (pycaffe must not abort).
CAFFE_SCRIPT = r'''
import json, sys
import numpy as np
from backends.base import create_backend
from retinabench.errors import BenchError
from retinabench.model.source import open_model
for job in json.load(open(sys.argv[1])):
    info = {}
    try:
        blob = np.load(job["blob"])
        with create_backend("caffe", threads=job["threads"], options={"upsample": job["upsample"]}) as be:
            be.load(open_model(job["model"]), blob.shape[0], blob.shape[2], blob.shape[3])
            np.savez(job["out"], **be.infer(blob))
            info = {"names": be.output_names, "settings": be.settings().to_json(), "versions": be.versions()}
    except BenchError as e:
        info = {"error": type(e).__name__, "message": str(e)}
    with open(job["out"] + ".json", "w") as f:
        json.dump(info, f)
'''


def decode(names, outputs, metas):
    return get_family("insightface").make_decoder(names, THRESHOLD)(outputs, metas)[0]


def fit_blob(image, size):
    blob, metas = Preprocessor(get_family("insightface").normalization, "fit", size)([image])
    return blob.copy(), metas


@pytest.fixture(scope="session")
def bad_models(tmp_path_factory, seed_caffe_dirs) -> Dict[str, Path]:
    """Third-party-style Caffe pairs that must fail cleanly: mismatched weights, an unknown layer."""
    src = seed_caffe_dirs["mnet25"]
    text = (src / "mnet25.prototxt").read_text()
    out = {}
    for name, old, new in [
        ("mismatch", "num_output: 8\n", "num_output: 16\n"),  # first conv: weights are 8x3x3x3
        ("unknown", 'name: "mobilenet0_relu0_fwd"\n  type: "ReLU"', 'name: "mobilenet0_relu0_fwd"\n  type: "FancyReLU"'),
    ]:
        assert old in text
        d = tmp_path_factory.mktemp(name)
        (d / "mnet25.prototxt").write_text(text.replace(old, new, 1))
        shutil.copy(src / "mnet25.caffemodel", d / "mnet25.caffemodel")
        out[name] = d
    return out


@pytest.fixture(scope="session")
def fit_refs(mnet25, t1_image):
    """MXNet at each 'fit' size: the blob, metas and faces the Caffe models are held to."""
    refs = {}
    with create_backend("mxnet", threads=THREADS) as be:
        for size in FIT_SIZES:
            blob, metas = fit_blob(t1_image, size)
            be.load(mnet25, 1, size[1], size[0])
            refs[size] = {"blob": blob, "metas": metas, "faces": decode(be.output_names, be.infer(blob), metas)}
    return refs


@pytest.fixture(scope="session")
def pycaffe_runs(tmp_path_factory, mnet25_dir, seed_caffe_dirs, mxnet_native, fit_refs, bad_models):
    """Every pycaffe run of this file, in one subprocess under the Caffe interpreter."""
    if not Path(CAFFE_PY).exists():
        pytest.skip(f"{CAFFE_PY} absent: run scripts/setup_caffe.sh to test real pycaffe")
    work = tmp_path_factory.mktemp("pycaffe")
    np.save(work / "native.npy", mxnet_native["blob"])
    jobs = [{"key": f"mnet25-{p}", "model": str(mnet25_dir), "upsample": p, "blob": str(work / "native.npy")}
            for p in ("exact", "bilinear")]
    for w, h in FIT_SIZES:
        np.save(work / f"fit{w}.npy", fit_refs[(w, h)]["blob"])
        jobs += [{"key": f"{k}-{w}x{h}", "model": str(d), "upsample": "exact", "blob": str(work / f"fit{w}.npy")}
                 for k, d in seed_caffe_dirs.items()]
    jobs += [{"key": k, "model": str(d), "upsample": "exact", "blob": str(work / "fit640.npy")}
             for k, d in bad_models.items()]
    for j in jobs:
        j["out"], j["threads"] = str(work / (j["key"] + ".npz")), THREADS
    (work / "jobs.json").write_text(json.dumps(jobs))
    (work / "run.py").write_text(CAFFE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLOG_minloglevel="2")
    proc = subprocess.run([CAFFE_PY, str(work / "run.py"), str(work / "jobs.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"pycaffe subprocess failed ({proc.returncode}): {proc.stderr[-3000:]}"
    runs = {}
    for j in jobs:
        info = json.loads(Path(j["out"] + ".json").read_text())
        if "error" not in info:
            with np.load(j["out"]) as z:
                info["outputs"] = {k: z[k] for k in z.files}
        runs[j["key"]] = info
    return runs


def opencv_run(model, blob, upsample="exact", threads=THREADS):
    with create_backend("opencv-caffe", threads=threads, options={"upsample": upsample}) as be:
        be.load(model, blob.shape[0], blob.shape[2], blob.shape[3])
        outs = be.infer(blob)
        return {"names": be.output_names, "outputs": outs, "settings": be.settings().to_json()}


def run_on(backend, key, model, blob, upsample, pycaffe_runs_factory):
    if backend == "opencv-caffe":
        return opencv_run(model, blob, upsample)
    run = pycaffe_runs_factory()[key]
    assert "error" not in run, run
    return run


@pytest.fixture
def pycaffe(request):
    return lambda: request.getfixturevalue("pycaffe_runs")


def _print_diffs(label, diffs, agreement):
    print(f"\n{label}")
    for d in diffs:
        print(f"  {d.output:40s} max {d.max_abs:.3g}  mean {d.mean_abs:.3g}")
    print(f"  faces: {agreement}")


# --- exact: identical to MXNet -------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["opencv-caffe", pytest.param("caffe", marks=needs_pycaffe)])
def test_exact_conversion_matches_mxnet(backend, mnet25, mxnet_native, pycaffe):
    run = run_on(backend, "mnet25-exact", mnet25, mxnet_native["blob"], "exact", pycaffe)
    ref = mxnet_native["outputs"]
    assert run["names"] == mxnet_native["names"]
    diffs = output_diffs(ref, run["outputs"])
    assert len(diffs) == len(ref) == 9
    ref_faces = decode(mxnet_native["names"], ref, mxnet_native["metas"])
    agreement = compare_faces(ref_faces, decode(run["names"], run["outputs"], mxnet_native["metas"]))
    _print_diffs(f"{backend} exact vs MXNet, t1.jpg native 1280x886", diffs, agreement)
    # The exact upsampling Deconvolution multiplies by 1 once per output: the chain is MXNet's.
    assert_all_close(run["outputs"], ref, output_chain_lengths(mnet25.graph(), mxnet_native["blob"].shape),
                     f"{backend} vs mxnet")
    assert len(ref_faces) == 6
    assert (agreement.matched, agreement.missed, agreement.extra) == (6, 0, 0)
    assert agreement.max_box_shift_px < 0.05 and agreement.max_score_diff < 1e-4
    assert run["settings"]["upsample"] == "exact" and run["settings"]["converted"] is True


# --- bilinear: the original project's conversion, and what it costs -------------------------------

@pytest.mark.parametrize("backend", ["opencv-caffe", pytest.param("caffe", marks=needs_pycaffe)])
def test_bilinear_conversion_difference_is_measured(backend, mnet25, mxnet_native, pycaffe):
    ref = mxnet_native["outputs"]
    metas, names = mxnet_native["metas"], mxnet_native["names"]
    exact = run_on(backend, "mnet25-exact", mnet25, mxnet_native["blob"], "exact", pycaffe)
    bilinear = run_on(backend, "mnet25-bilinear", mnet25, mxnet_native["blob"], "bilinear", pycaffe)
    d_exact = {d.output: d for d in output_diffs(ref, exact["outputs"])}
    d_bil = {d.output: d for d in output_diffs(ref, bilinear["outputs"])}
    agreement = compare_faces(decode(names, ref, metas), decode(bilinear["names"], bilinear["outputs"], metas))
    _print_diffs(f"{backend} bilinear vs MXNet, t1.jpg native 1280x886", list(d_bil.values()), agreement)
    assert set(d_bil) == set(d_exact) == set(ref)
    # Stride 32 is computed before any upsampling: the policy cannot touch it (same layers, same kernels).
    for name in ref:
        if name.endswith("stride32"):
            np.testing.assert_array_equal(bilinear["outputs"][name], exact["outputs"][name], err_msg=name)
        else:  # strides 16 and 8 come after an upsampling: bilinear moves them far beyond exact's error
            assert d_bil[name].max_abs > 100 * max(d_exact[name].max_abs, 1e-6), name
            assert d_bil[name].mean_abs > d_exact[name].mean_abs
    assert agreement.reference_faces == 6 and agreement.max_box_shift_px > 0.05
    assert bilinear["settings"]["upsample"] == "bilinear"


def test_bilinear_weights_are_the_original_projects(seed_caffe_dirs):
    k, pad, kernel = upsample_deconv(2, "bilinear")
    assert (k, pad) == (4, 1)
    model = read_caffemodel(seed_caffe_dirs["mnet25"] / "mnet25.caffemodel")
    blob = next(l for l in model.layer if l.name == "rf_c3_upsampling").blobs[0]
    seed = np.asarray(blob.data, np.float32).reshape(tuple(blob.shape.dim))
    assert seed.shape == (64, 1, 4, 4)
    np.testing.assert_array_equal(seed, np.broadcast_to(kernel, seed.shape))
    k, pad, kernel = upsample_deconv(2, "exact")
    assert (k, pad) == (2, 0) and np.array_equal(kernel, np.ones((2, 2), np.float32))


# --- round trip ---------------------------------------------------------------------------------

def test_round_trip_graph_caffe_graph(mnet25, tmp_path):
    graph = mnet25.graph()
    shape = (1, 3, 448, 640)
    write_caffe(graph, tmp_path / "m.prototxt", tmp_path / "m.caffemodel", shape, "exact")
    back = load_caffe(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    assert back.outputs == graph.outputs and back.input_name == graph.input_name
    assert [n.name for n in back.nodes] == [n.name for n in graph.nodes]
    for n in graph.nodes:
        m = back.node(n.name)
        assert m.inputs == n.inputs, n.name
        if n.op == "upsample_nearest":  # came back as the exact Deconvolution
            c = m.params["weight"].shape[0]
            assert m.op == "deconv" and m.attrs["kernel"] == m.attrs["stride"] == (2, 2) and m.attrs["group"] == c
            assert np.all(m.params["weight"] == 1.0) and "bias" not in m.params
            continue
        assert m.op == n.op, n.name
        assert set(m.params) == set(n.params), n.name
        for k, v in n.params.items():
            np.testing.assert_array_equal(m.params[k], v, err_msg=f"{n.name}.{k}")
        for k, v in n.attrs.items():
            assert m.attrs[k] == pytest.approx(v, rel=1e-6), f"{n.name}.{k}"
    # A fixed point: exporting the imported graph gives the same layers and the same weights.
    net1, model1 = graph_to_caffe(graph, shape, "exact")
    net2, model2 = graph_to_caffe(back, shape, "exact")
    assert list(net1.layer) == list(net2.layer)
    assert list(model1.layer) == list(model2.layer)


@pytest.mark.parametrize("name", ["mnet25", "deconv0517"])
def test_third_party_caffe_imports(name, seed_caffe_dirs):
    model = open_model(seed_caffe_dirs[name])
    graph = model.graph()
    ops = [n.op for n in graph.nodes]
    assert ops.count("deconv") == 2 and ops.count("crop_like") == 2 and ops.count("softmax") == 3
    assert all(n.params["gamma"].shape == n.params["mean"].shape for n in graph.nodes if n.op == "batchnorm")
    assert len(graph.outputs) == 9 and all(o.startswith("face_rpn_") for o in graph.outputs)
    assert graph.node("crop0").attrs["offset"] == (0, 0)  # axis 1 with 3 offsets became a spatial crop


TINY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "bn1" batch_norm_param { eps: 0.001 } }
layer { name: "sc2" type: "Scale" bottom: "conv1" top: "sc2" scale_param { bias_term: false } }
layer { name: "sum" type: "Eltwise" bottom: "bn1" bottom: "sc2" bottom: "conv1" top: "sum" }
layer { name: "lrelu" type: "ReLU" bottom: "sum" top: "sum" relu_param { negative_slope: 0.1 } }
layer { name: "perm" type: "Permute" bottom: "bn1" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "flat" type: "Reshape" bottom: "perm" top: "flat" reshape_param { shape { dim: -1 dim: 4 } axis: 1 } }
"""


def test_import_keeps_caffe_semantics(tmp_path):
    """In-place layers, a standalone BatchNorm (scale factor != 1) and Scale, a 3-way Eltwise,
    Permute and an axis-1 Reshape: the imported graph, exported again, computes the same in OpenCV."""
    import cv2
    from retinabench.graph.caffe_import import net_outputs
    rng = np.random.default_rng(0)
    net = read_prototxt_text(TINY_NET)
    model = type(net)()
    model.CopyFrom(net)
    blobs = {"conv1": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)],
             "bn1": [rng.normal(size=4) * 2.0, rng.uniform(0.5, 2, size=4) * 2.0, np.array([2.0])],
             "sc2": [rng.normal(size=4)]}
    for layer in model.layer:
        for arr in blobs.get(layer.name, []):
            b = layer.blobs.add()
            b.shape.dim.extend(arr.shape)
            b.data.extend(np.asarray(arr, np.float32).ravel().tolist())
    (tmp_path / "tiny.prototxt").write_text(TINY_NET)
    (tmp_path / "tiny.caffemodel").write_bytes(model.SerializeToString())
    graph = load_caffe(tmp_path / "tiny.prototxt", tmp_path / "tiny.caffemodel")
    assert graph.outputs == ["sum", "flat"]
    assert graph.node("sum").op == "leaky_relu" and graph.node("conv1").op == "relu"
    write_caffe(graph, tmp_path / "back.prototxt", tmp_path / "back.caffemodel", (1, 3, 8, 10))
    x = rng.uniform(-1, 1, size=(1, 3, 8, 10)).astype(np.float32)
    results = []
    for stem in ("tiny", "back"):
        proto = tmp_path / f"{stem}.prototxt"
        layers = [layer for _, layer in net_outputs(read_prototxt(proto))]
        cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(tmp_path / f"{stem}.caffemodel"))
        cvnet.setInput(x)
        results.append(cvnet.forward(layers))
    chains = output_chain_lengths(graph, x.shape)  # layers are in graph.outputs order
    for name, a, b in zip(graph.outputs, *results):
        assert a.shape == b.shape
        assert_close(b, a, chains[name], f"exported again vs original: {name}")
    assert results[0][1].shape == (1, 80, 4)


def read_prototxt_text(text):
    from google.protobuf import text_format
    from retinabench.graph.caffe_proto import caffe_pb2
    return text_format.Parse(text, caffe_pb2.NetParameter())


# --- third-party Caffe models, both runtimes, reshaped -------------------------------------------

@pytest.mark.parametrize("size", FIT_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["mnet25", "deconv0517"])
@pytest.mark.parametrize("backend", ["opencv-caffe", pytest.param("caffe", marks=needs_pycaffe)])
def test_third_party_models_find_the_six_faces(backend, name, size, seed_caffe_dirs, fit_refs, pycaffe):
    model = open_model(seed_caffe_dirs[name])
    ref = fit_refs[size]
    run = run_on(backend, f"{name}-{size[0]}x{size[1]}", model, ref["blob"], "exact", pycaffe)
    w, h = size
    assert run["outputs"]["face_rpn_cls_prob_reshape_stride8"].shape == (1, 4, h // 8, w // 8)
    faces = decode(run["names"], run["outputs"], ref["metas"])
    agreement = compare_faces(ref["faces"], faces)
    print(f"\n{backend} {name} {w}x{h}: {agreement}")
    assert len(faces) == 6 and agreement.matched == 6
    assert run["settings"]["converted"] is False and run["settings"]["upsample"] == "as in model"


def test_opencv_and_pycaffe_agree_on_third_party_model(fit_refs, pycaffe_runs, seed_caffe_dirs):
    model = open_model(seed_caffe_dirs["deconv0517"])
    blob = fit_refs[(640, 448)]["blob"]
    ocv = opencv_run(model, blob)
    assert_all_close(ocv["outputs"], pycaffe_runs["deconv0517-640x448"]["outputs"],
                     output_chain_lengths(model.graph(), blob.shape), "opencv-caffe vs pycaffe")


# --- caching ------------------------------------------------------------------------------------

def test_conversion_cache_is_keyed_by_shape_and_policy(mnet25, seed_caffe_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("RETINABENCH_CACHE", str(tmp_path))
    a = cached_caffe_files(mnet25, (1, 3, 448, 640), "exact")
    assert cached_caffe_files(mnet25, (1, 3, 448, 640), "exact") == a  # reused
    b = cached_caffe_files(mnet25, (1, 3, 896, 1280), "exact")
    c = cached_caffe_files(mnet25, (1, 3, 448, 640), "bilinear")
    assert len({a.prototxt.parent, b.prototxt.parent, c.prototxt.parent}) == 3
    assert net_input(read_prototxt(a.prototxt)) == ("data", (1, 3, 448, 640))
    assert net_input(read_prototxt(b.prototxt)) == ("data", (1, 3, 896, 1280))
    assert a.converted and a.outputs == mnet25.graph().outputs
    seed = open_model(seed_caffe_dirs["mnet25"])
    s = cached_caffe_files(seed, (2, 3, 448, 640))
    assert not s.converted and s.caffemodel == seed.files[1]  # weights used in place, not copied
    assert net_input(read_prototxt(s.prototxt)) == ("data", (2, 3, 448, 640))
    assert set(s.outputs) == set(mnet25.graph().outputs)


def test_unknown_upsample_policy(mnet25, mxnet_native):
    with pytest.raises(BenchError, match="upsample: 'nearest' is not one of exact, bilinear"):
        opencv_run(mnet25, mxnet_native["blob"], upsample="nearest")


def test_bilinear_variant_selects_the_policy(mnet25):
    from backends.opencv_backend import OpenCVCaffeBackend
    for variant, policy in (("default", "exact"), ("bilinear", "bilinear")):
        with OpenCVCaffeBackend(variant=variant, threads=THREADS) as be:
            be.load(mnet25, 1, 224, 320)
            assert be.settings().to_json()["upsample"] == policy


def test_opencv_records_threads(mnet25):
    run = opencv_run(mnet25, np.zeros((1, 3, 224, 320), np.float32), threads=2)
    assert run["settings"]["opencv_threads"] == 2 and run["settings"]["threads"] == 2


# --- the convert command --------------------------------------------------------------------------

def _convert_args(*argv):
    from retinabench.cli import build_parser, convert
    return convert, build_parser().parse_args(["convert", *argv])


def test_convert_command_writes_caffe_files(mnet25_dir, tmp_path):
    import cv2
    cli, args = _convert_args(str(mnet25_dir), "--to", "caffe", "--out", str(tmp_path), "--size", "640x448",
                              "--upsample", "bilinear")
    assert args.func is cli.cmd_convert  # how bench.py dispatches
    assert cli.cmd_convert(args) == 0
    prototxt, caffemodel = tmp_path / "mnet.25.prototxt", tmp_path / "mnet.25.caffemodel"
    net = read_prototxt(prototxt)
    assert net_input(net) == ("data", (1, 3, 448, 640))
    deconvs = [l for l in net.layer if l.type == "Deconvolution"]
    assert len(deconvs) == 2 and all(list(l.convolution_param.kernel_size) == [4] for l in deconvs)
    crops = [l for l in net.layer if l.type == "Crop"]
    assert all(l.crop_param.axis == 2 and len(l.crop_param.offset) == 2 for l in crops)
    assert not cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel)).empty()


def test_convert_command_rejects_bad_size(mnet25_dir, tmp_path):
    cli, args = _convert_args(str(mnet25_dir), "--out", str(tmp_path), "--size", "640by448")
    with pytest.raises(BenchError, match="size '640by448'"):
        cli.cmd_convert(args)


def test_convert_to_caffe_function(mnet25, tmp_path):
    prototxt, caffemodel = convert_to_caffe(mnet25, tmp_path / "out", (1, 3, 320, 416))
    assert prototxt.is_file() and caffemodel.is_file()
    assert [l.type for l in read_prototxt(prototxt).layer].count("Deconvolution") == 2


# --- errors the user can cause ----------------------------------------------------------------------

def test_mismatched_pair_names_the_layer(bad_models, fit_refs):
    model = open_model(bad_models["mismatch"])
    with pytest.raises(ModelError, match=r"layer 'mobilenet0_conv0_fwd' \(Convolution\): blob 0 .* has shape "
                                         r"\(8, 3, 3, 3\), the prototxt needs \(16, 3, 3, 3\)"):
        model.graph()
    with pytest.raises(ModelError, match="mobilenet0_conv0_fwd"):
        opencv_run(model, fit_refs[(640, 448)]["blob"])


def test_missing_caffemodel_layer_names_the_layer(seed_caffe_dirs, tmp_path):
    src = seed_caffe_dirs["mnet25"]
    model = read_caffemodel(src / "mnet25.caffemodel")
    for layer in model.layer:
        if layer.name == "rf_c2_aggr":
            del layer.blobs[:]
    (tmp_path / "m.caffemodel").write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="layer 'rf_c2_aggr' .* has no layer of that name"):
        load_caffe(src / "mnet25.prototxt", tmp_path / "m.caffemodel")


def test_unknown_layer_type_names_the_layer(bad_models, fit_refs):
    model = open_model(bad_models["unknown"])
    with pytest.raises(ModelError, match="layer 'mobilenet0_relu0_fwd' has type 'FancyReLU'"):
        model.graph()
    with pytest.raises(ModelError, match="FancyReLU"):
        opencv_run(model, fit_refs[(640, 448)]["blob"])


@needs_pycaffe
def test_pycaffe_bad_models_fail_with_one_clear_error(pycaffe_runs):
    mismatch, unknown = pycaffe_runs["mismatch"], pycaffe_runs["unknown"]
    assert mismatch["error"] == "ModelError" and "mobilenet0_conv0_fwd" in mismatch["message"]
    assert unknown["error"] == "ModelError"
    assert "layer 'mobilenet0_relu0_fwd' has type 'FancyReLU'" in unknown["message"]
    assert "\n" not in mismatch["message"] + unknown["message"]


def test_missing_caffe_interpreter(monkeypatch):
    monkeypatch.setenv("RETINABENCH_CAFFE_PYTHON", "/nonexistent")
    assert CaffeBackend.interpreter() == "/nonexistent"
    ok, reason = CaffeBackend.available()
    assert not ok
    assert reason == ("Caffe interpreter /nonexistent not found; run scripts/setup_caffe.sh "
                      "or set RETINABENCH_CAFFE_PYTHON")
    with pytest.raises(BackendUnavailable, match="Caffe interpreter /nonexistent not found"):
        create_backend("caffe")


def test_interpreter_without_pycaffe(monkeypatch):
    monkeypatch.setenv("RETINABENCH_CAFFE_PYTHON", sys.executable)  # this env has no pycaffe
    ok, reason = CaffeBackend.available()
    assert not ok and reason.startswith("pycaffe does not import in ")


def test_default_interpreter_is_the_repo_venv(monkeypatch):
    monkeypatch.delenv("RETINABENCH_CAFFE_PYTHON", raising=False)
    assert CaffeBackend.interpreter() == str(ROOT / ".venv-caffe" / "bin" / "python")
