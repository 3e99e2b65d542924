"""notebooks/analysis.ipynb runs top to bottom on a real small run (path via RETINABENCH_RESULTS)."""
from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnet25_dir, t1_path):
    tmp = tmp_path_factory.mktemp("nb")
    cfg = tmp / "nb.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "notebook", "model": str(mnet25_dir), "images": [str(t1_path)],
        "input": {"mode": "fit", "width": 320, "height": 416}, "threads": 1,
        "batches": [1, 2], "max_batch": [2], "loops": 6, "warmup": 1, "reference": "onnxruntime",
        "backends": ["onnxruntime", "empty"],
    }))
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp / "results")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp / "results").iterdir()
    return run


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_notebook_executes_on_a_run(run_dir, monkeypatch):
    monkeypatch.setenv("RETINABENCH_RESULTS", str(run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError, with the failing cell's traceback, if any cell fails.
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # stage breakdown, batch scaling, latency distribution, footprint (no GPU here)
    markdown = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "Scenario **notebook**" in markdown and run_dir.name in markdown
    assert "onnxruntime/default" in markdown  # the accuracy section's reference
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert str(run_dir) in first.outputs[0]["data"]["text/plain"]
