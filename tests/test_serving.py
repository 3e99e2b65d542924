"""Serving through the real MLPerf LoadGen: every scenario for a few seconds, an overload that ends, the two
clocks cross-checked, and bad input. Real runtimes, real LoadGen (skipped with the reason where
mlperf_loadgen is not installed)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytest.importorskip("mlperf_loadgen", reason="MLPerf LoadGen (pip install mlcommons-loadgen) is not installed")

SIZE = {"mode": "fit", "width": 320, "height": 224}


def _config(tmp: Path, load: dict, backends=("onnxruntime",), **extra) -> Path:
    cfg = tmp / "serve.yaml"
    cfg.write_text(yaml.safe_dump({"name": "serve", "model": "default", "images": ["default"], "input": SIZE,
                                   "threads": 2, "warmup": 3, "backends": list(backends),
                                   "load": {"min_duration_s": 1, "rounds": 1, "closed_loop_loops": 30, **load},
                                   **extra}))
    return cfg


def _serve(cfg: Path, out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), "--config", str(cfg), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _lines(run: Path) -> list:
    with (run / "serving.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("load", [
    {"scenario": "singlestream"},
    {"scenario": "multistream", "samples_per_query": 2},
    {"scenario": "offline"},
    {"scenario": "server", "latency_bound_ms": 200, "percentile": 90, "search_steps": 2},
], ids=lambda d: d["scenario"])
def test_every_scenario_runs_on_the_real_loadgen(tmp_path, load):
    res = _serve(_config(tmp_path, load), tmp_path / "r")
    assert res.returncode == 0, res.stderr
    (run,) = (tmp_path / "r").iterdir()
    (line,) = _lines(run)
    assert line["status"] == "passed" and line["validity"] in ("VALID", "INVALID") and float(line["rate"]) > 0
    if line["validity"] == "INVALID":
        assert line["invalid_reason"]                      # LoadGen's own reason
    tests = json.loads((run / "serving.json").read_text())["rows"]["onnxruntime-default-cpu-320x224-b1-m1"]["tests"]
    folder = run / tests[0]["folder"]
    assert (folder / "mlperf_log_summary.txt").is_file() and (folder / "mlperf_log_detail.txt").is_file()
    assert "Result is" in (folder / "mlperf_log_summary.txt").read_text()
    settings = tests[0]["settings"]                          # what LoadGen ran with, recorded
    assert settings["scenario"].lower() == load["scenario"] and settings["min_duration_ms"] == 1000
    assert (run / "plots" / "latency_vs_load.png").is_file() and (run / "summary.csv").is_file()
    assert json.loads((run / "run.json").read_text())["kind"] == "serving"


def test_an_overloaded_server_ends_with_its_status_in_time(tmp_path):
    cfg = _config(tmp_path, {"scenario": "server", "latency_bound_ms": 1000, "target_qps": 100000,
                             "max_duration_s": 3})
    t0 = time.monotonic()
    res = _serve(cfg, tmp_path / "r", timeout=180)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 120
    (run,) = (tmp_path / "r").iterdir()
    (line,) = _lines(run)
    assert line["validity"] == "INVALID" and "overloaded" in line["invalid_reason"]
    assert "overloaded above" in (run / "serving.md").read_text()


def test_loadgen_and_the_harness_clock_agree_on_single_stream_latency(tmp_path):
    """LoadGen's single-stream median against the harness's own closed-loop median of the whole loop, in one
    worker: the SUT's queue hand-off (a thread wake-up) is the only difference, so within 20% + 0.5 ms."""
    res = _serve(_config(tmp_path, {"scenario": "singlestream", "min_duration_s": 3, "closed_loop_loops": 200}),
                 tmp_path / "r")
    assert res.returncode == 0, res.stderr
    (run,) = (tmp_path / "r").iterdir()
    serving = json.loads((run / "serving.json").read_text())["rows"]["onnxruntime-default-cpu-320x224-b1-m1"]
    closed = serving["closed_loop_ms"]
    # the closed loop's chunks are recorded; only a contended one was measured again, and the last one counts
    chunks = serving["closed_loop_chunks"]
    assert chunks and chunks[-1]["median_total_ms"] == closed and all(c["contended"] for c in chunks[:-1])
    assert [c["attempt"] for c in chunks] == list(range(len(chunks)))
    p50 = serving["tests"][0]["p50_ms"]
    assert abs(p50 - closed) <= 0.2 * closed + 0.5, (p50, closed)


def test_a_latency_bound_below_the_rows_own_latency_is_the_rows_status(tmp_path):
    res = _serve(_config(tmp_path, {"scenario": "server", "latency_bound_ms": 0.01}), tmp_path / "r")
    assert res.returncode == 0, res.stderr
    (run,) = (tmp_path / "r").iterdir()
    (line,) = _lines(run)
    assert line["status"] == "unavailable" and "below this row's own latency" in line["reason"]


@pytest.mark.parametrize("load, words", [
    ({"scenario": "server", "latency_bound_ms": 50, "target_qps": 0}, "load.target_qps"),
    ({"scenario": "server", "latency_bound_ms": 50, "target_qps": -5}, "load.target_qps"),
    ({"scenario": "server"}, "load.latency_bound_ms"),
    ({"scenario": "server", "latency_bound_ms": 50, "settings": {"server_target_qpz": 3}}, "server_target_qpz"),
    ({"scenario": "server", "latency_bound_ms": 50, "warp": 9}, "load.warp"),
    ({"scenario": "burst"}, "load.scenario"),
])
def test_bad_load_sections_are_one_line_before_any_row(tmp_path, load, words):
    res = _serve(_config(tmp_path, load), tmp_path / "r")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and words in res.stderr, res.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_a_gpu_serving_scenario_without_a_gpu_says_so(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = _serve(_config(tmp_path, {"scenario": "offline"}, backends=({"name": "torch", "device": "cuda"},)),
                 tmp_path / "r")
    assert res.returncode == 0, res.stderr
    (run,) = (tmp_path / "r").iterdir()
    (line,) = _lines(run)
    assert line["status"] == "unavailable" and "CUDA" in line["reason"]


def test_a_slow_server_rate_gets_the_time_for_the_queries_early_stopping_needs():
    from retinabench.config import LoadSpec
    from retinabench.harness.serving_run import loadgen_fields
    load = LoadSpec(scenario="server", latency_bound_ms=50, percentile=99, min_duration_s=10)
    slow = loadgen_fields(load, 10.0, 9.0)
    assert slow["min_query_count"] == 700
    # 700 Poisson arrivals at 10/s take 70 s on average: the limit leaves room beyond that
    assert slow["max_duration_ms"] >= 1.25 * 700 / 10.0 * 1000
    fast = loadgen_fields(load, 500.0, 2.0)
    assert fast["max_duration_ms"] == (2 * 10 + 20) * 1000
    fixed = loadgen_fields(LoadSpec(scenario="server", latency_bound_ms=50, min_duration_s=10, max_duration_s=30), 10.0, 9.0)
    assert fixed["max_duration_ms"] == 30000   # a limit the scenario sets is kept


def test_a_round_peak_is_its_highest_valid_rate_not_counting_replaced_tests():
    from retinabench.harness.serving_run import round_peak
    tests = [{"round": 0, "target": 100.0, "validity": "VALID"},
             {"round": 0, "target": 120.0, "validity": "INVALID"},
             {"round": 0, "target": 110.0, "validity": "VALID", "replaced": True},
             {"round": 1, "target": 90.0, "validity": "INVALID"}]
    assert round_peak(tests, 0) == 100.0
    assert round_peak(tests, 1) is None
