"""A whole run end to end: worker processes, results folder, summary.csv's stable columns."""
from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT
from retinabench.records import RowId
from retinabench.store import RunStore


def read_rows(run):
    """The run's rows by key."""
    return {r.key: r for r in RunStore(run).read_rows().values()}


def key(backend: str, batch: int = 1, input: str = "640x448", **kw) -> str:
    return RowId(backend, input=input, batch=batch, max_batch=batch, **kw).key

REQUIRED = ["backend", "variant", "input", "batch", "max_batch", "stage", "n", "mean_ms", "median_ms",
            "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnet25_dir, t1_path):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tiny", "model": str(mnet25_dir), "images": [str(t1_path)],
        "input": {"mode": "fit", "width": 640, "height": 448}, "threads": 1,
        "batches": [1, 2], "loops": 7, "warmup": 2, "reference": "mxnet",
        "backends": ["mxnet", "empty", "tensorrt"],
    }))
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp / "results")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "mxnet" in out.stdout and "results:" in out.stdout
    (run,) = (tmp / "results").iterdir()
    return run


def test_results_folder_layout(run_dir):
    for name in ("run.json", "config.yaml", "env.json", "summary.csv", "summary.md", "samples.csv.gz",
                 "detections.json", "accuracy_faces.csv"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "complete" and meta["missing"] == []
    env = json.loads((run_dir / "env.json").read_text())
    assert env["cpu_model"] and "git_commit" in env


def test_summary_csv_columns_and_rows(run_dir):
    rows = list(csv.DictReader((run_dir / "summary.csv").open()))
    assert list(rows[0].keys())[:len(REQUIRED)] == REQUIRED
    mx = [r for r in rows if r["backend"] == "mxnet"]
    assert {(r["batch"], r["stage"]) for r in mx} == {(b, s) for b in ("1", "2")
                                                      for s in ("preprocess", "inference", "postprocess", "total")}
    for r in mx:
        assert int(r["n"]) == 7 and r["input"] == "640x448" and r["max_batch"] == r["batch"]
        assert float(r["min_ms"]) <= float(r["median_ms"]) <= float(r["p90_ms"]) <= float(r["p99_ms"]) <= float(r["max_ms"])
    trt = [r for r in rows if r["backend"] == "tensorrt"]
    assert trt and all(r["status"] == "unavailable" and r["n"] == "0" for r in trt)


def test_samples_are_kept_and_stages_add_up(run_dir):
    rows = read_rows(run_dir)
    r = rows[key("mxnet", 2)]
    # 7 loops: rounds of 5 and 2, so two processes (retinabench.harness.schedule), each with its 2 warmup loops
    assert r.samples_ns.shape == (7, 4) and r.warmup_ns.shape == (2 * 2, 4)
    np.testing.assert_array_equal(r.samples_ns[:, :3].sum(axis=1), r.samples_ns[:, 3])
    with gzip.open(run_dir / "samples.csv.gz", "rt") as f:
        long = list(csv.DictReader(f))
    assert len([x for x in long if x["backend"] == "mxnet"]) == 2 * 7 * 4


def test_detections_and_accuracy(run_dir):
    det = json.loads((run_dir / "detections.json").read_text())
    (faces,) = det[key("mxnet")]["faces_per_image"]
    assert len(faces) == 6  # t1.jpg at 640x448 still shows its six faces
    assert [len(f) for f in det[key("mxnet", 2)]["faces_per_image"]] == [6, 6]
    acc = list(csv.DictReader((run_dir / "accuracy_faces.csv").open()))
    b2 = [a for a in acc if a["backend"] == "mxnet" and a["batch"] == "2"][0]
    assert b2["matched"] == "6" and b2["missed"] == "0" and b2["extra"] == "0"


def test_runs_never_share_a_folder(tmp_path):
    dirs = {RunStore.create(tmp_path, "same").path for _ in range(5)}
    assert len(dirs) == 5


def test_missing_caffe_interpreter_is_one_unavailable_row(tmp_path, mnet25_dir, t1_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "nocaffe", "model": str(mnet25_dir), "images": [str(t1_path)],
        "input": {"mode": "fit", "width": 320, "height": 224}, "loops": 2, "warmup": 0,
        "backends": ["caffe", "mxnet"]}))
    env = {**os.environ, "RETINABENCH_CAFFE_PYTHON": str(tmp_path / "no-such-python")}
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr  # unavailable is not a failure: the run is complete
    (run,) = (tmp_path / "r").iterdir()
    rows = read_rows(run)
    caffe = rows[key("caffe", input="320x224")]
    assert caffe.status == "unavailable" and "no-such-python" in caffe.reason and "setup_caffe.sh" in caffe.reason
    assert rows[key("mxnet", input="320x224")].status == "passed"


def test_row_timeout_stops_a_worker_and_the_run_goes_on(tmp_path, mnet25_dir, t1_path):
    # A million loops of MXNet at 640x448 would take hours: the timeout must stop the row.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "timeout", "model": str(mnet25_dir), "images": [str(t1_path)],
        "input": {"mode": "fit", "width": 640, "height": 448}, "loops": 1000000, "warmup": 0,
        "row_timeout_s": 5, "backends": ["mxnet"]}))
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr  # partial: a row failed
    (run,) = (tmp_path / "r").iterdir()
    row = read_rows(run)[key("mxnet")]
    assert row.status == "failed" and "row_timeout_s=5" in row.reason
