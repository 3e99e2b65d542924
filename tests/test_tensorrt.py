"""TensorRT at run time: skipped, with the backend's own reason, where TensorRT or a GPU is missing.

Where it runs: the FP32 engine matches PyTorch f32 on the CPU (1e-3 on every output, the same six
faces of t1.jpg), FP16 finds the same faces (IoU >= 0.9), the engine cache serves the second load,
repeated `infer` calls give the same outputs for the same input and one `gpu_time_ms` entry each,
the fp16-pipe variant (GPU pre/post, built before the loop) finds the same faces, the default ONNX
model (biubug6) matches ONNX Runtime, a fixed-batch ONNX gets a fixed profile, `opt_batch` sets the
profile's opt, and `cuda:N` runs everything on GPU N. The parts that need no TensorRT are in
tests/test_tensorrt_parts.py (they run in CI).
"""
from __future__ import annotations

import numpy as np
import pytest

from backends.base import create_backend
from backends.tensorrt_backend import TensorRTBackend
from retinabench.errors import BackendUnavailable, ModelError
from retinabench.model.device.pipeline import NETWORK_TIMER, build_device_stages
from retinabench.model.family import get_family
from retinabench.model.preprocess import Preprocessor
from retinabench.report.accuracy import compare_faces, output_diffs
from tolerance import THREADS

FAMILY = get_family("insightface")
SIZE = (640, 448)
OK, REASON = TensorRTBackend.available()
needs_tensorrt = pytest.mark.skipif(not OK, reason=f"tensorrt backend unavailable: {REASON}")


def test_unavailable_says_why():
    if OK:
        pytest.skip("tensorrt is available here")
    assert (REASON.startswith("tensorrt is not installed") or REASON == "no CUDA device"
            or " is not supported: this backend is written for " in REASON), REASON


@pytest.fixture(scope="module")
def reference(mnet25, t1_image):
    pre = Preprocessor(FAMILY.normalization, "fit", SIZE)
    blob, metas = pre([t1_image, t1_image])
    blob = blob.copy()
    with create_backend("torch", threads=THREADS) as be:
        be.load(mnet25, 2, blob.shape[2], blob.shape[3])
        outs = be.infer(blob)
        names = list(be.output_names)
    faces = FAMILY.make_decoder(names, 0.8)(outs, metas)[0]
    return {"blob": blob, "metas": metas, "outputs": outs, "faces": faces}


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RETINABENCH_CACHE", str(tmp_path_factory.getbasetemp() / "trt-cache"))


def _run(mnet25, variant, reference, images=None, device="cuda", options=None):
    with create_backend("tensorrt", variant=variant, device=device, max_batch=4, options=options or {}) as be:
        b = reference["blob"]
        be.load(mnet25, 2, b.shape[2], b.shape[3])
        pre = be.device_preprocess(FAMILY, "fit", SIZE)
        post = be.device_postprocess(FAMILY, be.output_names, 0.8) or FAMILY.make_decoder(be.output_names, 0.8)
        if pre:
            build_device_stages(pre, be.infer, post, images)
        blob, metas = pre(images) if pre else (b, reference["metas"])
        outs = be.infer(blob)
        return be.host_outputs(outs), post(outs, metas)[0], be.settings().to_json(), be.metrics()


@needs_tensorrt
def test_fp32_matches_torch(mnet25, reference):
    outs, faces, settings, _ = _run(mnet25, "default", reference)
    bad = {d.output: d.max_abs for d in output_diffs(reference["outputs"], outs) if d.max_abs > 1e-3}
    assert not bad
    agree = compare_faces(reference["faces"], faces)
    assert (agree.matched, agree.missed, agree.extra) == (6, 0, 0)
    _, _, again, _ = _run(mnet25, "default", reference)
    assert (settings["engine_cached"], again["engine_cached"]) == (False, True)  # the session's own cache
    assert settings["profile"] == {"min": [1, 3, 448, 640], "opt": [2, 3, 448, 640], "max": [4, 3, 448, 640],
                                   "fixed_batch": False}
    assert settings["engine_profile"] == {k: settings["profile"][k] for k in ("min", "opt", "max")}
    assert settings["tf32"] is False and settings["precision"] == "f32"


@needs_tensorrt
@pytest.mark.parametrize("variant", ["fp16", "fp16-pipe"])
def test_fp16_finds_the_same_faces(mnet25, reference, t1_image, variant):
    _, faces, settings, metrics = _run(mnet25, variant, reference, images=[t1_image, t1_image])
    agree = compare_faces(reference["faces"], faces)
    assert (agree.matched, agree.missed, agree.extra) == (6, 0, 0) and agree.min_iou >= 0.9, agree
    assert settings["precision"] == "f16"
    assert settings["device_stages"] is (variant == "fp16-pipe")
    if variant == "fp16-pipe":  # built before the loop: one timed call each, the build pass untimed
        assert settings["compile_stages"] is False and settings["postprocess_build_s"] > 0
        assert len(metrics["gpu_time_ms"]) == len(metrics["gpu_preprocess_ms"]) == len(metrics["gpu_postprocess_ms"]) == 1


@needs_tensorrt
def test_repeated_infer_calls_and_gpu_time(mnet25, reference):
    a = reference["blob"]
    b = np.ascontiguousarray(a[:, :, ::-1, :])
    with create_backend("tensorrt", variant="default", device="cuda", max_batch=4) as be:
        be.load(mnet25, 2, a.shape[2], a.shape[3])
        first = {k: v.copy() for k, v in be.infer(a).items()}   # host buffers are reused: copy
        other = {k: v.copy() for k, v in be.infer(b).items()}
        again = be.infer(a)
        for k in first:
            np.testing.assert_array_equal(first[k], again[k])
        assert any(not np.array_equal(first[k], other[k]) for k in first)
        m = be.metrics()
    assert len(m["gpu_time_ms"]) == 3 and all(t > 0 for t in m["gpu_time_ms"])
    assert m["gpu_times_include_warmup"] is True and m["gpu_timer_coverage"] == {"gpu_time_ms": NETWORK_TIMER}


@needs_tensorrt
def test_opt_batch_sets_the_profile(mnet25, reference):
    _, _, settings, _ = _run(mnet25, "default", reference, options={"opt_batch": 4})
    assert settings["opt_batch"] == 4 and settings["profile"]["opt"] == [4, 3, 448, 640]


@needs_tensorrt
def test_the_default_onnx_model_matches_onnxruntime(t1_image):
    from retinabench.defaults import default_model_path
    from retinabench.model.source import open_model
    model = open_model(default_model_path())
    family = get_family(model.family)
    blob, _ = Preprocessor(family.normalization, "fit", (1280, 896))([t1_image])
    blob = blob.copy()
    with create_backend("onnxruntime") as ref_be:
        ref_be.load(model, 1, blob.shape[2], blob.shape[3])
        ref = ref_be.infer(blob)
    with create_backend("tensorrt", variant="default", device="cuda") as be:
        be.load(model, 1, blob.shape[2], blob.shape[3])
        outs = be.infer(blob)
        assert be.settings().extras["profile"]["opt"] == [1, 3, 896, 1280]
    assert set(outs) == set(ref)
    for k in ref:
        assert np.abs(outs[k] - ref[k]).max() <= 1e-3, k
    with create_backend("tensorrt", variant="fp16-pipe", device="cuda") as be:
        with pytest.raises(BackendUnavailable, match="biubug6 family has no device decode"):
            be.load(model, 1, blob.shape[2], blob.shape[3])


@needs_tensorrt
def test_a_fixed_batch_onnx_gets_a_fixed_profile(mnet25, reference, tmp_path):
    from retinabench.graph.onnx_export import export_onnx
    from retinabench.model.source import open_model
    b = reference["blob"]
    export_onnx(mnet25.graph(), tmp_path / "static.onnx", (2, 3, b.shape[2], b.shape[3]))
    model = open_model(tmp_path, "insightface")
    with create_backend("tensorrt", variant="default", device="cuda", max_batch=8) as be:
        be.load(model, 2, b.shape[2], b.shape[3])
        outs = be.infer(b)
        assert be.settings().extras["profile"]["fixed_batch"] is True
    bad = {d.output: d.max_abs for d in output_diffs(reference["outputs"], outs) if d.max_abs > 1e-3}
    assert not bad
    with create_backend("tensorrt", variant="default", device="cuda", max_batch=8) as be:
        with pytest.raises(ModelError, match="fixed batch of 2 and this row's batch is 4"):
            be.load(model, 4, b.shape[2], b.shape[3])


@needs_tensorrt
def test_cuda_n_runs_on_gpu_n(mnet25, reference):
    import torch
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    outs0, _, s0, _ = _run(mnet25, "default", reference, device="cuda:0")
    with create_backend("tensorrt", variant="default", device="cuda:1", max_batch=4) as be:
        b = reference["blob"]
        be.load(mnet25, 2, b.shape[2], b.shape[3])
        assert all(t.device.index == 1 for t in be._buffers.values())
        assert be._stream.device.index == 1
        outs1 = be.infer(b)
        s1 = be.settings().to_json()
    assert (s0["cuda_index"], s1["cuda_index"]) == (0, 1)
    for k in outs0:
        np.testing.assert_allclose(outs1[k], outs0[k], rtol=0, atol=1e-4)
