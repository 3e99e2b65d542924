"""TensorRT at run time: skipped, with the backend's own reason, where TensorRT or a GPU is missing.

Where it runs: the FP32 engine matches PyTorch f32 on the CPU (1e-3 on every output, the same six
faces of t1.jpg), FP16 finds the same faces (IoU >= 0.9), the engine cache serves the second load,
and the fp16-pipe variant (GPU pre/post) finds the same faces.
"""
from __future__ import annotations

import pytest

from backends.base import create_backend
from backends.tensorrt_backend import TensorRTBackend
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
    assert REASON.startswith("tensorrt is not installed") or REASON == "no CUDA device", REASON


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


def _run(mnet25, variant, reference, images=None, tmp_cache=None):
    with create_backend("tensorrt", variant=variant, device="cuda", options={"max_batch": 4}) as be:
        b = reference["blob"]
        be.load(mnet25, 2, b.shape[2], b.shape[3])
        pre = be.device_preprocess(FAMILY, "fit", SIZE)
        post = be.device_postprocess(FAMILY, be.output_names, 0.8) or FAMILY.make_decoder(be.output_names, 0.8)
        blob, metas = pre(images) if pre else (b, reference["metas"])
        outs = be.infer(blob)
        return be.host_outputs(outs), post(outs, metas)[0], be.settings().to_json()


@needs_tensorrt
def test_fp32_matches_torch(mnet25, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("RETINABENCH_CACHE", str(tmp_path))
    outs, faces, settings = _run(mnet25, "default", reference)
    bad = {d.output: d.max_abs for d in output_diffs(reference["outputs"], outs) if d.max_abs > 1e-3}
    assert not bad
    agree = compare_faces(reference["faces"], faces)
    assert (agree.matched, agree.missed, agree.extra) == (6, 0, 0)
    assert settings["engine_cached"] is False
    _, _, again = _run(mnet25, "default", reference)
    assert again["engine_cached"] is True


@needs_tensorrt
@pytest.mark.parametrize("variant", ["fp16", "fp16-pipe"])
def test_fp16_finds_the_same_faces(mnet25, reference, t1_image, variant):
    _, faces, settings = _run(mnet25, variant, reference, images=[t1_image, t1_image])
    agree = compare_faces(reference["faces"], faces)
    assert (agree.matched, agree.missed, agree.extra) == (6, 0, 0) and agree.min_iou >= 0.9, agree
    assert settings["precision"] == "fp16"
