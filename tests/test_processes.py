"""Several worker processes per row, contention measured and measured around, the regression gate.

Real worker processes and real runtimes throughout; a real CPU hog (a busy Python process started
here) provides the contention. The statistics are checked on synthetic samples with a known process
effect, where the truth is known.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from retinabench.harness.contention import contended
from retinabench.harness.cpu_load import others
from retinabench.harness.schedule import Schedule, process_blocks
from retinabench.report.stats import median_ci, process_stats, ratio_ci
from retinabench.store import RunStore

SIZE = {"mode": "fit", "width": 320, "height": 224}
HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def _scenario(tmp: Path, backends, **extra) -> Path:
    cfg = tmp / "s.yaml"
    data = {"name": "procs", "model": "default", "images": ["default"], "input": SIZE, "threads": 1,
            "loops": 24, "warmup": 2, "round_loops": 4, "rewarm_loops": 1, "seed": 3, "backends": backends,
            "reference": backends[0] if isinstance(backends[0], str) else backends[0]["name"]}
    data.update(extra)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _bench(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _run(cfg: Path, out: Path, *extra) -> Path:
    res = _bench("--config", str(cfg), "--out", str(out), *extra)
    assert res.returncode == 0, res.stderr
    (run,) = sorted(out.iterdir())[-1:]
    return run


# --- the plan --------------------------------------------------------------------------------------

def test_processes_take_whole_blocks_of_rounds_and_split_the_warmup():
    assert process_blocks(6, 3) == [0, 2, 4] and process_blocks(20, 20) == list(range(20))
    s = Schedule.of("interleaved", 300, seed=1, processes=None)
    assert s.processes_for(["cpu"], 20) == 10 and s.processes_for(["cuda:0"], 20) == 3
    assert s.processes_for(["cpu", "cuda"], 20) == 10       # a group with a CPU row: the CPU's default
    assert s.processes_for(["cpu"], 4) == 4                   # never more processes than rounds
    assert Schedule.of("interleaved", 300, seed=1, processes=1).processes_for(["cpu"], 20) == 1
    assert s.process_warmup(50, 10) == 5 and s.process_warmup(50, 1) == 50 and s.process_warmup(2, 10) == 2
    short = Schedule.of("interleaved", 20, seed=1)
    assert short.rounds(20) == [5] * 4                        # never 1-loop rounds: fewer, longer ones


def test_a_row_runs_in_its_processes_and_its_samples_carry_them(tmp_path):
    run = _run(_scenario(tmp_path, ["onnxruntime", "empty"], processes=3), tmp_path / "r")
    rows = RunStore(run).read_rows()
    assert len(rows) == 2
    for r in rows.values():
        assert r.status == "passed" and len(r.samples_ns) == 24
        assert sorted(set(r.processes.tolist())) == [0, 1, 2]
        # process k measured a contiguous block of rounds: 6 rounds of 4 loops, two per process
        for k in range(3):
            assert sorted(set(r.rounds[r.processes == k].tolist())) == [2 * k, 2 * k + 1]
        procs = r.result.processes
        assert [p["process"] for p in procs] == [0, 1, 2]
        assert len({p["pid"] for p in procs}) == 3            # three real processes, one after another
        loads = [p["load_s"] for p in procs]
        assert r.result.load_s == pytest.approx(float(np.median(loads)))
        assert len(r.warmup_ns) == 3 * 2                      # each process warms up (2 loops, the scenario's)
        assert len(r.result.contention) == 6 and all("others_s" in c for c in r.result.contention)
    lines = [ln for ln in (run / "summary.csv").read_text().splitlines()]
    header = lines[0].split(",")
    total = [dict(zip(header, ln.split(","))) for ln in lines[1:] if ",total," in ln]
    assert {ln["processes"] for ln in total} == {"3"}
    assert all(float(ln["load_s_min"]) <= float(ln["load_s"]) <= float(ln["load_s_max"]) for ln in total)


def test_one_process_is_the_harness_as_it_was(tmp_path):
    run = _run(_scenario(tmp_path, ["onnxruntime", "empty"], processes=1), tmp_path / "r")
    for r in RunStore(run).read_rows().values():
        assert r.processes is None and r.result.processes == [] and r.rewarm_ns.shape == (5, 4)
        assert len(r.warmup_ns) == 2


# --- the statistics --------------------------------------------------------------------------------

def _with_process_effect(seed: int, k: int = 10, rounds: int = 2, loops: int = 15, effect: float = 0.05):
    """Samples whose processes each carry their own offset (a layout drawn at start-up), plus loop noise."""
    rng = np.random.default_rng(seed)
    x, r, p = [], [], []
    for proc in range(k):
        level = 10.0 * (1 + effect * rng.standard_normal())
        for rnd in range(rounds):
            x += list(level * (1 + 0.01 * rng.standard_normal(loops)))
            r += [proc * rounds + rnd] * loops
            p += [proc] * loops
    return np.array(x), np.array(r), np.array(p)


def test_the_two_level_interval_is_wider_where_processes_differ():
    x, rounds, procs = _with_process_effect(0)
    one = median_ci(x, rounds)                  # as if one process had measured every round
    two = median_ci(x, rounds, procs)
    assert (two.high - two.low) > 2 * (one.high - one.low)
    stats = process_stats(x, rounds, procs)
    assert stats["process_ratio"] > 5 and stats["process_spread"] > 0.02


def test_the_two_level_interval_covers_the_truth_where_the_one_level_one_does_not():
    """Over replicates of a run, the interval must contain the true median (10.0) about 95% of the time."""
    hits_two = hits_one = 0
    n = 60
    for seed in range(n):
        x, rounds, procs = _with_process_effect(100 + seed, k=12, rounds=6, loops=8)
        two, one = median_ci(x, rounds, procs), median_ci(x, rounds)
        hits_two += two.low <= 10.0 <= two.high
        hits_one += one.low <= 10.0 <= one.high
    # measured: 59 and 33 of 60; a process's rounds share its offset, so resampling rounds alone misses it
    assert hits_two / n >= 0.9 and hits_one / n <= 0.7


def test_paired_ratios_pair_process_blocks():
    x, rounds, procs = _with_process_effect(1, effect=0.0)
    slow = x * 1.3
    slow[procs == 3] *= 1.5       # a slowdown that hit one block of rounds, in both rows alike
    fast = x.copy()
    fast[procs == 3] *= 1.5
    paired = ratio_ci(slow, fast, rounds, rounds, paired=True, a_processes=procs, b_processes=procs)
    unpaired = ratio_ci(slow, fast, rounds, rounds, paired=False, a_processes=procs, b_processes=procs)
    assert paired.paired and paired.low <= 1.3 <= paired.high
    assert (paired.high - paired.low) < (unpaired.high - unpaired.low)


def test_a_chunk_is_contended_only_beyond_the_tick_uncertainty():
    quiet = others(0.3, busy_s=0.62, own_s=0.58, harness_s=0.0, steal_s=0.0, cpus=2, limit_cores=None)
    assert not contended(quiet, 0.1)          # 0.04 s: within the 4 ticks of uncertainty
    hog = others(0.3, busy_s=0.9, own_s=0.58, harness_s=0.0, steal_s=0.0, cpus=2, limit_cores=None)
    assert contended(hog, 0.1) and not contended(hog, None)
    assert contended({"gpu_others_busy": True}, 0.1)


# --- contention: a real hog -----------------------------------------------------------------------

def _hog(seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOG.format(seconds=seconds)])


def test_a_cpu_hog_is_seen_and_its_chunks_are_measured_again(tmp_path):
    """The hog burns a core while the row measures; every chunk it touched is set apart and measured
    again once it stops, and the row says how many."""
    cfg = _scenario(tmp_path, ["onnxruntime"], processes=1, loops=60, round_loops=10, threads=2,
                    input={"mode": "fit", "width": 640, "height": 448})
    hog = _hog(7.0)
    try:
        run = _run(cfg, tmp_path / "r")
    finally:
        hog.kill()
        hog.wait()
    (row,) = RunStore(run).read_rows().values()
    entries = row.result.contention
    replaced = [c for c in entries if c["replaced"]]
    assert replaced, entries
    assert all(c["contended"] and c["others_cores"] > 0.1 for c in replaced)
    kept = [c for c in entries if not c["replaced"]]
    assert len(kept) == 6 and not any(c["contended"] for c in kept)
    assert row.replaced_ns is not None and len(row.replaced_ns) == 10 * len(replaced)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete"
    header, *lines = (run / "summary.csv").read_text().splitlines()
    total = dict(zip(header.split(","), [ln for ln in lines if ",total," in ln][0].split(",")))
    assert int(total["chunks_replaced"]) == len(replaced) and total["chunks_contended"] == "0"


def test_contention_that_never_clears_is_said_and_flagged(tmp_path):
    cfg = _scenario(tmp_path, ["onnxruntime"], processes=1, loops=20, round_loops=10, threads=2,
                    contention_retries=1, input={"mode": "fit", "width": 640, "height": 448})
    hog = _hog(120.0)
    try:
        res = _bench("--config", str(cfg), "--out", str(tmp_path / "r"))
    finally:
        hog.kill()
        hog.wait()
    assert res.returncode == 0, res.stderr
    (run,) = (tmp_path / "r").iterdir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "contended" and "contention never cleared" in meta["reason"]
    assert "contention never cleared" in res.stdout + res.stderr
    header, *lines = (run / "summary.csv").read_text().splitlines()
    total = dict(zip(header.split(","), [ln for ln in lines if ",total," in ln][0].split(",")))
    assert "contended" in total["flags"].split() and int(total["chunks_contended"]) >= 1


# --- the regression gate ---------------------------------------------------------------------------

def test_the_gate_fails_on_a_real_slowdown_and_passes_on_identical_scenarios(tmp_path):
    size = {"mode": "fit", "width": 640, "height": 448}
    # five processes per run: an interval between two runs rests on their processes, and with two it is widened
    # by Student's t at one degree of freedom (12.7 against 1.96): 1 thread against 2 then looked "within noise"
    fast = _run(_scenario(tmp_path, ["onnxruntime"], threads=2, loops=100, round_loops=10, processes=5,
                          input=size), tmp_path / "fast")
    again = _run(_scenario(tmp_path, ["onnxruntime"], threads=2, loops=100, round_loops=10, processes=5,
                           input=size), tmp_path / "again")
    slow = _run(_scenario(tmp_path, ["onnxruntime"], threads=1, loops=100, round_loops=10, processes=5,
                          input=size), tmp_path / "slow")
    failed = _bench("compare", str(fast), str(slow), "--fail-if-slower", "10")
    assert failed.returncode == 6, failed.stdout + failed.stderr
    assert "onnxruntime" in failed.stdout.splitlines()[-1] and "slower than 1.1x" in failed.stdout
    passed = _bench("compare", str(fast), str(again), "--fail-if-slower", "10")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "no row's total is slower" in passed.stdout
    bad = _bench("compare", str(fast), str(again), "--fail-if-slower", "-3")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
