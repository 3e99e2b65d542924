"""The Dask executor with real processes: a real `distributed.LocalCluster` started here, real
bench.py runs against it, real worker processes killed and runs interrupted. No mocks.

The cluster: one worker holding this host's measuring slot (MEASURE=1) and one plain worker with
two threads, so a CPU row could run beside another if the resources did not keep them apart.
Its scheduler keeps Dask's default allowed-failures (3): a unit whose worker dies is handed to
another worker, and must then fail its rows rather than measure again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

distributed = pytest.importorskip("distributed", reason="the Dask executor's tests need `distributed` "
                                                        "(pip install -r requirements-dask.txt)")

from conftest import ROOT, wait_for as _wait_for  # noqa: E402
from retinabench.harness.units import overlaps  # noqa: E402
from retinabench.records import RowId, WorkerResult  # noqa: E402
from retinabench.store import RowResult, RunStore  # noqa: E402

ROWS = [RowId("empty", input="320x224", batch=b, max_batch=b).key for b in (1, 2, 3)]


# --- the pure parts ------------------------------------------------------------------------

def _row(backend: str, host: str, windows, busy=None, batch: int = 1) -> RowResult:
    result = WorkerResult("passed", windows=[[i, a, b] for i, (a, b) in enumerate(windows)])
    return RowResult(RowId(backend, batch=batch), result, host=host, busy=busy or [])


def test_overlaps_are_work_on_one_machine_during_measured_windows():
    a = _row("empty", "h1", [(10, 20)], busy=[[9, 21]])
    b = _row("mxnet", "h1", [(30, 40)], busy=[[15, 16], [29, 41]])   # loading while a measured
    c = _row("onnxruntime", "h2", [(10, 20)], busy=[[9, 21]])        # another host at the same time
    d = _row("torch", "h1", [(22, 28)], busy=[[21, 29]])              # between a and b: alone
    e = _row("openvino", "", [(10, 20)])                               # host unknown: overlaps nothing
    got = overlaps([a, b, c, d, e])
    assert got[a.id] == [b.key] and got[b.id] == [] and got[c.id] == [] and got[d.id] == [] and got[e.id] == []
    # containers on one kernel are one machine: their hosts map to one boot id
    same = overlaps([a, c], {"h1": "boot", "h2": "boot"})
    assert same[a.id] == [c.key] and same[c.id] == [a.key]
    # a row without `busy` (written before it existed) counts its measured windows as its work
    old = _row("opencv", "h1", [(19, 25)])
    assert overlaps([a, old])[a.id] == [old.key]
    # touching is not overlapping: one worker at a time, each stretch ends before the next starts
    assert overlaps([_row("empty", "h", [(1, 2)], [[0, 2]]), _row("mxnet", "h", [(3, 4)], [[2, 4]])]) == \
        {RowId("empty"): [], RowId("mxnet"): []}


def test_row_files_keep_host_busy_and_overlaps_and_old_ones_still_load(tmp_path):
    store = RunStore(tmp_path)
    r = _row("empty", "h1", [(1, 2)], busy=[[0.5, 2.5]])
    r.overlaps = ["mxnet-default-cpu-native-b1-m1"]
    store.write_row(r)
    (back,) = store.read_rows().values()
    assert (back.host, back.busy, back.overlaps) == ("h1", [[0.5, 2.5]], ["mxnet-default-cpu-native-b1-m1"])
    d = json.loads((tmp_path / "rows" / f"{r.key}.json").read_text())
    for k in ("host", "busy", "overlaps"):
        del d[k]
    (tmp_path / "rows" / f"{r.key}.json").write_text(json.dumps(d))
    (back,) = store.read_rows().values()
    assert (back.host, back.busy, back.overlaps) == ("", [], [])


def test_task_env_drops_what_a_nanny_added_only():
    from retinabench.harness.dask_executor import task_env
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "4", "MALLOC_TRIM_THRESHOLD_": "65536", "PATH": "/bin"}
    assert task_env(env) == {"MKL_NUM_THREADS": "4", "PATH": "/bin"}
    assert task_env(env, nanny=False) == env


def test_overlap_flag_in_the_summary():
    import numpy as np
    from retinabench.report.summary import FLAGS, summary_rows
    r = _row("empty", "h1", [(1, 2)])
    r.samples_ns = np.full((8, 4), 1_000_000, np.int64)
    r.samples_ns[:, 3] = 3_000_000
    assert all("overlap" not in s["flags"].split() for s in summary_rows([r]))
    r.overlaps = ["other"]
    assert all("overlap" in s["flags"].split() for s in summary_rows([r])) and "overlap" in FLAGS


@pytest.mark.parametrize("data, message", [
    ({"executor": "ray"}, "executor: expected one of local, dask"),
    ({"executor": "dask", "scheduler": "tcp://nowhere"}, "scheduler: expected a Dask scheduler address"),
    ({"executor": "dask", "scheduler": "tcp://h:99999"}, "scheduler: expected a Dask scheduler address"),
    ({"scheduler": "tcp://10.0.0.5:8786"}, "it needs executor: dask"),
    ({"executor": "dask", "backends": [{"name": "empty", "device": "cuda:1"}]}, "backends[0].device: cuda:1"),
])
def test_executor_fields_are_validated_in_one_line(data, message):
    from retinabench.config import scenario_from_dict
    from retinabench.errors import ConfigError
    base = {"model": "default", "input": {"mode": "fit", "width": 320, "height": 224}, "backends": ["empty"]}
    with pytest.raises(ConfigError) as e:
        scenario_from_dict({**base, **data})
    assert message in str(e.value) and "\n" not in str(e.value)
    ok = scenario_from_dict({**base, "executor": "dask", "scheduler": "tcp://10.0.0.5:8786"})
    assert (ok.executor, ok.scheduler) == ("dask", "tcp://10.0.0.5:8786")


def test_plan_splits_a_groups_cpu_and_gpu_rows_for_dask():
    from retinabench.config import scenario_from_dict
    from retinabench.harness.dask_executor import unit_resources
    from retinabench.harness.units import plan_units
    from retinabench.harness.schedule import Schedule
    sc = scenario_from_dict({"model": "default", "input": {"mode": "fit", "width": 320, "height": 224},
                             "loops": 8, "backends": ["empty", {"name": "torch", "device": "cuda"}, "mxnet"]})
    sched = Schedule.of("interleaved", 8, seed=1, round_loops=4)
    (local,) = plan_units(sc.rows(), sc, sched, 0)
    assert [r.id.backend for r in local.rows] == ["empty", "torch", "mxnet"]
    cpu, gpu = plan_units(sc.rows(), sc, sched, 0, split_devices=True)
    assert [r.id.backend for r in cpu.rows] == ["empty", "mxnet"] and [r.id.backend for r in gpu.rows] == ["torch"]
    assert unit_resources(cpu) == {"MEASURE": 1} and unit_resources(gpu) == {"GPU": 1}
    assert (cpu.label, gpu.label) == ("s0g0", "s0g1")


# --- a real cluster, real runs -------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    import dask
    from retinabench.harness.dask_executor import add_measure_worker
    saved = dict(os.environ)
    # the nanny would write its pre-spawn variables into this process's environment, which every
    # later test's bench.py would inherit: keep them out (the task drops them; tested above)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"MALLOC_TRIM_THRESHOLD_": None,
                          "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None}}):
        c = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                                     host="127.0.0.1")   # a plain worker: no measuring slot
        measure = add_measure_worker(c)
    try:
        yield c
    finally:
        c.sync(measure.close)
        c.close()
        os.environ.clear()
        os.environ.update(saved)


def _workers(c) -> Dict[str, dict]:
    with distributed.Client(c, set_as_default=False) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        pids = client.run(os.getpid)
    return {a: {**w, "pid": pids.get(a)} for a, w in info.items()}


def _config(tmp: Path, mnet25_dir, t1_path, loops=2000, batches=(1, 2, 3), **extra) -> Path:
    cfg = tmp / "scenario.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "dask", "model": str(mnet25_dir), "images": [str(t1_path)],
        "input": {"mode": "fit", "width": 320, "height": 224}, "threads": 1, "batches": list(batches),
        "loops": loops, "warmup": 2, "backends": ["empty"], **extra}))
    return cfg


def _bench(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _only(out: Path) -> Path:
    (run,) = [d for d in out.iterdir() if (d / "run.json").is_file()]
    return run


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _ours(pid: int) -> bool:
    """A descendant of this test process (other people's runs on this machine use the same row keys)."""
    for _ in range(8):
        try:
            pid = _ppid(pid)
        except (OSError, IndexError, ValueError):
            return False
        if pid == os.getpid():
            return True
        if pid <= 1:
            return False
    return False


def _bench_workers() -> Dict[int, str]:
    """Live `retinabench.harness.worker` processes started under this test: pid -> command line."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if "retinabench.harness.worker" in cmd and state not in ("Z", "X") and _ours(int(d.name)):
                found[int(d.name)] = cmd
    return found


def _worker_of(key: str) -> Optional[int]:
    """The live worker of a row: its job is .work/<key>/p<k>/job.json (process k of the row)."""
    found = re.compile(rf"/{re.escape(key)}/p\d+/job\.json")
    return next((pid for pid, cmd in _bench_workers().items() if found.search(cmd)), None)


def wait_for(what, timeout: float = 90.0, step: float = 0.05):
    return _wait_for(what, timeout, step)


def _faces(run: Path) -> Dict[str, list]:
    return {k: v["faces_per_image"] for k, v in json.loads((run / "detections.json").read_text()).items()}


def test_smoke_through_dask_matches_the_local_executor(tmp_path, cluster, mnet25_dir, t1_path):
    common = ["--config", "configs/smoke.yaml", "--model", str(mnet25_dir), "--image", str(t1_path)]
    runs = {}
    for name, extra in (("local", []), ("dask", ["--executor", "dask", "--scheduler", cluster.scheduler_address]),
                        ("own-cluster", ["--executor", "dask"])):
        res = _bench(*common, "--out", str(tmp_path / name), *extra)
        assert res.returncode == 0, res.stderr
        runs[name] = _only(tmp_path / name)
    own = json.loads((runs["own-cluster"] / "run.json").read_text())["executors"][-1]
    assert own["cluster"].startswith("LocalCluster at tcp://127.0.0.1:")
    assert [w["resources"] for w in own["workers"].values()] == [{"MEASURE": 1}]   # one slot, one thread
    assert [w["nthreads"] for w in own["workers"].values()] == [1]
    local = RunStore(runs["local"]).read_rows()
    for name in ("dask", "own-cluster"):
        rows = RunStore(runs[name]).read_rows()
        assert sorted(rows) == sorted(local) and len(rows) == 2
        assert {k: r.status for k, r in rows.items()} == {k: r.status for k, r in local.items()}
        assert all(r.status == "passed" and len(r.samples_ns) == 5 for r in rows.values())
        assert _faces(runs[name]) == _faces(runs["local"])
        assert {r.group for r in rows.values()} == {"s0g0"}   # one interleaved group, one task
        (host,) = {r.host for r in rows.values()}
        assert host and (runs[name] / "hosts" / f"{host}.json").is_file()
        assert all(r.overlaps == [] for r in rows.values())
        meta = json.loads((runs[name] / "run.json").read_text())
        assert meta["status"] == "complete" and meta["executors"][-1]["executor"] == "dask"
        assert meta["groups"][0]["resources"] == {"MEASURE": 1}
        # the rows' raw outputs came back too: the accuracy section compares the same numbers
        assert (runs[name] / "accuracy_outputs.csv").read_text() == (runs["local"] / "accuracy_outputs.csv").read_text()
    assert all(r.host for r in local.values()) and "executors" not in json.loads((runs["local"] / "run.json").read_text())


def test_cpu_rows_never_overlap_on_one_host(tmp_path, cluster, mnet25_dir, t1_path):
    """Five sequential units, a cluster with three threads: the one MEASURE slot keeps them apart."""
    workers = _workers(cluster)
    assert sum(w["nthreads"] for w in workers.values()) == 3
    cfg = _config(tmp_path, mnet25_dir, t1_path, loops=300, batches=(1, 2, 3, 4, 5), schedule="sequential")
    res = _bench("--config", str(cfg), "--out", str(tmp_path / "r"), "--executor", "dask",
                 "--scheduler", cluster.scheduler_address)
    assert res.returncode == 0, res.stderr
    rows = list(RunStore(_only(tmp_path / "r")).read_rows().values())
    assert len(rows) == 5 and all(r.status == "passed" for r in rows)
    assert len({r.host for r in rows}) == 1
    assert all(r.overlaps == [] for r in rows)                      # recorded: nobody beside them
    spans = sorted((r.busy[0][0], r.busy[-1][1]) for r in rows)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))     # and so it was


@pytest.mark.parametrize("where", ["test-cluster", "own-cluster"])
def test_killed_dask_worker_fails_its_rows_and_the_others_complete(tmp_path, cluster, mnet25_dir, t1_path, where):
    """The scheduler hands the lost worker's units to the restarted worker: the one that had started
    finds its mark and fails its rows, the one that was only queued there runs. On the test's
    cluster and on bench.py's own (whose nanny lives in bench.py's process)."""
    cfg = _config(tmp_path, mnet25_dir, t1_path)
    scheduler = ["--scheduler", cluster.scheduler_address] if where == "test-cluster" else []
    bench = subprocess.Popen([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r"),
                              "--executor", "dask", *scheduler],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = wait_for(lambda: _worker_of(ROWS[0]))
    os.kill(first, signal.SIGKILL)                   # a row's own worker process: that row fails
    second = wait_for(lambda: _worker_of(ROWS[1]))
    dask_worker = _ppid(second)                      # the Dask worker process running the unit
    assert b"spawn_main" in Path(f"/proc/{dask_worker}/cmdline").read_bytes()   # a nanny's worker, not bench.py
    time.sleep(0.3)
    os.kill(dask_worker, signal.SIGKILL)             # what an OOM killer or a lost node does
    out, err = bench.communicate(timeout=240)
    assert bench.returncode == 3, err
    assert "Traceback" not in err
    run = _only(tmp_path / "r")
    rows = {k: json.loads((run / "rows" / f"{k}.json").read_text()) for k in ROWS}
    assert rows[ROWS[0]]["status"] == "failed" and "worker killed by SIGKILL" in rows[ROWS[0]]["reason"]
    assert rows[ROWS[1]]["status"] == "failed"
    assert "lost while measuring" in rows[ROWS[1]]["reason"] and "not measured again" in rows[ROWS[1]]["reason"]
    assert rows[ROWS[1]]["host"] == rows[ROWS[2]]["host"]   # where it was lost: the unit's mark says
    assert rows[ROWS[2]]["status"] == "passed" and rows[ROWS[2]]["host"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "partial" and meta["missing"] == []
    wait_for(lambda: _worker_of(ROWS[1]) is None, timeout=10)   # its worker died with its Dask worker
    wait_for(lambda: len(_workers(cluster)) == 2, timeout=60)    # the nanny restarted it, for the next tests


def _fingerprint(path: Path) -> tuple:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def test_interrupted_dask_run_resumes(tmp_path, cluster, mnet25_dir, t1_path):
    cfg = _config(tmp_path, mnet25_dir, t1_path, loops=3000)
    args = ["--executor", "dask", "--scheduler", cluster.scheduler_address]
    bench = subprocess.Popen([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r"), *args],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: list((tmp_path / "r").glob(f"*/rows/{ROWS[0]}.json")))
    running = wait_for(lambda: _worker_of(ROWS[1]))
    bench.send_signal(signal.SIGINT)
    out, err = bench.communicate(timeout=120)
    assert bench.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    run = _only(tmp_path / "r")
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "incomplete" and "SIGINT" in meta["reason"] and meta["missing"] == ROWS[1:]
    assert not (run / "rows" / f"{ROWS[1]}.json").exists()
    wait_for(lambda: not Path(f"/proc/{running}").exists() or _worker_of(ROWS[1]) is None, timeout=15)
    assert _worker_of(ROWS[2]) is None   # the queued unit never started
    kept = {p.name: _fingerprint(p) for p in (run / "rows").iterdir()}
    # the finished row's files (its stderr too, where its worker printed anything), nothing of the others
    assert {f"{ROWS[0]}.json", f"{ROWS[0]}.npz"} <= set(kept) <= {f"{ROWS[0]}.json", f"{ROWS[0]}.npz",
                                                                 f"{ROWS[0]}.stderr.txt"}

    resumed = _bench("--config", str(cfg), "--resume", str(run), *args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{ROWS[0]}:" not in resumed.stderr           # only the missing rows were submitted
    assert "2 row(s) in 2 task(s)" in resumed.stderr
    assert {p.name: _fingerprint(p) for p in (run / "rows").iterdir() if p.name in kept} == kept
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete" and meta["resumed_utc"] and len(meta["executors"]) == 2
    rows = RunStore(run).read_rows()
    assert all(r.status == "passed" and len(r.samples_ns) == 3000 and r.overlaps == [] for r in rows.values())
    assert {r.group for r in rows.values()} == {"s0g0", "s1g0", "s1g1"}


def test_an_unreachable_scheduler_is_one_line_and_no_run_folder(tmp_path, mnet25_dir, t1_path):
    import socket
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(tmp_path, mnet25_dir, t1_path, loops=3, batches=(1,))
    res = _bench("--config", str(cfg), "--out", str(tmp_path / "r"), "--executor", "dask",
                 "--scheduler", f"tcp://127.0.0.1:{port}", timeout=120)
    assert res.returncode == 2 and "cannot reach a Dask scheduler" in res.stderr, res.stderr
    info, error = res.stderr.strip().splitlines()   # the scenario's line, then the error's
    assert info.startswith("scenario dask:") and error.startswith(f"error: scheduler tcp://127.0.0.1:{port}")
    assert not (tmp_path / "r").exists()
    res = _bench("--config", str(cfg), "--executor", "dask", "--scheduler", "not an address")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "scheduler:" in res.stderr
    res = _bench("--config", str(cfg), "--scheduler", "tcp://127.0.0.1:8786")
    assert res.returncode == 2 and "--executor dask" in res.stderr


def test_contention_check_records_the_rows_beside_it(tmp_path, mnet25_dir, t1_path):
    """The deliberate opposite of the test above: two measuring slots on one host, a row measured
    alone and then beside another; the overlap is recorded and the ratio reported."""
    cfg = _config(tmp_path, mnet25_dir, t1_path, loops=400, batches=(1,), round_loops=40)
    res = subprocess.run([sys.executable, "tools/contention.py", "--config", str(cfg), "--row", "empty",
                          "--with", "1", "--settle", "1", "--out", str(tmp_path / "c")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (folder,) = (tmp_path / "c").iterdir()
    assert folder.name.endswith("-contention")
    report = json.loads((folder / "contention.json").read_text())
    assert report["with"] == 1 and report["overlaps"] and report["background_covered"] > 0.5
    total = report["stages"]["total"]
    assert total["alone_median_ms"] > 0 and total["together_median_ms"] > 0
    assert total["ratio_ci_low"] <= total["ratio"] <= total["ratio_ci_high"]
    for name in ("alone", "together"):
        (row,) = RunStore(folder / name).read_rows().values()
        assert row.status == "passed" and len(row.samples_ns) == 400
    assert "together / alone" in res.stdout
