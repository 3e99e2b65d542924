"""`bench.py accuracy`: every row over annotated faces in its own worker, scores rebuilt from what it wrote.

Real runtimes and the real dlib faces set (fetched from Debian's source package; skipped with the reason
where apt cannot reach it). The scores in accuracy_ap.csv must follow from the detections the run wrote and
the dataset's ground truth alone, since others recompute them with their own implementation.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from retinabench.report.dataset_accuracy import drops


def _bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dlib_test():
    from retinabench.datasets import open_dataset
    from retinabench.datasets.fetch import SourceUnreachable, default_cache_dir
    try:
        return open_dataset("dlib:test", default_cache_dir())
    except SourceUnreachable as e:
        pytest.skip(f"the dlib faces set cannot be fetched here: {e}")


@pytest.fixture(scope="module")
def accuracy_run(tmp_path_factory, dlib_test):
    out_dir = tmp_path_factory.mktemp("acc")
    res = _bench("accuracy", "--config", "configs/smoke.yaml", "--backends", "onnxruntime,opencv-onnx,onnxruntime:int8",
                 "--dataset", "dlib:test", "--dataset", "dlib:test@0.35", "--out", str(out_dir),
                 "--max-ap-drop", "100")
    assert res.returncode == 0, res.stderr
    (run,) = out_dir.iterdir()
    return run, res


def test_every_row_writes_every_face_per_image_and_dataset(accuracy_run, dlib_test):
    run, res = accuracy_run
    meta = json.loads((run / "run.json").read_text())
    assert meta["kind"] == "accuracy" and meta["status"] == "complete"
    assert [d["name"] for d in meta["datasets"]] == ["dlib:test", "dlib:test@0.35"]
    assert meta["score_threshold"] == 0.02 and meta["speed_threshold"] == 0.8
    for folder in ("dlib-test", "dlib-test-0.35"):
        files = sorted((run / "detections" / folder).glob("*-cpu-*.json"))
        files = [f for f in files if not f.name.endswith(".landmarks.json")]
        assert len(files) == 3
        for f in files:
            det = json.loads(f.read_text())
            assert len(det) == 5 and all(len(box) == 5 for boxes in det.values() for box in boxes)
    assert "accuracy gate: no row loses more than 100 AP50 points" in res.stdout


def test_the_scores_follow_from_the_detections_alone(accuracy_run, dlib_test):
    """AP50 recomputed here from the written detections and the ground truth, by the VOC rule."""
    from retinabench.datasets.plain_ap import average_precision
    run, _ = accuracy_run
    lines = list(csv.DictReader((run / "accuracy_ap.csv").open()))
    for ln in (x for x in lines if x["dataset"] == "dlib:test"):
        key = f"{ln['backend']}-{ln['variant']}-cpu-pad512x512-b1-m1"
        det = json.loads((run / "detections" / "dlib-test" / f"{key}.json").read_text())
        preds = [np.asarray(det[str(it.path)], np.float64).reshape(-1, 5) for it in dlib_test.items]
        assert float(ln["ap50"]) == pytest.approx(average_precision(dlib_test.items, preds), abs=1e-6)
        assert float(ln["ap50_low"]) <= float(ln["ap50"]) <= float(ln["ap50_high"])
    # at native scale a MobileNet-0.25 RetinaFace finds dlib's faces
    ref = [ln for ln in lines if ln["dataset"] == "dlib:test" and ln["backend"] == "onnxruntime"
           and ln["variant"] == "default"][0]
    assert float(ref["ap50"]) > 0.95 and float(ref["recall_at_threshold"]) > 0.9


def test_the_ap_gate_names_the_rows_that_lose_points():
    lines = [{"backend": "a", "variant": "int8", "dataset": "d", "ap50_diff": "-0.04"},
             {"backend": "b", "variant": "default", "dataset": "d", "ap50_diff": "-0.005"},
             {"backend": "c", "variant": "default", "dataset": "d", "ap50_diff": ""}]
    assert drops(lines, 1.0) == ["a (int8) on d: -4.0 points"]
    assert drops(lines, 0.1) == ["a (int8) on d: -4.0 points", "b on d: -0.5 points"]
    assert drops(lines, 5.0) == []


def test_the_report_renders_the_accuracy_section_from_the_run_folder(accuracy_run, tmp_path):
    run, _ = accuracy_run
    readme = tmp_path / "README.md"
    readme.write_text("<!-- retinabench:begin accuracy-ap -->\n<!-- retinabench:end accuracy-ap -->\n")
    res = _bench("report", str(run), "--readme", str(readme))
    assert res.returncode == 0, res.stderr
    text = readme.read_text()
    assert "AP50 dlib:test@0.35" in text and "onnxruntime (int8)" in text and "paired over images" in text


@pytest.mark.parametrize("spec, words", [
    ("nowhere:path", ["unknown dataset kind"]),
    ("coco:/nonexistent/annotations.json", ["/nonexistent/annotations.json"]),
    ("voc:/nonexistent", ["/nonexistent"]),
])
def test_bad_datasets_are_one_line_before_any_row(tmp_path, spec, words):
    res = _bench("accuracy", "--config", "configs/smoke.yaml", "--dataset", spec, "--out", str(tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert all(w in res.stderr for w in words), res.stderr
    assert not any(tmp_path.iterdir())


def test_a_calibration_set_that_overlaps_the_evaluation_split_is_refused(tmp_path, dlib_test):
    res = _bench("accuracy", "--config", "configs/smoke.yaml", "--backends", "onnxruntime:int8",
                 "--dataset", "dlib:train", "--out", str(tmp_path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "calibrates on" in res.stderr and "dlib:train" in res.stderr
    assert not any(tmp_path.iterdir())
