"""The INT8 rows: onnxruntime static QDQ and OpenVINO through NNCF, calibrated on dlib's training split.

Each row loads, runs on t1.jpg and finds the six faces its f32 row finds (matched one to one at
IoU >= 0.5); its settings record the method and the calibration images' sha256 (never a test-split
image); a second load reuses the quantised model (`cached: true`); a calibration folder that does
not exist is a one-line error. Small input (640x448, fit) to keep the quantisation fast; the
quantised models go to a cache folder of this module's own, so the first load really quantises.
Skips, with the reason, where dlib's faces cannot be fetched (apt cannot reach Debian's sources)
or NNCF does not import.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest

from backends.base import create_backend, import_failure
from backends.calibration import (DEFAULT_CALIBRATION, calibration_hashes, calibration_images, resolve_calibration,
                                  row_calibration)
from retinabench.errors import BackendUnavailable, BenchError
from retinabench.model.family import get_family
from retinabench.model.images import load_image
from retinabench.model.preprocess import Preprocessor
from retinabench.report.accuracy import compare_faces
from tolerance import THREADS

SIZE = (640, 448)          # fit, width x height
THRESHOLD = 0.8            # the speed tables' detection threshold
ROWS = [("onnxruntime", "int8"), ("openvino", "int8")]


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """Quantised models (and exports) in a fresh cache: the first load quantises, the second reuses."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETINABENCH_CACHE", str(tmp_path_factory.mktemp("converted")))
        yield


@pytest.fixture(scope="module")
def calibration():
    """dlib's training split (fetched if needed), or a skip saying why it cannot be had."""
    try:
        return resolve_calibration(None)
    except BackendUnavailable as e:
        pytest.skip(f"dlib's faces cannot be fetched here: {e}")


def _nncf_missing() -> str:
    """'' where a usable nncf is installed (>= 2.17: older ones need openvino.runtime), else why not."""
    from backends.openvino_backend import _version_tuple, nncf_version
    version = nncf_version()
    if version is None:
        return "nncf is not installed (no release installs beside numpy==1.23.5: backends/openvino_backend.py)"
    return "" if _version_tuple(version) >= (2, 17) else f"nncf {version} cannot load openvino 2026 models"


def _need(name: str) -> None:
    why = import_failure(name) or (import_failure("onnxruntime.quantization") if name == "onnxruntime"
                                   else _nncf_missing())
    if why:
        pytest.skip(f"{name} int8: {why}")


@pytest.fixture(scope="module")
def models(request) -> Dict[str, Any]:
    """The default model (biubug6 family) and, where ../shared exists, insightface's mnet.25."""
    from retinabench.defaults import default_model_path
    from retinabench.model.source import open_model
    out = {"default": open_model(default_model_path())}
    try:
        out["mnet25"] = request.getfixturevalue("mnet25")
    except pytest.skip.Exception:
        pass
    return out


@pytest.fixture(scope="module")
def t1(request):
    from retinabench.defaults import default_image_path
    return load_image(default_image_path())


def _run(model, name: str, variant: str, image, options: Optional[dict] = None) -> Tuple[Any, Dict[str, Any], float]:
    """(faces at THRESHOLD, settings, load seconds) of one row on one image at SIZE."""
    family = get_family(model.family)
    blob, metas = Preprocessor(family.normalization, "fit", SIZE)([image])
    with create_backend(name, variant=variant, threads=THREADS, options=options) as be:
        t = time.perf_counter()
        be.load(model, 1, SIZE[1], SIZE[0])
        load_s = time.perf_counter() - t
        faces = family.make_decoder(be.output_names, THRESHOLD)(be.infer(blob), metas)[0]
        return faces, be.settings().to_json(), load_s


@pytest.fixture(scope="module")
def runs(models, t1, calibration):
    """(model key, backend, variant) -> (faces, settings, load s), run once each on first use."""
    cache: Dict[tuple, tuple] = {}

    def get(key: str, name: str, variant: str):
        if key not in models:
            pytest.skip("insightface's mnet.25 is in ../shared, not found: set RETINABENCH_SHARED")
        _need(name)
        if (key, name, variant) not in cache:
            cache[(key, name, variant)] = _run(models[key], name, variant, t1)
        return cache[(key, name, variant)]
    return get


@pytest.mark.parametrize("key", ["default", "mnet25"])
@pytest.mark.parametrize("name,variant", ROWS)
def test_int8_finds_the_six_faces_of_its_f32_row(runs, key, name, variant):
    f32, _, _ = runs(key, name, "default")
    int8, settings, load_s = runs(key, name, variant)
    assert len(f32) == 6
    agree = compare_faces(f32, int8, iou_threshold=0.5)
    print(f"\n{key} {name}/{variant}: load {load_s:.2f} s, {agree}")
    assert (agree.matched, agree.missed, agree.extra) == (6, 0, 0), agree
    assert settings["precision"] == "int8" and settings["variant"] == "int8"


@pytest.mark.parametrize("name,variant", ROWS)
def test_settings_record_method_and_calibration(runs, calibration, name, variant):
    _, s, _ = runs("default", name, variant)
    assert s["calibration"] == DEFAULT_CALIBRATION
    assert s["calibration_sha256"] == list(calibration.sha256) and len(s["calibration_sha256"]) == 4
    assert s["calibration_images"] == [str(p) for p in calibration.paths]
    assert s["calibration_preprocess"]["mode"] == "fit"
    assert (s["calibration_preprocess"]["width"], s["calibration_preprocess"]["height"]) == SIZE
    assert s["quantizer"] == {"onnxruntime": "onnxruntime.quantization.quantize_static",
                              "openvino": "nncf.quantize"}[name]
    if name == "onnxruntime":
        assert (s["quant_format"], s["activation_type"], s["weight_type"]) == ("QDQ", "QUInt8", "QInt8")
        assert s["per_channel"] is True and s["calibrate_method"] == "MinMax"
    else:
        assert s["preset"] == "PERFORMANCE" and s["nncf"] and s["float_precision"] == "f32"
    assert Path(s["quantized_model"]).is_file()
    # never the evaluation split
    test_split = resolve_calibration("dlib:test")
    assert not set(s["calibration_sha256"]) & set(test_split.sha256)


@pytest.mark.parametrize("name,variant", ROWS)
def test_second_load_hits_the_cache(runs, models, t1, name, variant):
    _, first, _ = runs("default", name, variant)
    assert first["cached"] is False and first["quantize_s"] > 0
    faces, again, load_s = _run(models["default"], name, variant, t1)
    assert again["cached"] is True and "quantize_s" not in again
    assert again["quantized_model"] == first["quantized_model"]
    print(f"\n{name}/{variant}: first load quantised in {first['quantize_s']:.2f} s; cached load {load_s:.2f} s")


def test_a_folder_of_the_same_images_reuses_the_quantised_model(runs, models, t1, calibration, tmp_path):
    """The cache is keyed by the images' bytes, not by where they came from; the record names the folder."""
    _need("onnxruntime")
    _, first, _ = runs("default", "onnxruntime", "int8")
    for p in calibration.paths:
        shutil.copy(p, tmp_path / p.name)
    _, s, _ = _run(models["default"], "onnxruntime", "int8", t1, options={"calibration": str(tmp_path)})
    assert s["cached"] is True and s["quantized_model"] == first["quantized_model"]
    assert s["calibration"] == str(tmp_path)
    assert s["calibration_images"] == [str(tmp_path / p.name) for p in calibration.paths]  # by sha256


@pytest.mark.parametrize("name,variant", ROWS)
def test_a_missing_calibration_folder_is_one_line(models, tmp_path, name, variant):
    _need(name)
    missing = tmp_path / "no-such-folder"
    with create_backend(name, variant=variant, threads=THREADS, options={"calibration": str(missing)}) as be:
        with pytest.raises(BenchError) as e:
            be.load(models["default"], 1, SIZE[1], SIZE[0])
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and "does not exist" in msg, msg
    assert not isinstance(e.value, BackendUnavailable)


def test_an_empty_calibration_folder_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(BenchError, match="holds no images") as e:
        calibration_images({"calibration": str(tmp_path)})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_calibration_on_a_row_that_does_not_calibrate_is_refused(name):
    _need(name)
    with pytest.raises(BenchError, match="int8 variant only"):
        create_backend(name, variant="default", options={"calibration": "dlib:train"})


def test_row_calibration_for_the_accuracy_command(calibration):
    """What the accuracy command asks to refuse a calibration set that overlaps its evaluation split."""
    assert row_calibration("onnxruntime", "default") is None
    assert row_calibration("openvino", "bf16") is None
    cal = row_calibration("openvino", "int8", {})
    assert cal is not None and cal.sha256 == calibration.sha256
    assert calibration_images(None) == list(calibration.paths)
    assert list(calibration_hashes({"calibration": "dlib"}).values()) == list(calibration.sha256)  # dlib: train


def test_openvino_int8_without_nncf_is_unavailable_with_the_reason(models):
    """Never faked: without a usable NNCF the row is `unavailable`, its reason one line."""
    if import_failure("openvino"):
        pytest.skip(import_failure("openvino"))
    if not _nncf_missing():
        pytest.skip("a usable nncf is installed here: the openvino int8 row runs (tests above)")
    with create_backend("openvino", variant="int8", threads=THREADS) as be:
        with pytest.raises(BackendUnavailable) as e:
            be.load(models["default"], 1, SIZE[1], SIZE[0])
    assert "NNCF" in str(e.value) or "nncf" in str(e.value)
    assert "\n" not in str(e.value)
    print(f"\nopenvino/int8: unavailable: {e.value}")


def test_loads_at_once_quantise_once(tmp_path, monkeypatch):
    """Rows load in several processes at once: the build runs under a lock, the others wait and reuse it."""
    import threading
    from backends.calibration import cached_quantized
    monkeypatch.setenv("RETINABENCH_CACHE", str(tmp_path))
    builds, results = [], []

    def build(d: Path) -> None:
        builds.append(1)
        time.sleep(0.3)
        (d / "model.onnx").write_bytes(b"quantised")

    def load() -> None:
        results.append(cached_quantized("int8-test", {"source": "x", "shape": [1, 3, 448, 640]}, build))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert sorted(r[1] for r in results) == [False, True, True, True]
    assert len({r[0] for r in results}) == 1 and (results[0][0] / "model.onnx").read_bytes() == b"quantised"
    waited = [r[2]["cache_wait_s"] for r in results if r[1]]
    assert min(waited) >= 0.2, waited
