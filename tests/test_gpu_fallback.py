"""A GPU scenario on a machine without a GPU: each GPU row says why it cannot run, the CPU rows run."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from retinabench.store import RunStore

CONFIG = ROOT / "configs" / "gpu-320x416.yaml"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_gpu_config_without_a_gpu(tmp_path, mnet25_dir, t1_path):
    out = subprocess.run([sys.executable, "bench.py", "--config", str(CONFIG), "--model", str(mnet25_dir),
                          "--image", str(t1_path), "--loops", "3", "--warmup", "1", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    (run,) = tmp_path.iterdir()
    rows = RunStore(run).read_rows().values()
    by_device = {}
    for r in rows:
        by_device.setdefault(r.id.backend if r.id.backend != "onnxruntime" else "cpu", []).append(r)
    assert {r.status for r in by_device["cpu"]} == {"passed"}
    assert all(r.id.device == "cpu" and r.result.settings.device == "cpu" for r in by_device["cpu"])
    torch_rows = by_device["torch"]
    assert len(torch_rows) == 8 and all(r.id.device == "cuda" for r in torch_rows)
    for r in torch_rows:  # one line each, naming the cause
        assert r.status == "unavailable" and r.reason.endswith("no CUDA device"), r
        assert "\n" not in r.reason
    for r in by_device["tensorrt"]:
        assert r.status == "unavailable" and r.reason.startswith("tensorrt is not installed"), r
    for r in by_device["mxnet"]:
        assert r.status == "unavailable" and ("no CUDA device" in r.reason or "mxnet" in r.reason), r
    (floor,) = by_device["empty"]  # the GPU floor says why, as the torch rows do
    assert floor.id.device == "cuda" and floor.status == "unavailable" and "CUDA" in floor.reason, floor
    for name in ("torch", "tensorrt", "mxnet"):
        assert name in out.stdout
