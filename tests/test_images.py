"""Images: damaged files are refused before any row, in one line naming the file; the rest decode
exactly as cv2.imread(path, cv2.IMREAD_COLOR) always did (grayscale, RGBA, 16-bit)."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from retinabench.errors import BenchError
from retinabench.model.images import load_image

ROOT = Path(__file__).resolve().parents[1]


def _entropy_start(jpeg: bytes) -> int:
    """Offset of the first byte of entropy-coded data (after the SOS segment)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")


@pytest.fixture(scope="module")
def damaged(t1_path, tmp_path_factory):
    d = tmp_path_factory.mktemp("damaged")
    src = t1_path.read_bytes()
    start = _entropy_start(src)
    mid = (start + len(src)) // 2
    out = {}
    out["truncated"] = d / "truncated.jpg"
    out["truncated"].write_bytes(src[: len(src) // 2])
    noisy = bytearray(src)  # random bytes inside the scan: 0xFF among them makes false markers
    noisy[mid:mid + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    out["garbage"] = d / "garbage.jpg"
    out["garbage"].write_bytes(bytes(noisy))
    flat = bytearray(src)  # no marker at all, only bad Huffman codes: Pillow's load() accepts this one
    flat[mid:mid + 2000] = b"\x55" * 2000
    out["overwritten"] = d / "overwritten.jpg"
    out["overwritten"].write_bytes(bytes(flat))
    png = bytearray(_png(cv2.imread(str(t1_path))))
    idat = png.index(b"IDAT")
    length = int.from_bytes(png[idat - 4:idat], "big")
    png[idat + 4 + length] ^= 0xFF  # the IDAT chunk's CRC
    out["png crc"] = d / "crc.png"
    out["png crc"].write_bytes(bytes(png))
    return out


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("case, words", [
    ("truncated", "Premature end of JPEG file"),
    ("garbage", "Corrupt JPEG data"),
    ("overwritten", "Corrupt JPEG data"),
    ("png crc", "IDAT: CRC error"),
])
def test_damaged_images_are_refused_in_one_line(damaged, case, words, capfd):
    with pytest.raises(BenchError) as e:
        load_image(damaged[case])
    text = str(e.value)
    assert str(damaged[case]) in text and words in text and "\n" not in text
    assert words not in capfd.readouterr().err  # the decoder's own line went into the error, not stderr


def test_cv2_would_have_decoded_the_damaged_jpegs(damaged):
    """Why the check exists: imread returns a full-size, partly grey image for each of them."""
    for case in ("truncated", "garbage", "overwritten"):
        img = cv2.imread(str(damaged[case]), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (886, 1280, 3), case


def test_stderr_is_restored(t1_path, capfd):
    load_image(t1_path)
    os.write(2, b"after the decode\n")
    assert "after the decode" in capfd.readouterr().err


def test_a_png_with_a_broken_ancillary_crc_is_accepted(t1_image, tmp_path, capfd):
    """libpng drops a tEXt chunk that fails its CRC and decodes every pixel: no damage to the image."""
    png = _png(t1_image)
    data = b"Comment\x00hello"
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data) ^ 1)
    path = tmp_path / "text-crc.png"
    path.write_bytes(png[:33] + chunk + png[33:])  # after the signature (8) and IHDR (25)
    assert np.array_equal(load_image(path), t1_image)
    assert "CRC error" in capfd.readouterr().err  # its warning is passed on, as before


def _variants(t1_image, tmp_path):
    """(name, path, what the pixels were) for the formats that must keep converting as before."""
    small = cv2.resize(t1_image, (320, 222), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    rgba = cv2.cvtColor(small, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = np.arange(rgba.shape[1], dtype=np.uint8)[None, :]  # a real alpha ramp
    deep = small.astype(np.uint16) * 257 + np.arange(small.shape[1], dtype=np.uint16)[None, :, None]
    out = []
    for name, img, ext in [("gray png", gray, ".png"), ("gray jpeg", gray, ".jpg"), ("rgba png", rgba, ".png"),
                           ("16-bit png", deep, ".png"), ("16-bit tiff", deep, ".tif"),
                           ("16-bit gray png", cv2.cvtColor(deep, cv2.COLOR_BGR2GRAY), ".png")]:
        path = tmp_path / (name.replace(" ", "-") + ext)
        assert cv2.imwrite(str(path), img)
        out.append((name, path, img))
    return out


def test_grayscale_rgba_and_16_bit_convert_exactly_as_before(t1_image, tmp_path, capfd):
    for name, path, written in _variants(t1_image, tmp_path):
        got = load_image(path)
        before = cv2.imread(str(path), cv2.IMREAD_COLOR)  # what the benchmark decoded until now
        assert got.dtype == np.uint8 and got.shape == written.shape[:2] + (3,), name
        assert np.array_equal(got, before), name
        if written.ndim == 2 and written.dtype == np.uint8 and path.suffix == ".png":
            assert np.array_equal(got, np.repeat(written[..., None], 3, axis=2)), name  # gray -> 3 equal channels
        if "rgba" in name:
            assert np.array_equal(got, written[..., :3]), name  # alpha dropped, colour kept
        if name == "16-bit png":
            assert np.array_equal(got, (written >> 8).astype(np.uint8)), name  # the high byte
    assert capfd.readouterr().err == ""


def test_the_worker_decodes_with_the_same_function(damaged, t1_path):
    from retinabench.harness.worker import _load_images
    images = _load_images([str(t1_path)])
    assert np.array_equal(images[0], cv2.imread(str(t1_path), cv2.IMREAD_COLOR))
    with pytest.raises(BenchError, match="Premature end of JPEG file"):
        _load_images([str(t1_path), str(damaged["truncated"])])


def test_the_caffe_interpreter_refuses_them_too(damaged, t1_path):
    """The Caffe worker (Python 3.9) decodes its images with load_image as well."""
    from backends.caffe_backend import CaffeBackend
    python = CaffeBackend.interpreter()
    if not python or not Path(python).exists():
        pytest.skip(f"no Caffe interpreter at {python}")
    code = ("import sys; from retinabench.model.images import load_image\n"
            "print(load_image(sys.argv[1]).shape)\n"
            "try:\n    load_image(sys.argv[2])\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([python, "-c", code, str(t1_path), str(damaged["overwritten"])], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "(886, 1280, 3)" and lines[1].startswith("BenchError") and "Corrupt JPEG data" in lines[1]


@pytest.mark.parametrize("case", ["truncated", "overwritten", "png crc"])
def test_bench_refuses_them_before_any_row(damaged, case, mnet25_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "img", "model": str(mnet25_dir), "images": ["default"], "loops": 1,
                                   "warmup": 0, "input": {"mode": "fit", "width": 320, "height": 224},
                                   "backends": ["empty"]}))
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--image", str(damaged[case]),
                          "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: image ") and str(damaged[case]) in lines[0], out.stderr
    assert not (tmp_path / "r").exists()
