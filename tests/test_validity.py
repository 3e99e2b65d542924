"""Numbers that prove their own validity: the checks every run's summary carries, each provoked.

The checks are pure functions of the samples, so they are tested on synthetic sample arrays with
known defects (a drift, a stage that lost time, a host clock below the GPU's), and once on a real
run to see them reach summary.csv, summary.md and run.json.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import ROOT
from retinabench.records import RowId, RowSettings, WorkerResult
from retinabench.report.summary import summary_rows, validity_table, write_summary
from retinabench.store import RowResult, RunStore
from retinabench.report.stats import drift, drifting, host_below_gpu, stage_sum_error

MS = 1_000_000  # ns


def samples(n: int = 200, pre: float = 1.0, inf: float = 10.0, post: float = 0.5, jitter: float = 0.01,
            seed: int = 0) -> np.ndarray:
    """[n, 4] ns whose stages add up exactly, with a small relative jitter."""
    rng = np.random.default_rng(seed)
    st = np.stack([np.full(n, v) * (1 + jitter * rng.standard_normal(n)) for v in (pre, inf, post)], 1)
    st = (st * MS).astype(np.int64)
    return np.concatenate([st, st.sum(1, keepdims=True)], 1)


def row(s: np.ndarray, **metrics) -> RowResult:
    result = WorkerResult("passed", settings=RowSettings(), metrics=metrics)
    return RowResult(RowId("x", input="640x448"), result, samples_ns=s, warmup_ns=np.zeros((7, 4), np.int64))


def flags(summary, stage: str) -> set:
    (line,) = [s for s in summary if s["stage"] == stage]
    return set(line["flags"].split())


# --- drift -----------------------------------------------------------------------------------

def test_drift_is_zero_for_a_steady_series_and_signed_for_a_settling_one():
    steady = samples()[:, 1]
    assert abs(drift(steady)) < 0.01 and not drifting(steady)
    slow_start = steady.copy()
    slow_start[:50] = slow_start[:50] * 1.3  # the first 50 measured loops 30% slower: warmup too short
    assert drift(slow_start) == pytest.approx(0.3, abs=0.02) and drifting(slow_start)
    fast_start = steady.copy()
    fast_start[:50] = fast_start[:50] * 0.8
    assert drift(fast_start) == pytest.approx(-0.2, abs=0.02) and drifting(fast_start)


def test_drift_ignores_stages_too_short_to_matter_and_short_series():
    tiny = samples(inf=0.01)[:, 1]  # 10 us: relative changes of timer-resolution noise mean nothing
    tiny[:50] *= 2
    assert abs(drift(tiny)) > 0.5 and not drifting(tiny)
    assert drift(np.array([5 * MS])) == 0.0
    short = np.array([2, 1, 1, 1, 1, 1, 1, 1], np.int64) * MS  # fewer than 100 loops: head is a quarter
    assert drift(short) == pytest.approx(0.5)


def test_a_settling_start_is_flagged_on_the_rows_own_stages():
    s = samples()
    s[:10, 1] = (s[:10, 1] * 1.5).astype(np.int64)     # the first loops after warmup still settling
    s[:10, 0] = (s[:10, 0] * 1.5).astype(np.int64)     # ... and the shared preprocessing too
    s[:, 3] = s[:, :3].sum(1)
    summary = summary_rows([row(s)])
    assert "warmup-short" in flags(summary, "inference")
    # the shared host stages are the same numpy code in every row: the machine's, not a flag of the row's
    assert "warmup-short" not in flags(summary, "preprocess")
    assert [x for x in summary if x["stage"] == "inference"][0]["warmup_drift"] == pytest.approx(0.5, abs=0.05)
    assert not flags(summary_rows([row(samples())]), "inference")


# --- stages add up to the total --------------------------------------------------------------

def test_stage_sum_error_and_flag():
    s = samples()
    assert stage_sum_error(s) == 0.0
    assert "stages!=total" not in flags(summary_rows([row(s)]), "total")
    lost = s.copy()
    lost[10, 3] = int(lost[10, 3] * 1.05)  # one loop whose total holds 5% unaccounted time
    assert stage_sum_error(lost) == pytest.approx(0.05 / 1.05, rel=1e-3)
    summary = summary_rows([row(lost)])
    assert "stages!=total" in flags(summary, "total")
    assert [x for x in summary if x["stage"] == "total"][0]["stage_sum_err"] > 0.02
    within = s.copy()
    within[10, 3] = int(within[10, 3] * 1.01)  # 1%: inside the 2% tolerance
    assert "stages!=total" not in flags(summary_rows([row(within)]), "total")


# --- noise -----------------------------------------------------------------------------------

def test_unsteady_rows_are_judged_against_the_empty_row_of_their_rounds():
    quiet = summary_rows([row(samples(jitter=0.02))])
    erratic = summary_rows([row(samples(jitter=0.3))])
    assert "unsteady" not in flags(quiet, "inference") and "unsteady" in flags(erratic, "inference")
    assert [x for x in erratic if x["stage"] == "inference"][0]["spread_iqr"] > 0.10
    # beside an empty row whose own loops spread nearly as widely, the same row is the machine, not the runtime
    shaky_machine = RowResult(RowId("empty", input="640x448"), WorkerResult("passed", settings=RowSettings()),
                              samples_ns=samples(jitter=0.2, seed=1), warmup_ns=np.zeros((7, 4), np.int64))
    beside = summary_rows([row(samples(jitter=0.3)), shaky_machine])
    assert "unsteady" not in flags([x for x in beside if x["backend"] == "x"], "inference")
    steady_machine = RowResult(RowId("empty", input="640x448"), WorkerResult("passed", settings=RowSettings()),
                               samples_ns=samples(jitter=0.01, seed=1), warmup_ns=np.zeros((7, 4), np.int64))
    beside = summary_rows([row(samples(jitter=0.3)), steady_machine])
    assert "unsteady" in flags([x for x in beside if x["backend"] == "x"], "inference")


# --- host clock against the GPU's own ---------------------------------------------------------

def test_host_below_gpu_is_flagged():
    s = samples(inf=2.0)  # host-measured inference: 2 ms median
    assert host_below_gpu(s[:, 1], [2.5] * 200)
    assert not host_below_gpu(s[:, 1], [1.8] * 200)
    assert not host_below_gpu(s[:, 1], [])
    bad = summary_rows([row(s, gpu_time_ms=[2.5] * 200)])
    assert "host<gpu" in flags(bad, "inference")
    assert [x for x in bad if x["stage"] == "inference"][0]["gpu_time_median_ms"] == 2.5
    good = summary_rows([row(s, gpu_time_ms=list(np.full(200, 1.8)))])
    assert "host<gpu" not in flags(good, "inference")
    assert "host<gpu" not in flags(summary_rows([row(s)]), "inference")  # CPU rows: no GPU time, no flag


# --- where the checks are reported ------------------------------------------------------------

def test_validity_table_and_summary_files(tmp_path):
    s = samples(jitter=0.3)
    (tmp_path / "rows").mkdir()
    write_summary(RunStore(tmp_path), [row(s, gpu_time_ms=[50.0])])
    md = (tmp_path / "summary.md").read_text()
    assert "## Validity" in md and "unsteady(" in md and "host<gpu(inference)" in md and "Flags:" in md
    assert "- unsteady: " in md and "Read its p90 and p99" in md        # what it means, and what to do
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert {r["warmup"] for r in rows} == {"7"}
    assert all(r["drift"] != "" for r in rows)
    table = validity_table(summary_rows([row(samples())]))
    assert "CV total" in table and "warmup" in table


def test_a_real_run_reports_its_validity(tmp_path, mnet25_dir, t1_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "v", "model": str(mnet25_dir), "images": [str(t1_path)],
                                   "input": {"mode": "fit", "width": 320, "height": 224},
                                   "loops": 20, "warmup": 3, "backends": ["empty"]}))
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "v: device cpu; input 320x224" in out.stdout       # the console's compact table and its context line
    assert "next: bench.py report " in out.stdout.splitlines()[-2]   # and ends with what to run next
    assert "[1/1] empty-default-cpu-320x224-b1-m1: passed, total median" in out.stderr  # and which row ran, how far
    (run,) = (tmp_path / "r").iterdir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["warmup"] == 3 and meta["loops"] == 20 and meta["model_sha256"]
    rows = list(csv.DictReader((run / "summary.csv").open()))
    total = [r for r in rows if r["stage"] == "total"][0]
    # 20 loops: 4 rounds of 5, one per process; each process warms up with the scenario's 3 loops
    assert total["processes"] == "4" and total["warmup"] == str(4 * 3)
    assert float(total["stage_sum_err"]) == 0.0 and "stages!=total" not in total["flags"]


# --- the MXNet engine check -------------------------------------------------------------------

def _engine_check():
    spec = importlib.util.spec_from_file_location("mxnet_engine_check", ROOT / "benchmarks" / "mxnet_engine_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_engine_verdict():
    v = _engine_check().engine_verdict
    assert v(100.0, 100.0)["passed"] and v(100.0, 100.0)["within_tolerance"]
    assert v(95.0, 100.0)["passed"]
    quick = v(1.0, 100.0)  # timed the queueing only: the failure the check exists to catch
    assert not quick["passed"] and not quick["waits_for_work"]
    slow = v(125.0, 100.0)  # the queueing engine slower (thread overhead): waits, but not within 10%
    assert slow["passed"] and not slow["within_tolerance"] and slow["relative_difference"] == pytest.approx(0.25)


def test_engine_check_runs_each_engine_in_its_worker(tmp_path, mnet25_dir, t1_path):
    """The engine is set through the backend entry's env and recorded by the worker that ran it."""
    out = subprocess.run([sys.executable, "benchmarks/mxnet_engine_check.py", "--model", str(mnet25_dir),
                          "--image", str(t1_path), "--size", "320x224", "--loops", "3", "--warmup", "1",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), out.stderr  # 1: noisy verdict at 3 loops; the plumbing is what is tested
    (check,) = tmp_path.iterdir()
    verdict = json.loads((check / "verdict.json").read_text())
    assert verdict["engines_recorded"] == {"threaded": "ThreadedEnginePerDevice", "naive": "NaiveEngine"}
    runs = {p.name.rsplit("-", 1)[-1]: p for p in check.iterdir() if p.is_dir()}
    assert sorted(runs) == ["naive", "threaded"]
    cfg = yaml.safe_load((runs["naive"] / "config.yaml").read_text())
    assert cfg["backends"][0]["env"] == {"MXNET_ENGINE_TYPE": "NaiveEngine"}
    assert (check / "summary.md").read_text().count("| threaded |") == 1
