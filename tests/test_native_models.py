"""A model our graph cannot express still runs on the runtimes that load its format (pass-through).

The model: the default ONNX (biubug6 family) with an `Identity -> Cast(to=float)` chain between
its input and the rest, made here. The Cast changes nothing (float to float), so every native
runtime gives the original's outputs, while our importer has no converter for a Cast of an image
tensor: rows that need the graph are `unavailable: conversion needs Cast (node cast_0)`.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from retinabench.config import Row, Scenario
from retinabench.errors import BackendUnavailable, ModelError
from retinabench.graph.onnx_import import ConversionError, load_onnx
from retinabench.harness.process import interpreter_for, run_worker
from retinabench.harness.runner import make_job
from retinabench.model.detections import Faces
from retinabench.model.source import open_model, recognise_family
from retinabench.records import BackendSpec, InputSpec, RowId
from retinabench.store import WorkDir

ROOT = Path(__file__).resolve().parents[1]
REASON = "conversion needs Cast (node cast_0)"
SIZE = (640, 448)


def with_cast(src: Path, dst: Path, rename_outputs: bool = False, cast: bool = True) -> Path:
    """`src` with input -> Identity (id_0) -> Cast to float (cast_0) -> the rest of the graph."""
    m = onnx.load(str(src))
    g = m.graph
    inp = g.input[0].name
    if cast:
        for n in g.node:
            for i, x in enumerate(n.input):
                if x == inp:
                    n.input[i] = "input_cast"
        g.node.insert(0, helper.make_node("Identity", [inp], ["input_id"], name="id_0"))
        g.node.insert(1, helper.make_node("Cast", ["input_id"], ["input_cast"], name="cast_0", to=TensorProto.FLOAT))
    if rename_outputs:  # names that say nothing, shapes left symbolic: the family cannot be told
        names = {o.name: f"out{i}" for i, o in enumerate(g.output)}
        for n in g.node:
            for i, x in enumerate(n.output):
                if x in names:
                    n.output[i] = names[x]
        for o in g.output:
            o.name = names[o.name]
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


@pytest.fixture(scope="module")
def default_onnx():
    from retinabench.defaults import default_model_path
    return default_model_path()


@pytest.fixture(scope="module")
def cast_model(default_onnx, tmp_path_factory):
    return with_cast(default_onnx, tmp_path_factory.mktemp("cast") / "cast.onnx")


def run_one(name, model, image, tmp_path, family=None):
    spec = BackendSpec(name, threads=2)
    size = InputSpec("fit", *SIZE)
    scenario = Scenario("t", str(model), (str(image),), size, (spec,), loops=1, warmup=0, family=family)
    try:
        python = interpreter_for(name)
    except Exception as e:  # the Caffe interpreter is made by setup.sh
        pytest.skip(f"{name}: {e}")
    work = WorkDir(tmp_path / name)
    record = run_worker(make_job(scenario, Row(RowId(name, input=size.label), spec), model, [image]), work, python)
    outputs = work.read_outputs() if record.status == "passed" else {}
    return record, outputs


# ---- the importer and the model source

def test_the_cast_really_is_outside_the_ir(cast_model):
    with pytest.raises(ConversionError) as e:
        load_onnx(cast_model)
    assert str(e.value) == REASON
    assert (e.value.op, e.value.node) == ("Cast", "cast_0")
    # a model error, and the reason a row that needs the graph is unavailable
    assert isinstance(e.value, ModelError) and isinstance(e.value, BackendUnavailable)


def test_check_accepts_it_and_knows_its_family(cast_model):
    model = open_model(cast_model).check()
    assert model.family == "biubug6"  # from the output names loc / conf / landmarks
    assert model.conversion_failure() == REASON
    with pytest.raises(ConversionError, match=r"^conversion needs Cast \(node cast_0\)$"):
        model.graph()


def test_damage_is_still_refused(cast_model, tmp_path):
    data = cast_model.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        open_model(cut).check()
    # A file that parses but lost a weight: the walk stops (as it would on a gap in the IR), and the
    # integrity check says it is damage, not a model the runtimes could run.
    m = onnx.load(str(cast_model))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    weights = [t for t in m.graph.initializer if t.name == conv.input[1]]
    m.graph.initializer.remove(weights[0])
    holed = tmp_path / "holed.onnx"
    onnx.save(m, str(holed))
    with pytest.raises(ModelError, match="not a valid ONNX model") as e:
        open_model(holed, "biubug6").check()
    assert not isinstance(e.value, ConversionError) and "\n" not in str(e.value)


@pytest.mark.parametrize("node, reason", [
    (helper.make_node("Sigmoid", ["c"], ["y"], name="gate"), "conversion needs Sigmoid (node gate)"),
    (helper.make_node("Resize", ["c", "", "scales"], ["y"], mode="linear", name="bilinear"),
     "conversion needs Resize (node bilinear): Resize mode='linear' is not supported (nearest only)"),
])
def test_conversion_errors_name_op_and_node(tmp_path, node, reason):
    inits = [onnx.numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"),
             onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="c"), node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(ConversionError) as e:
        load_onnx(path)
    assert str(e.value) == reason


# ---- family recognition from the file's inputs and outputs

IMAGE = [("input", (None, 3, None, None))]
INSIGHTFACE = [(f"face_rpn_{k}_stride{s}", (1, c, 28, 40)) for s in (32, 16, 8)
               for k, c in (("cls_prob_reshape", 4), ("bbox_pred", 8), ("landmark_pred", 20))]


@pytest.mark.parametrize("inputs, outputs, family", [
    (IMAGE, INSIGHTFACE, "insightface"),
    (IMAGE, [(n, None) for n, _ in INSIGHTFACE], "insightface"),                 # names alone
    (IMAGE, [("loc", None), ("conf", None), ("landmarks", None)], "biubug6"),    # names alone
    (IMAGE, [("a", (1, 16800, 10)), ("b", (1, 16800, 4)), ("c", (1, 16800, 2))], "biubug6"),  # shapes alone
    (IMAGE, [("a", None), ("b", None), ("c", None)], None),                       # neither
    (IMAGE, [("loc", (1, None, 4)), ("conf", (1, None, 5)), ("landmarks", None)], None),  # conf is not 2 wide
    (IMAGE, [(n, (1, 6 if "cls" in n else s[1], 28, 40)) for n, s in INSIGHTFACE], None),  # 3 anchors, 8 bbox
    ([("input", (1, 1, 64, 64))], [("loc", None), ("conf", None), ("landmarks", None)], None),  # 1 channel
    (IMAGE + [("second", None)], [("loc", None), ("conf", None), ("landmarks", None)], None),
])
def test_recognise_family(inputs, outputs, family):
    got, why = recognise_family(inputs, outputs)
    assert got == family
    assert bool(why) == (family is None) and "\n" not in why


def test_insightface_onnx_is_recognised_not_taken_for_biubug6(mnet25, tmp_path):
    from retinabench.graph.onnx_export import export_onnx
    path = export_onnx(mnet25.graph(), tmp_path / "mnet25.onnx", (1, 3, 224, 320))
    assert open_model(path).family == "insightface"
    native = with_cast(path, tmp_path / "mnet25-cast.onnx")
    model = open_model(native).check()
    assert model.family == "insightface" and model.conversion_failure() == REASON


def test_symbolic_shapes_and_plain_names_are_read_from_the_graph_where_it_converts(default_onnx, tmp_path):
    anon = with_cast(default_onnx, tmp_path / "anon.onnx", rename_outputs=True, cast=False)
    assert [n for n, _ in open_model(anon, "biubug6").io()[1]] == ["out0", "out1", "out2"]
    model = open_model(anon)  # out0..2, shapes [?, ?, ?] in the file: [1, N, 4|2|10] in our graph
    assert model.family == "biubug6" and model.graph().family == "biubug6"


def test_an_unknown_family_is_one_line_before_any_row_unless_the_scenario_names_it(default_onnx, t1_path, tmp_path):
    anon = with_cast(default_onnx, tmp_path / "anon.onnx", rename_outputs=True)
    with pytest.raises(ModelError, match=r"cannot tell its family .*family: insightface \| biubug6"):
        open_model(anon)
    cfg = tmp_path / "s.yaml"
    body = {"name": "anon", "model": str(anon), "images": [str(t1_path)], "loops": 1, "warmup": 0,
            "input": {"mode": "fit", "width": SIZE[0], "height": SIZE[1]}, "backends": ["onnxruntime"]}
    cfg.write_text(yaml.safe_dump(body))
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "cannot tell its family" in errors[0] and str(anon) in errors[0], out.stderr
    assert not (tmp_path / "r").exists()  # no row ran, no run folder
    record, _ = run_one("onnxruntime", anon, t1_path, tmp_path, family="biubug6")
    assert record.status == "passed" and len(record.faces[0]) == 6


# ---- rows, through the real worker

@pytest.fixture(scope="module")
def reference(default_onnx, t1_path, tmp_path_factory):
    """ONNX Runtime on the original model: what every native row of the Cast model must give."""
    record, outputs = run_one("onnxruntime", default_onnx, t1_path, tmp_path_factory.mktemp("ref"))
    assert record.status == "passed", record.reason
    return Faces.from_json({"faces": record.faces[0]}), outputs


@pytest.mark.parametrize("name, tol", [("onnxruntime", 0.0), ("openvino", 1e-4)])
def test_native_rows_run_it(name, tol, cast_model, t1_path, reference, tmp_path):
    from retinabench.report.accuracy import compare_faces
    record, outputs = run_one(name, cast_model, t1_path, tmp_path)
    assert record.status == "passed", record.reason
    faces = Faces.from_json({"faces": record.faces[0]})
    ref_faces, ref_out = reference
    assert len(faces) == 6 and compare_faces(ref_faces, faces).matched == 6
    assert set(outputs) == set(ref_out)
    for k in ref_out:
        assert np.abs(outputs[k] - ref_out[k]).max() <= tol, k


@pytest.mark.parametrize("name", ["caffe", "opencv-caffe", "mxnet", "torch"])
def test_rows_that_need_the_graph_are_unavailable_with_the_reason(name, cast_model, t1_path, tmp_path):
    record, _ = run_one(name, cast_model, t1_path, tmp_path)
    assert (record.status, record.reason) == ("unavailable", REASON)


def test_opencv_onnx_says_why_it_cannot_fall_back(cast_model, t1_path, tmp_path):
    # OpenCV 4.10 cannot import the original's dynamic Shape subgraphs; its fallback, our static
    # re-export, needs the graph. (Were OpenCV to import it one day, the row would simply pass.)
    record, _ = run_one("opencv-onnx", cast_model, t1_path, tmp_path)
    if record.status == "passed":
        return
    assert record.status == "unavailable" and record.reason.endswith(REASON) and "\n" not in record.reason
    assert "OpenCV" in record.reason and "cast.onnx" in record.reason


def test_empty_row_uses_the_family_layout(cast_model, t1_path, reference, tmp_path):
    record, outputs = run_one("empty", cast_model, t1_path, tmp_path)
    assert record.status == "passed", record.reason
    assert record.faces[0] == [] and record.settings.extras["outputs_from"] == "family layout"
    _, ref_out = reference
    assert {k: v.shape for k, v in outputs.items()} == {k: v.shape for k, v in ref_out.items()}
    assert np.all(outputs["conf"][..., 0] == 1) and np.all(outputs["conf"][..., 1] == 0)


def test_empty_insightface_layout_matches_the_network(mnet25, tmp_path):
    """The family layout has the shapes the network gives (here: ONNX Runtime on our export)."""
    import onnxruntime as ort
    from backends.base import create_backend
    from retinabench.graph.onnx_export import export_onnx
    h, w = 224, 320
    path = with_cast(export_onnx(mnet25.graph(), tmp_path / "m.onnx", (1, 3, h, w)), tmp_path / "m-cast.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    real = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": np.zeros((1, 3, h, w), np.float32)})))
    with create_backend("empty") as be:
        be.load(open_model(path), 1, h, w)
        outs = be.infer(None)
    assert be.output_names == [o.name for o in sess.get_outputs()]
    assert {k: v.shape for k, v in outs.items()} == {k: v.shape for k, v in real.items()}
    from retinabench.model.family import get_family
    from retinabench.model.preprocess import ImageMeta
    decoder = get_family("insightface").make_decoder(be.output_names, 0.0001)
    assert len(decoder(outs, [ImageMeta(1.0, w, h, w, h)])[0]) == 0


def test_cli_run_native_rows_pass_conversion_rows_unavailable(cast_model, t1_path, tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "cast", "model": str(cast_model), "images": [str(t1_path)], "loops": 2, "warmup": 0,
        "input": {"mode": "fit", "width": SIZE[0], "height": SIZE[1]}, "threads": 2,
        "backends": ["onnxruntime", "openvino", "caffe"]}))
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    done = [ln for ln in out.stderr.splitlines() if ln.startswith("[") and ("passed" in ln or "unavailable" in ln)]
    assert any(ln.startswith("[1/3] onnxruntime") and ": passed" in ln for ln in done), done
    assert any(ln.startswith("[2/3] openvino") and ": passed" in ln for ln in done), done
    caffe = [ln for ln in done if ln.startswith("[3/3] caffe")]
    assert len(caffe) == 1 and (caffe[0].endswith(f"unavailable: {REASON}") or "Caffe interpreter" in caffe[0]), caffe
