"""Trustworthy under failure: interrupted runs, dying workers, concurrent runs, corrupt caches.

Every failure here is real: signals sent to the real bench.py process and its real workers, a
worker that really segfaults or aborts (the empty backend's documented fault-injection option), a
real runtime (MXNet) running out of a real memory limit.
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
from typing import Callable, Dict, List, Optional, Set

import pytest
import yaml

from conftest import ROOT, wait_for
from retinabench.records import RowId
from retinabench.store import RunStore

ROWS = [RowId("empty", input="320x224", batch=b, max_batch=b).key for b in (1, 2, 3)]


# --- helpers: processes seen through /proc ---------------------------------------------------

def _stat(pid: int) -> Optional[List[str]]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, ... after "pid (comm) "


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children(pid: int) -> Dict[int, str]:
    """Live child processes of `pid` with their command lines."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st and int(st[1]) == pid and st[0] not in ("Z", "X"):
                try:
                    out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    pass
    return out


def ignores_sigint(pid: int) -> bool:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return False


class Bench:
    """A real `bench.py --config` process whose workers are tracked while it runs."""

    def __init__(self, cfg: Path, out: Path, *extra: str, new_session: bool = False, env=None):
        self.out = out
        self.proc = subprocess.Popen([sys.executable, "bench.py", "--config", str(cfg), "--out", str(out), *extra],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=new_session, env=env)
        self.seen: Set[int] = set()

    def worker(self, key: str) -> Optional[int]:
        kids = children(self.proc.pid)
        self.seen.update(kids)
        found = re.compile(rf"/\.work/{re.escape(key)}/p\d+/job\.json")   # process k of the row
        return next((pid for pid, cmd in kids.items() if found.search(cmd)), None)

    def run_dir(self) -> Optional[Path]:
        dirs = [d for d in self.out.glob("*") if (d / "run.json").exists()] if self.out.exists() else []
        return dirs[0] if len(dirs) == 1 else None

    def row_written(self, key: str) -> bool:
        d = self.run_dir()
        return bool(d and (d / "rows" / f"{key}.json").exists())

    def finish(self, timeout: float = 120) -> subprocess.CompletedProcess:
        out, err = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)


def scenario(tmp: Path, loops: int = 2000, backends=("empty",), batches=(1, 2, 3), size=(320, 224)) -> Path:
    cfg = tmp / "scenario.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "fail", "model": str(SHARED_MODEL), "images": [str(SHARED_IMAGE)],
        "input": {"mode": "fit", "width": size[0], "height": size[1]}, "threads": 1,
        "batches": list(batches), "loops": loops, "warmup": 2, "backends": list(backends),
    }))
    return cfg


@pytest.fixture(autouse=True)
def _shared(mnet25_dir, t1_path):
    global SHARED_MODEL, SHARED_IMAGE
    SHARED_MODEL, SHARED_IMAGE = mnet25_dir, t1_path


def fingerprint(path: Path) -> tuple:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def interrupt_second_row(bench: Bench, send: Callable[[int], None]) -> subprocess.CompletedProcess:
    """Wait until row 1 is written and row 2's worker measures, then signal; return the outcome."""
    wait_for(lambda: bench.row_written(ROWS[0]))
    pid = wait_for(lambda: bench.worker(ROWS[1]))
    wait_for(lambda: ignores_sigint(pid))  # the worker is set up and running
    send(pid)
    return bench.finish()


def assert_interrupted(result: subprocess.CompletedProcess, bench: Bench, signame: str) -> Path:
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert "--resume" in result.stderr
    run = bench.run_dir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "incomplete" and signame in meta["reason"]
    assert meta["missing"] == ROWS[1:]
    assert json.loads((run / "rows" / f"{ROWS[0]}.json").read_text())["status"] == "passed"
    assert not (run / "rows" / f"{ROWS[1]}.json").exists()
    assert bench.seen and not any(alive(p) for p in bench.seen), "a worker outlived the run"
    return run


# --- interrupts -----------------------------------------------------------------------------

def test_sigterm_mid_run_keeps_finished_rows_and_resume_completes(tmp_path):
    cfg = scenario(tmp_path)
    bench = Bench(cfg, tmp_path / "results")

    def send(pid):
        # while the run holds its folder, a second process may not resume into it
        busy = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--resume", str(bench.run_dir())],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert busy.returncode == 2 and "another bench.py process" in busy.stderr, busy.stderr
        bench.proc.send_signal(signal.SIGTERM)

    run = assert_interrupted(interrupt_second_row(bench, send), bench, "SIGTERM")
    kept = {p.name: fingerprint(p) for p in (run / "rows").iterdir()}
    # the finished row's files (its stderr too, where its worker printed anything), nothing of the others
    assert {f"{ROWS[0]}.json", f"{ROWS[0]}.npz"} <= set(kept) <= {f"{ROWS[0]}.json", f"{ROWS[0]}.npz",
                                                                 f"{ROWS[0]}.stderr.txt"}

    resumed = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--resume", str(run)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{ROWS[0]}:" not in resumed.stderr  # only the missing rows ran
    assert {p.name: fingerprint(p) for p in (run / "rows").iterdir() if p.name in kept} == kept
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete" and meta["missing"] == [] and meta["resumed_utc"]
    for key in ROWS:
        assert json.loads((run / "rows" / f"{key}.json").read_text())["status"] == "passed"
    summary = (run / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 3 * 4


def test_sigint_to_the_parent_only(tmp_path):
    bench = Bench(scenario(tmp_path), tmp_path / "results")
    assert_interrupted(interrupt_second_row(bench, lambda pid: bench.proc.send_signal(signal.SIGINT)),
                       bench, "SIGINT")


def test_sigint_to_the_process_group_like_ctrl_c(tmp_path):
    """A terminal's Ctrl-C signals the whole foreground group; the worker leads its own session,
    so only the parent hears it and stops the worker itself."""
    bench = Bench(scenario(tmp_path), tmp_path / "results", new_session=True)
    result = interrupt_second_row(bench, lambda pid: os.killpg(bench.proc.pid, signal.SIGINT))
    assert_interrupted(result, bench, "SIGINT")


def test_parent_killed_outright_takes_its_worker_along(tmp_path):
    """SIGKILL gives the parent no chance to stop its worker: the kernel does (PR_SET_PDEATHSIG).
    So many loops that the worker writes a progress line only every ~10 s: a worker that merely
    died of the broken pipe at its next line would outlive the 3 s allowed here."""
    bench = Bench(scenario(tmp_path, loops=5_000_000, batches=(1,)), tmp_path / "results")
    pid = wait_for(lambda: bench.worker(ROWS[0]))
    wait_for(lambda: ignores_sigint(pid))
    time.sleep(0.5)  # well into the measured loop
    bench.proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up by the parent
    bench.finish()
    wait_for(lambda: not alive(pid), timeout=3)
    run = bench.run_dir()
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # it never got to say more


def test_resume_refuses_a_different_scenario(tmp_path):
    cfg = scenario(tmp_path, loops=3, batches=(1,))
    first = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    (run,) = (tmp_path / "r").iterdir()
    other = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--loops", "4", "--resume", str(run)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert other.returncode == 2 and "differs from the run's in 'loops'" in other.stderr
    assert "Traceback" not in other.stderr


# --- workers that die -----------------------------------------------------------------------

def test_killed_worker_fails_its_row_and_the_others_complete(tmp_path):
    bench = Bench(scenario(tmp_path), tmp_path / "results")
    first = wait_for(lambda: bench.worker(ROWS[0]))
    wait_for(lambda: ignores_sigint(first))
    os.kill(first, signal.SIGINT)  # a stray SIGINT to a worker does not cut its row short
    second = wait_for(lambda: bench.worker(ROWS[1]))
    wait_for(lambda: ignores_sigint(second))
    os.kill(second, signal.SIGKILL)  # what the kernel's OOM killer does
    result = bench.finish()
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    run = bench.run_dir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "partial" and "SIGKILL" in meta["reason"]
    rows = {k: json.loads((run / "rows" / f"{k}.json").read_text()) for k in ROWS}
    assert rows[ROWS[0]]["status"] == "passed" and rows[ROWS[2]]["status"] == "passed"
    assert rows[ROWS[1]]["status"] == "failed" and rows[ROWS[1]]["result"]["signal"] == "SIGKILL"
    assert "worker killed by SIGKILL" in rows[ROWS[1]]["reason"]


def test_segfaulting_backend_fails_one_row_through_the_cli(tmp_path):
    cfg = scenario(tmp_path, loops=3, batches=(1,),
                   backends=[{"name": "empty", "options": {"fault": "segfault", "fault_after": 2}}, "mxnet"])
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp_path / "r")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    (run,) = (tmp_path / "r").iterdir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "partial" and meta["missing"] == []
    empty = json.loads((run / "rows" / f"{ROWS[0]}.json").read_text())
    assert empty["status"] == "failed" and "SIGSEGV" in empty["reason"]
    mxnet = RowId("mxnet", input="320x224").key
    assert json.loads((run / "rows" / f"{mxnet}.json").read_text())["status"] == "passed"
    assert "empty" in out.stdout and "failed" in out.stdout


def _row(tmp: Path, backend, batch: int = 1, size=(320, 224)):
    from retinabench.config import scenario_from_dict
    s = scenario_from_dict({"model": str(SHARED_MODEL), "images": [str(SHARED_IMAGE)], "loops": 3, "warmup": 0,
                            "input": {"mode": "fit", "width": size[0], "height": size[1]},
                            "batches": [batch], "backends": [backend]})
    from retinabench.harness.runner import run_row
    return run_row(s, s.rows()[0], SHARED_MODEL, [SHARED_IMAGE], RunStore(tmp))


@pytest.mark.parametrize("fault, expect", [
    ("abort", "worker killed by SIGABRT"),
    ("exit", "worker exited with code 70"),
    ("raise", "RuntimeError: injected fault"),
])
def test_each_kind_of_worker_death_is_a_failed_row_with_its_reason(tmp_path, fault, expect):
    r = _row(tmp_path, {"name": "empty", "options": {"fault": fault}})
    assert r.status == "failed" and expect in r.reason
    assert r.samples_ns is None


def test_out_of_memory_in_a_real_runtime_is_a_failed_row(tmp_path, monkeypatch):
    monkeypatch.setenv("RETINABENCH_WORKER_MEMORY_LIMIT", "2G")
    r = _row(tmp_path, "mxnet", batch=32, size=(1280, 896))  # ~13 GB of activations
    assert r.status == "failed"
    assert "allocate" in r.reason.lower() or "MemoryError" in r.reason or "SIG" in r.reason, r.reason


def test_bad_memory_limit_is_a_one_line_error(tmp_path):
    env = {**os.environ, "RETINABENCH_WORKER_MEMORY_LIMIT": "lots"}
    out = subprocess.run([sys.executable, "bench.py", "--config", str(scenario(tmp_path, loops=1))], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "RETINABENCH_WORKER_MEMORY_LIMIT" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# --- concurrency and atomicity --------------------------------------------------------------

def test_two_runs_started_together_never_share_a_folder(tmp_path):
    cfg = scenario(tmp_path, loops=3, batches=(1,))
    procs = [Bench(cfg, tmp_path / "results") for _ in range(2)]
    results = [b.finish() for b in procs]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    runs = sorted((tmp_path / "results").iterdir())
    assert len(runs) == 2
    pids = {json.loads((r / "run.json").read_text())["pid"] for r in runs}
    assert pids == {b.proc.pid for b in procs}
    for r in runs:
        assert json.loads((r / "run.json").read_text())["status"] == "complete"
        assert not list(r.rglob("*.tmp")), "a temporary file was left behind"


def _make_run_dirs(root: str, n: int) -> List[str]:
    return [str(RunStore.create(Path(root), "same").path) for _ in range(n)]


def test_create_run_dir_is_unique_across_processes(tmp_path):
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(4) as pool:
        got = [d for f in [pool.submit(_make_run_dirs, str(tmp_path), 10) for _ in range(4)] for d in f.result()]
    assert len(got) == 40 and len(set(got)) == 40


def test_a_damaged_row_file_is_an_error_not_a_guess(tmp_path):
    import numpy as np
    from retinabench.errors import BenchError
    read_rows = RunStore(tmp_path).read_rows
    rows = tmp_path / "rows"
    rows.mkdir()
    header = {"key": "k", "backend": "empty", "variant": "default", "input": "native", "batch": 1,
              "max_batch": 1, "status": "passed"}
    (rows / "k.json").write_text(json.dumps(header))
    # an object array in the npz would need unpickling to read: refused
    np.savez(rows / "k.npz", samples=np.array([object()], dtype=object), warmup=np.zeros((0, 4)))
    with pytest.raises(BenchError, match="damaged row file"):
        read_rows()
    (rows / "k.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BenchError, match="damaged row file"):
        read_rows()
    (rows / "k.npz").unlink()
    (rows / "k.json").write_text('{"key": "k"')
    with pytest.raises(BenchError, match="damaged row file"):
        read_rows()


# --- the conversion cache -------------------------------------------------------------------

def test_a_corrupt_cache_entry_is_rebuilt_not_used(tmp_path, monkeypatch, mnet25):
    """Cache a real conversion (the MXNet model exported to ONNX), damage it three ways."""
    from retinabench.graph import cache
    from retinabench.graph.onnx_export import export_onnx
    monkeypatch.setenv("RETINABENCH_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(d: Path) -> None:
        builds.append(d)
        export_onnx(mnet25.graph(), d / "model.onnx", (1, 3, 224, 320))

    key = {"model": mnet25.sha256(), "shape": [1, 3, 224, 320]}
    entry = cache.cached("onnx", key, build)
    good = (entry / "model.onnx").read_bytes()
    assert cache.cached("onnx", key, build) == entry and len(builds) == 1  # a valid entry is reused

    for damage in (lambda p: p.write_bytes(good[: len(good) // 2]),             # truncated
                   lambda p: p.write_bytes(good[:-1] + bytes([good[-1] ^ 1])),  # one bit flipped
                   lambda p: p.unlink()):                                       # missing
        damage(entry / "model.onnx")
        again = cache.cached("onnx", key, build)
        assert again == entry and (entry / "model.onnx").read_bytes() == good
    assert len(builds) == 4
    (entry / cache.MANIFEST).write_text("{not json")
    cache.cached("onnx", key, build)
    assert len(builds) == 5 and not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp-")]


# --- hostile or broken inputs: one line naming the problem, exit 2, no traceback --------------

def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit(path: Path, edit: Callable[[bytes], bytes]) -> None:
    path.write_bytes(edit(path.read_bytes()))


def _broken_models(tmp: Path, mx: Path, caffe: Path) -> Dict[str, tuple]:
    """name -> (model path, words the error must contain)."""
    out = {}
    d = _copy_model(mx, tmp / "truncated-params")
    _edit(d / "mnet.25-0000.params", lambda b: b[: len(b) // 2])
    out["truncated params"] = (d, "truncated")
    d = _copy_model(mx, tmp / "bad-magic")
    _edit(d / "mnet.25-0000.params", lambda b: b"XXXXXXXX" + b[8:])
    out["params magic"] = (d, "bad magic")
    d = _copy_model(mx, tmp / "bad-symbol")
    _edit(d / "mnet.25-symbol.json", lambda b: b[: len(b) // 3])
    out["symbol not JSON"] = (d, "not an MXNet symbol JSON")
    d = _copy_model(mx, tmp / "missing-weight")
    _edit(d / "mnet.25-symbol.json", lambda b: b.replace(b'"mobilenet0_conv0_weight"', b'"renamed_weight"'))
    out["weight missing"] = (d, "'renamed_weight' missing")
    d = _copy_model(caffe, tmp / "truncated-caffemodel")
    _edit(d / "mnet25.caffemodel", lambda b: b[: len(b) // 2])
    out["truncated caffemodel"] = (d, "caffemodel")
    d = _copy_model(caffe, tmp / "missing-blob")
    _edit(d / "mnet25.prototxt",
          lambda b: b.replace(b'bottom: "mobilenet0_conv0_fwd"', b'bottom: "no_such_blob"', 1))
    out["prototxt missing blob"] = (d, "no_such_blob")
    d = tmp / "empty-dir"
    d.mkdir()
    out["empty directory"] = (d, "holds no")
    out["missing model"] = (tmp / "nowhere", "does not exist")
    try:
        import onnx  # noqa: F401
        from retinabench.graph.onnx_export import export_onnx
        from retinabench.model.source import open_model
        d = tmp / "truncated-onnx"
        d.mkdir()
        export_onnx(open_model(mx).graph(), d / "m.onnx", (1, 3, 224, 320))
        _edit(d / "m.onnx", lambda b: b[: len(b) // 2])
        out["truncated onnx"] = (d, "not a valid ONNX model")
    except ImportError:
        pass  # the ONNX case needs the onnx package
    return out


MODEL_CASES = ["truncated params", "params magic", "symbol not JSON", "weight missing", "truncated caffemodel",
               "prototxt missing blob", "empty directory", "missing model", "truncated onnx"]


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, mnet25_dir, seed_caffe_dirs):
    return _broken_models(tmp_path_factory.mktemp("models"), mnet25_dir, seed_caffe_dirs["mnet25"])


def assert_one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for w in words:
        assert w in lines[0], lines[0]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_broken_model_fails_before_the_run(tmp_path, broken_models, case):
    if case not in broken_models:
        pytest.skip("onnx is not installed")
    model, words = broken_models[case]
    out = bench("--config", str(scenario(tmp_path, loops=1, batches=(1,))), "--model", str(model),
                "--out", str(tmp_path / "r"))
    assert_one_line_error(out, words)
    assert not (tmp_path / "r").exists()  # no run folder for a run that could not start


@pytest.mark.parametrize("case", ["truncated params", "prototxt missing blob", "truncated onnx"])
def test_broken_model_through_detect(broken_models, t1_path, case):
    if case not in broken_models:
        pytest.skip("onnx is not installed")
    model, words = broken_models[case]
    assert_one_line_error(bench("detect", str(t1_path), "--model", str(model), "--backend", "mxnet"), words)


BASE_CONFIG = {"name": "hostile", "input": {"mode": "fit", "width": 320, "height": 224}, "loops": 1, "warmup": 0,
               "backends": ["empty"]}


@pytest.mark.parametrize("change, words", [
    ({"loops": "many"}, ["loops", "integer"]),
    ({"loops": -1}, ["loops", "out of range"]),
    ({"loops": 1.5}, ["loops", "integer"]),
    ({"warmup": True}, ["warmup", "integer"]),
    ({"batches": [0]}, ["batches[0]"]),
    ({"batches": [1, 1]}, ["batches", "twice"]),
    ({"batches": "1"}, ["batches[0]"]),
    ({"input": {"mode": "fit", "width": 0, "height": 224}}, ["input.width"]),
    ({"input": {"mode": "fit", "width": 100000, "height": 224}}, ["input.width"]),
    ({"input": {"mode": "fit", "width": 320, "height": 100000}}, ["input.height"]),
    ({"input": "big"}, ["input"]),
    ({"colour": "red"}, ["unknown field colour"]),
    ({"backends": [{"name": "empty", "speed": "fast"}]}, ["backends[0].speed"]),
    ({"backends": [{"name": "empty", "options": {"deep": [1, 2]}}]}, ["backends[0].options.deep"]),
    ({"backends": [{"name": "empty", "env": {"LD_PRELOAD": "/tmp/x.so"}}]}, ["backends[0].env.LD_PRELOAD"]),
    ({"backends": "empty"}, ["backends"]),
    ({"threshold": "high"}, ["threshold"]),
    ({"images": []}, ["images"]),
    ({"model": ["a", "b"]}, ["model"]),
])
def test_hostile_config_is_one_line(tmp_path, mnet25_dir, t1_path, change, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**BASE_CONFIG, "model": str(mnet25_dir), "images": [str(t1_path)], **change}))
    assert_one_line_error(bench("--config", str(cfg), "--out", str(tmp_path / "r")), *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, words", [
    (b"\xff\xfe\x00binary", ["not a text file"]),
    (b"model: [unclosed\n", ["not valid YAML"]),
    (b"- a\n- list\n", ["mapping"]),
    (b"model: !!python/object/apply:os.system ['echo pwned']\n", []),
    (b"", ["mapping"]),
])
def test_unreadable_config_is_one_line(tmp_path, text, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text)
    assert_one_line_error(bench("--config", str(cfg)), *words)


def test_images_that_are_not_images_and_cli_overrides(tmp_path, mnet25_dir, t1_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**BASE_CONFIG, "model": str(mnet25_dir), "images": [str(t1_path)]}))
    text = tmp_path / "face.jpg"
    text.write_text("not a JPEG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_one_line_error(bench("--config", str(cfg), "--image", str(text)), "cannot be decoded")
    assert_one_line_error(bench("--config", str(cfg), "--image", str(empty)), "cannot be decoded")
    assert_one_line_error(bench("--config", str(cfg), "--image", str(tmp_path / "gone.jpg")), "does not exist")
    assert_one_line_error(bench("--config", str(cfg), "--loops", "-5"), "loops")
    assert_one_line_error(bench("--config", str(cfg), "--loops", "0"), "loops")
    assert_one_line_error(bench("--config", str(tmp_path)), "cannot read")
