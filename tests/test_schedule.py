"""Interleaved rounds with real worker processes: order, failure isolation, interrupt and resume,
the same detections as the sequential schedule, and paired statistics that see through shared noise."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from retinabench.harness.schedule import Schedule, groups, round_orders
from retinabench.records import RowId
from retinabench.report.stats import median_ci, ratio_ci
from retinabench.store import RunStore

SIZE = {"mode": "fit", "width": 320, "height": 224}
FAST = ["empty", "onnxruntime", "opencv-onnx"]


def _scenario(tmp: Path, mnet25_dir: Path, t1_path: Path, backends, **extra) -> Path:
    cfg = tmp / "s.yaml"
    data = {"name": "rounds", "model": str(mnet25_dir), "images": [str(t1_path)], "input": SIZE, "threads": 1,
            "loops": 24, "warmup": 2, "round_loops": 4, "rewarm_loops": 1, "seed": 7, "backends": backends,
            "processes": 1,   # rounds as they are within one process (tests/test_processes.py: several)
            "reference": "onnxruntime"}
    data.update(extra)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _bench(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _run(cfg: Path, out: Path, *extra) -> Path:
    res = _bench("--config", str(cfg), "--out", str(out), *extra)
    assert res.returncode in (0, 3), res.stderr
    (run,) = sorted(out.iterdir())[-1:]
    return run


def _key(backend: str) -> str:
    return RowId(backend, input="320x224").key


# --- the plan --------------------------------------------------------------------------------------

def test_round_orders_are_permutations_reproducible_from_the_seed():
    orders = round_orders(5, 20, seed=123, group=0)
    assert all(sorted(o) == list(range(5)) for o in orders)
    assert orders == round_orders(5, 20, seed=123, group=0)
    assert orders != round_orders(5, 20, seed=124, group=0) and orders != round_orders(5, 20, seed=123, group=1)
    assert len({tuple(o) for o in orders}) > 1  # shuffled, not one order repeated


def test_schedule_defaults_and_groups():
    s = Schedule.of("interleaved", 1000, seed=1)
    assert (s.round_loops, s.rewarm_loops) == (50, 5) and s.rounds(1000) == [50] * 20
    assert Schedule.of("interleaved", 1010, seed=1, round_loops=50).rounds(1010)[-1] == 10
    items = [("a", 1), ("b", 2), ("c", 1), ("d", 1)]
    assert groups(items, lambda x: x[1], None) == [[("a", 1), ("c", 1), ("d", 1)], [("b", 2)]]
    assert groups(items, lambda x: x[1], 2) == [[("a", 1), ("c", 1)], [("d", 1)], [("b", 2)]]


# --- real runs -------------------------------------------------------------------------------------

def test_rows_measure_one_at_a_time_in_the_recorded_order(tmp_path, mnet25_dir, t1_path):
    run = _run(_scenario(tmp_path, mnet25_dir, t1_path, FAST), tmp_path / "r")
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete" and meta["schedules"][-1]["seed"] == 7
    (group,) = meta["groups"]
    assert group["orders"] == round_orders(3, 6, 7, 0)
    rows = RunStore(run).read_rows()
    windows = {}  # (round, start, end, key)
    for r in rows.values():
        assert r.status == "passed" and len(r.samples_ns) == 24 and r.rewarm_ns.shape == (5, 4)
        assert sorted(set(r.rounds.tolist())) == list(range(6)) and r.group == "s0g0"
        for rnd, start, end in r.result.windows:
            windows.setdefault(int(rnd), []).append((start, end, r.key))
    for rnd, order in enumerate(group["orders"]):
        chunks = sorted(windows[rnd])
        assert [k for _, _, k in chunks] == [group["rows"][i] for i in order]   # the shuffled order, measured
        assert all(a[1] <= b[0] for a, b in zip(chunks, chunks[1:]))          # one worker at a time
    lines = [ln for ln in (run / "summary.csv").read_text().splitlines()[1:] if ",inference," in ln]
    assert len(lines) == 3 and all(",s0g0," in ln and ",true" in ln for ln in lines)  # paired ratios


def test_a_worker_that_dies_mid_round_fails_its_row_only(tmp_path, mnet25_dir, t1_path):
    backends = [{"name": "empty", "options": {"fault": "segfault", "fault_after": 13}}, "onnxruntime", "opencv-onnx"]
    run = _run(_scenario(tmp_path, mnet25_dir, t1_path, backends), tmp_path / "r")
    rows = {r.key: r for r in RunStore(run).read_rows().values()}
    dead = rows[_key("empty")]
    assert dead.status == "failed" and "SIGSEGV" in dead.reason and "measured loops" in dead.reason, dead.reason
    for name in ("onnxruntime", "opencv-onnx"):
        assert rows[_key(name)].status == "passed" and len(rows[_key(name)].samples_ns) == 24
    assert json.loads((run / "run.json").read_text())["status"] == "partial"


def test_a_row_that_outruns_its_timeout_mid_round_fails_alone(tmp_path, mnet25_dir, t1_path):
    # mxnet at 1280x896 takes far longer than 8 s for its 200 loops; the quick rows are not slowed by it
    cfg = _scenario(tmp_path, mnet25_dir, t1_path, ["mxnet", "empty"], loops=200, round_loops=20,
                    input={"mode": "fit", "width": 1280, "height": 896}, row_timeout_s=8, reference=None)
    run = _run(cfg, tmp_path / "r")
    rows = {r.id.backend: r for r in RunStore(run).read_rows().values()}
    assert rows["mxnet"].status == "failed" and "row_timeout_s=8" in rows["mxnet"].reason
    assert rows["empty"].status == "passed" and len(rows["empty"].samples_ns) == 200


def test_interrupt_keeps_finished_rows_and_resume_completes_the_run(tmp_path, mnet25_dir, t1_path):
    cfg = _scenario(tmp_path, mnet25_dir, t1_path, FAST, loops=600, round_loops=20, batches=[1, 2])
    proc = subprocess.Popen([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for the batch-1 group to be written, then for round 2 of batch 2
        runs = list((tmp_path / "r").glob("*/run.json"))
        if runs and len(json.loads(runs[0].read_text()).get("groups", [])) == 2:
            break
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    (run,) = (tmp_path / "r").iterdir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "incomplete" and len(meta["missing"]) == 3
    assert {r.id.batch for r in RunStore(run).read_rows().values()} == {1}
    resumed = _bench("--config", str(cfg), "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    rows = RunStore(run).read_rows()
    assert len(rows) == 6 and all(r.status == "passed" and len(r.samples_ns) == 600 for r in rows.values())
    assert {r.group for r in rows.values() if r.id.batch == 2} == {"s1g0"}  # measured again whole, together


def test_sequential_and_interleaved_find_the_same_faces(tmp_path, mnet25_dir, t1_path):
    dets = {}
    for schedule in ("sequential", "interleaved"):
        (tmp_path / schedule).mkdir()
        cfg = _scenario(tmp_path / schedule, mnet25_dir, t1_path, ["mxnet", "onnxruntime"], schedule=schedule)
        run = _run(cfg, tmp_path / schedule / "r")
        dets[schedule] = json.loads((run / "detections.json").read_text())
    assert dets["sequential"].keys() == dets["interleaved"].keys()
    for k in dets["sequential"]:
        assert dets["sequential"][k]["faces_per_image"] == dets["interleaved"][k]["faces_per_image"]
        assert len(dets["sequential"][k]["faces_per_image"][0]) == 6


# --- the statistics (synthetic samples, no timing) ---------------------------------------------------

def test_pairing_by_round_sees_through_a_slowdown_both_rows_shared():
    rng = np.random.default_rng(3)
    rounds = np.repeat(np.arange(20), 50)
    slow = np.repeat(rng.uniform(0.8, 1.6, 20), 50)   # a noisy neighbour: whole rounds slower or faster
    ref = 10.0 * slow * (1 + 0.02 * rng.standard_normal(1000))
    row = 12.0 * slow * (1 + 0.02 * rng.standard_normal(1000))
    paired = ratio_ci(row, ref, rounds, rounds, paired=True)
    unpaired = ratio_ci(row, ref, rounds, rounds, paired=False)
    assert paired.paired and not unpaired.paired
    assert paired.low <= 1.2 <= paired.high
    assert (paired.high - paired.low) * 5 < unpaired.high - unpaired.low
    # rows of different sessions cannot be paired, whatever their round numbers say
    assert not ratio_ci(row, ref, rounds, None, paired=True).paired


def test_the_median_interval_resamples_rounds_not_loops():
    rng = np.random.default_rng(4)
    rounds = np.repeat(np.arange(20), 50)
    x = np.repeat(rng.uniform(9, 11, 20), 50) + 0.01 * rng.standard_normal(1000)   # rounds differ, loops do not
    by_round, by_loop = median_ci(x, rounds), median_ci(x, np.zeros(1000, int))
    assert by_round.low < by_round.estimate < by_round.high
    assert by_round.high - by_round.low > 0.2   # round-to-round spread, not the 0.01 loop jitter
    assert median_ci(x, rounds) == by_round      # fixed seed
    assert by_loop.high - by_loop.low > 0        # one round: contiguous blocks are resampled instead
