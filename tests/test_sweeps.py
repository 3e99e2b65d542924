"""Sweeps over threads, input sizes and backend options: identities, rows, resume, scaling fits, `best`, bad input."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from retinabench.config import scenario_from_dict, usable_cores
from retinabench.errors import ConfigError
from retinabench.records import RowId
from retinabench.report.scaling import fit_line

BASE = {"name": "sw", "model": "default", "images": ["default"], "loops": 10, "warmup": 2, "processes": 1,
        "round_loops": 5, "reference": "onnxruntime"}
COMMITTED_SWEEP = sorted(p for p in (ROOT / "results").glob("*-sweep-cpu") if (p / "summary.csv").is_file())


def _bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# --- identities -------------------------------------------------------------------------------------

def test_a_scenario_without_a_sweep_keeps_its_identities():
    sc = scenario_from_dict({**BASE, "input": {"mode": "fit", "width": 320, "height": 224}, "threads": 2,
                             "backends": ["onnxruntime", "openvino"]})
    assert [r.key for r in sc.rows()] == ["onnxruntime-default-cpu-320x224-b1-m1", "openvino-default-cpu-320x224-b1-m1"]
    assert all(r.id.threads == 0 and r.id.options == "" for r in sc.rows())
    assert RowId("x").to_json() == {"backend": "x", "variant": "default", "device": "cpu", "input": "native",
                                    "batch": 1, "max_batch": 1}


def test_swept_values_are_part_of_a_rows_identity():
    sc = scenario_from_dict({**BASE, "sweep": {"threads": [1, 2], "input": ["320x224", "640x448"]},
                             "backends": ["onnxruntime", {"name": "openvino", "sweep": {"options.num_streams": [1, 2]}}]})
    keys = [r.key for r in sc.rows()]
    assert len(keys) == len(set(keys)) == 2 * 2 + 2 * 2 * 2
    assert "onnxruntime-default-cpu-640x448-b1-m1-t2" in keys
    assert "openvino-default-cpu-320x224-b1-m1-t1-num_streams.2" in keys
    row = next(r for r in sc.rows() if r.key == "openvino-default-cpu-320x224-b1-m1-t1-num_streams.2")
    assert row.backend.threads == 1 and row.backend.options["num_streams"] == 2 and row.backend.pin
    assert row.input.label == "320x224" and RowId.from_json(row.id.to_json()) == row.id


def test_committed_runs_from_before_sweeps_still_load():
    from retinabench.report.run_data import load_run
    old = ROOT / "results" / "20261201-113529-1280x896"
    run = load_run(old)
    assert len(run.rows) == 14 and all(rid.threads == 0 for rid in run.rows)
    assert {s["row"] for s in run.summary} == set(run.rows)


# --- the fit -----------------------------------------------------------------------------------------

def test_the_size_fit_recovers_a_known_line():
    x = [0.133, 0.307, 1.147, 2.089]
    y = [2.0 + 25.0 * v for v in x]
    fit = fit_line(x, y)
    assert fit.slope == pytest.approx(25.0) and fit.intercept == pytest.approx(2.0) and fit.r2 == pytest.approx(1.0)
    noisy = fit_line(x, [v + e for v, e in zip(y, [0.3, -0.2, 0.1, -0.2])])
    assert 24 < noisy.slope < 26 and 0.99 < noisy.r2 < 1.0
    assert fit_line([1.0, 1.0], [2.0, 3.0]) is None   # one size: nothing to fit


# --- a real sweep --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = tmp / "sweep.yaml"
    threads = [1, 2] if usable_cores() >= 2 else [1]
    cfg.write_text(yaml.safe_dump({**BASE, "sweep": {"threads": threads, "input": ["320x224", "640x448"]},
                                   "backends": ["onnxruntime", "empty"]}))
    res = _bench("--config", str(cfg), "--out", str(tmp / "r"))
    assert res.returncode == 0, res.stderr
    (run,) = (tmp / "r").iterdir()
    return cfg, run, threads, res


def test_a_sweep_measures_its_rows_in_groups_of_one_size(sweep_run):
    from retinabench.store import RunStore
    _, run, threads, res = sweep_run
    rows = RunStore(run).read_rows()
    assert len(rows) == 2 * 2 * len(threads)
    groups = {}
    for r in rows.values():
        assert r.status == "passed" and r.result.settings.extras["pinned"]
        assert len(r.result.settings.extras["affinity"]) == r.id.threads       # the placement, recorded
        groups.setdefault(r.group, set()).add(r.id.input)
    assert all(len(inputs) == 1 for inputs in groups.values()) and len(groups) == 2   # one size per group
    lines = list(csv.DictReader((run / "summary.csv").open()))
    assert {ln["key"] for ln in lines} == {r.key for r in rows.values()}
    assert (run / "scaling.csv").is_file() and (run / "plots" / "sizes.png").is_file()
    if len(threads) == 2:
        effs = [float(ln["parallel_efficiency"]) for ln in lines if ln["stage"] == "total" and ln["parallel_efficiency"]]
        assert effs and all(0 < e < 2 for e in effs)
    assert "rounds shared" in res.stdout and "input" in res.stdout    # the console says what varies


def test_resume_measures_only_the_missing_swept_rows(sweep_run, tmp_path):
    cfg, run, threads, _ = sweep_run
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    gone = next((copy / "rows").glob("onnxruntime-*-640x448-*.json"))
    key = gone.stem
    gone.unlink()
    gone.with_suffix(".npz").unlink()
    res = _bench("--config", str(cfg), "--resume", str(copy))
    assert res.returncode == 0, res.stderr
    assert f"{key}: passed" in res.stderr and res.stderr.count(": passed,") == 1


def test_best_picks_per_backend_under_the_bounds(sweep_run):
    _, run, threads, _ = sweep_run
    res = _bench("best", str(run))
    assert res.returncode == 0, res.stderr
    assert "| onnxruntime" in res.stdout and "Pareto set" in res.stdout
    tight = _bench("best", str(run), "--max-p99", "0.000001")
    assert tight.returncode == 0 and "No configuration meets the bounds." in tight.stdout
    bad = _bench("best", str(run), "--max-mib", "-1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


@pytest.mark.skipif(not COMMITTED_SWEEP, reason="no committed CPU sweep run in results/")
def test_best_on_the_committed_sweep():
    from retinabench.report.run_data import load_run
    from retinabench.report.scaling import best
    run = load_run(COMMITTED_SWEEP[-1])
    chosen, front = best(run)
    assert {c["backend"] for c in chosen} == {r.id.backend for r in run.rows.values() if r.passed}
    for c in chosen:   # nothing of its backend is faster
        assert all(o["per_image_ms"] >= c["per_image_ms"] for o in best(run)[0] if o["backend"] == c["backend"])
    assert front and all(p["mib"] is not None for p in front)


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sweep, words", [
    ({"threads": []}, "sweep.threads: expected a non-empty list"),
    ({"warp": [1]}, "not a key a sweep takes"),
    ({"options.num_streams": [1, 2]}, "takes no option 'num_streams' (known: "),
    ({"input": ["1920x1080"]}, "not a multiple of 32"),
    ({"threads": [1, 2], "input": ["320x224", "640x448", "1280x896"]}, "more than max_rows=4"),
    ({"threads": [4096]}, "out of range"),
])
def test_bad_sweeps_are_one_line(sweep, words):
    data = {**BASE, "input": {"mode": "fit", "width": 320, "height": 224}, "max_rows": 4, "sweep": sweep,
            "backends": ["onnxruntime"]}
    with pytest.raises(ConfigError) as e:
        scenario_from_dict(data)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_threads_above_the_cores_need_oversubscribe():
    many = usable_cores() + 1
    data = {**BASE, "input": {"mode": "fit", "width": 320, "height": 224}, "sweep": {"threads": [many]},
            "backends": ["onnxruntime"]}
    with pytest.raises(ConfigError, match="oversubscribe: true"):
        scenario_from_dict(data)
    assert scenario_from_dict({**data, "oversubscribe": True}).rows()[0].id.threads == many


def test_a_bad_sweep_stops_the_run_before_any_row(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "input": {"mode": "fit", "width": 320, "height": 224},
                                   "sweep": {"threads": []}, "backends": ["onnxruntime"]}))
    res = _bench("--config", str(cfg), "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "sweep.threads" in res.stderr
    assert not (tmp_path / "r").exists()
