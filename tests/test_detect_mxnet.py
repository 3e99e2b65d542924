"""`bench.py detect` with MXNet equals insightface's own detect() on t1.jpg (the foundation's contract)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from insightface_reference import insightface_detect
from tolerance import THREADS


def detect_json(*args: str) -> dict:
    out = subprocess.run([sys.executable, "bench.py", "detect", *args, "--threads", str(THREADS), "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def reference(mnet25_dir, t1_image):
    return insightface_detect(str(mnet25_dir / "mnet.25"), t1_image, 0.8)


def test_native_equals_insightface_detect(mnet25_dir, t1_path, reference):
    det, lmk = reference
    got = detect_json(str(t1_path), "--model", str(mnet25_dir), "--backend", "mxnet",
                      "--threshold", "0.8", "--input", "native")["faces"]
    assert len(det) == 6 and len(got) == 6
    order = np.argsort(-det[:, 4], kind="stable")
    for face, i in zip(got, order):
        assert np.abs(np.array(face["box"]) - det[i, :4]).max() <= 0.1
        assert abs(face["score"] - det[i, 4]) <= 1e-4
        assert np.abs(np.array(face["landmarks"]) - lmk[i]).max() <= 0.1
    scores = [f["score"] for f in got]
    assert scores == sorted(scores, reverse=True)


def test_fit_mode_finds_the_same_six_faces(mnet25_dir, t1_path, reference):
    det, _ = reference
    got = detect_json(str(t1_path), "--model", str(mnet25_dir), "--backend", "mxnet",
                      "--threshold", "0.8", "--input", "fit", "--size", "1280x896")["faces"]
    assert len(got) == 6
    boxes = np.array([f["box"] for f in got])
    for ref_box in det[:, :4]:  # padding 10 rows changes the convolution borders a little, not the faces
        assert np.abs(boxes - ref_box).max(axis=1).min() < 2.0


def test_fit_mode_downscaled_maps_back_to_image_pixels(mnet25_dir, t1_path, reference):
    det, _ = reference
    got = detect_json(str(t1_path), "--model", str(mnet25_dir), "--backend", "mxnet",
                      "--threshold", "0.8", "--input", "fit", "--size", "640x448")["faces"]
    assert len(got) == 6
    boxes = np.array([f["box"] for f in got])
    for ref_box in det[:, :4]:  # half resolution: boxes still land on the faces, in original pixels
        assert np.abs(boxes - ref_box).max(axis=1).min() < 12.0


@pytest.mark.parametrize("args, message", [
    (["--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["--backend", "mxnet", "--input", "fit", "--size", "1280x890"], "not a multiple of 32"),
    (["--backend", "mxnet", "--input", "fit"], "needs --size"),
    (["--backend", "mxnet", "--model", "/nonexistent/model"], "does not exist"),
])
def test_detect_errors_are_one_line(t1_path, mnet25_dir, args, message):
    argv = [sys.executable, "bench.py", "detect", str(t1_path), "--model", str(mnet25_dir), *args]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_detect_rejects_an_image_that_is_not_an_image(tmp_path, mnet25_dir):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is text, not a JPEG")
    out = subprocess.run([sys.executable, "bench.py", "detect", str(bad), "--model", str(mnet25_dir),
                          "--backend", "mxnet"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "cannot be decoded" in out.stderr and "Traceback" not in out.stderr
