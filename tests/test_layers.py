"""The shape of the code: one-way layers, no import cycles, records that both interpreters can import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED
from layers import LAYERS, cycles, import_graph, layer_of, upward_imports


def test_no_import_cycle_and_every_import_goes_down_the_layers():
    graph = import_graph(ROOT)
    assert cycles(graph) == []
    assert upward_imports(graph) == []
    for m in graph:  # every module sits in a layer
        layer_of(m)


def _tree(tmp: Path, files: dict) -> Path:
    for rel, text in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp


def test_the_check_finds_a_cycle_and_an_upward_import(tmp_path):
    # A cycle hidden inside a function counts: the design has it either way.
    root = _tree(tmp_path, {
        "retinabench/__init__.py": "", "retinabench/report/__init__.py": "", "retinabench/harness/__init__.py": "",
        "retinabench/report/a.py": "from retinabench.report import b\n",
        "retinabench/report/b.py": "def f():\n    from retinabench.report.a import x\n",
        "retinabench/harness/runner.py": "from retinabench.report.a import x\n",
        "backends/__init__.py": "",
    })
    graph = import_graph(root)
    assert cycles(graph) == [["retinabench.report.a", "retinabench.report.b"]]
    assert upward_imports(graph) == ["retinabench.harness.runner -> retinabench.report.a"]


def test_the_shared_import_cycle_tool_agrees():
    tool = SHARED / "tools" / "import_cycles.py"
    if not tool.is_file():
        pytest.skip(f"{tool} not found: set RETINABENCH_SHARED to the shared/ folder")
    out = subprocess.run([sys.executable, str(tool), str(ROOT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_records_import_only_the_standard_library():
    """The Caffe worker (Python 3.9) imports records: nothing outside the standard library, 3.9 syntax."""
    tree = ast.parse((ROOT / "retinabench" / "records.py").read_text(), feature_version=(3, 9))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_the_worker_modules_import_without_numpy_or_yaml_at_the_top():
    """records and store import nothing heavy at module level: a worker pays only for what it uses."""
    code = ("import sys; import retinabench.records, retinabench.store, retinabench.harness.worker; "
            "print(sorted(m for m in ('numpy', 'yaml', 'cv2', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_layers_name_real_packages():
    for prefixes in LAYERS:
        for p in prefixes:
            path = ROOT.joinpath(*p.split("."))
            assert path.is_dir() or path.with_suffix(".py").is_file(), p
