"""Type-check backends/tensorrt_backend.py with mypy against tensorrt-stubs (TensorRT itself cannot be installed).

The stubs (pin: tensorrt-stubs==10.13.0.35.1, installed with --no-deps: its dependencies are the
unobtainable TensorRT wheels) are pybind11-stubgen output with two syntax slips (a parameter named
`in`, a parameter without default after defaults) and no py.typed marker; the test copies them,
fixes those slips and points MYPYPATH at the copy. A second test proves the check has teeth: a
misspelled TensorRT call must fail it.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT

BACKEND = ROOT / "backends" / "tensorrt_backend.py"
STUBS_PIN = "tensorrt-stubs==10.13.0.35.1"
MYPY_INI = """[mypy]
follow_imports = silent
check_untyped_defs = True
warn_unused_ignores = True
[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True
[mypy-torch,torch.*]
follow_imports = skip
"""


def _stub_files() -> list:
    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.skip(f"tensorrt-stubs is not installed: pip install --no-deps {STUBS_PIN}")
    files = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".pyi")]
    if not files:
        pytest.skip("tensorrt-stubs is installed without .pyi files")
    return files


def _fix(text: str) -> str:
    text = re.sub(r"([(,]\s*)in: ", r"\1in_: ", text)  # `in` is a keyword
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    ast.parse(text)  # any other slip fails here, naming its line
    return text


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory):
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed")
    stubs = tmp_path_factory.mktemp("stubs")
    for f in _stub_files():
        package = f.parent.name
        dest = stubs / package / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_fix(f.read_text()))
    ini = stubs.parent / "mypy.ini"
    ini.write_text(MYPY_INI)
    return {"stubs": stubs, "ini": ini, "cache": ROOT / ".mypy_cache"}


def _mypy(env, path: Path) -> subprocess.CompletedProcess:
    import os
    environ = dict(os.environ, MYPYPATH=str(env["stubs"]))
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(env["ini"]), "--cache-dir",
                           str(env["cache"]), str(path)], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=600)


def test_backend_type_checks_against_the_stubs(mypy_env):
    out = _mypy(mypy_env, BACKEND)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout


def test_a_misspelled_tensorrt_call_fails_the_check(mypy_env, tmp_path):
    source = BACKEND.read_text()
    assert "execute_async_v3(" in source
    bad = tmp_path / "tensorrt_backend_bad.py"
    bad.write_text(source.replace("execute_async_v3(", "execute_async_v4(")
                   .replace("set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)",
                            "set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, str(self.workspace))"))
    out = _mypy(mypy_env, bad)
    assert out.returncode == 1, out.stdout + out.stderr
    assert '"IExecutionContext" has no attribute "execute_async_v4"' in out.stdout
    assert 'Argument 2 to "set_memory_pool_limit" of "IBuilderConfig" has incompatible type "str"' in out.stdout
