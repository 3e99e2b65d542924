"""A row's footprint: host and GPU memory, load-time parts and cold start (retinabench.harness.footprint).

Real worker processes for the host figures and the load parts (the `empty` backend's test-only
`reserve_mib` allocates a known amount); recorded NVML and torch structures for the GPU parts, which
cannot run here (a test at the end runs them where a CUDA device and pynvml exist).
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import ROOT
from retinabench.harness import footprint as fpm
from retinabench.harness.footprint import (FootprintMeter, first_call, gpu_peak, gpu_reading, own_pids,
                                           parse_status, process_gpu_bytes, split_laps)
from retinabench.records import BackendSpec, Footprint, InputSpec, Job, RowId, WorkerResult
from retinabench.store import WorkDir

MIB = 2 ** 20

# A worker's /proc/self/status, as Linux 6.x writes it (cut).
STATUS = """Name:\tpython
Umask:\t0022
State:\tR (running)
Tgid:\t4242
NSpid:\t4242\t17
VmPeak:\t   18960 kB
VmHWM:\t   15844 kB
VmRSS:\t   15812 kB
RssAnon:\t    9024 kB
RssFile:\t    6788 kB
RssShmem:\t       0 kB
Threads:\t1
"""


# --- pure parts ---------------------------------------------------------------------------------------

def test_proc_status_fields_in_bytes():
    d = parse_status(STATUS)
    assert d["VmRSS"] == 15812 * 1024 and d["VmHWM"] == 15844 * 1024 and d["RssAnon"] == 9024 * 1024
    assert "Threads" not in d and "Name" not in d      # only the kB lines
    live = fpm.read_status()
    assert live["VmRSS"] > 0 and live["VmHWM"] >= live["VmRSS"] - 4 * MIB   # this process, now


def test_own_pids_include_every_namespace():
    pids = own_pids(STATUS)
    assert pids[0] == os.getpid() and set(pids) == {os.getpid(), 4242, 17} and len(pids) == len(set(pids))
    assert own_pids("Name:\tx\n") == [os.getpid()]


# NVML's compute processes as nvidia-ml-py returns them (friendly objects with pid and usedGpuMemory,
# None where the driver says NVML_VALUE_NOT_AVAILABLE), for a device with two other processes.
def _procs(*pairs):
    return [SimpleNamespace(pid=p, usedGpuMemory=m, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
            for p, m in pairs]


def test_gpu_memory_is_matched_by_pid():
    procs = _procs((900, 5000 * MIB), (17, 612 * MIB), (901, 80 * MIB))
    assert process_gpu_bytes(procs, [4242, 17]) == (612 * MIB, "")
    assert gpu_reading(procs, [4242, 17], used=9000 * MIB, baseline_used=100 * MIB) == (612 * MIB, "nvml-pid", "")
    # the same process listed twice (e.g. two contexts) counts once per entry
    assert process_gpu_bytes(_procs((17, 10 * MIB), (17, 5 * MIB)), [17]) == (15 * MIB, "")
    # dict-shaped entries (recorded JSON) read the same
    assert process_gpu_bytes([{"pid": 17, "usedGpuMemory": MIB}], [17]) == (MIB, "")


def test_gpu_memory_falls_back_to_the_device_delta():
    procs = _procs((90017, 612 * MIB))     # a container: NVML lists the host's pid
    got, source, note = gpu_reading(procs, [17], used=1712 * MIB, baseline_used=1100 * MIB)
    assert (got, source) == (612 * MIB, "nvml-device-delta") and "pid namespace" in note
    assert gpu_reading(procs, [17], used=1000 * MIB, baseline_used=1100 * MIB)[0] == 0   # never negative
    assert gpu_reading(procs, [17])[:2] == (None, "")                                    # no baseline
    # listed, but without a figure (WDDM, or a driver that withholds it): the delta, saying why
    got, source, note = gpu_reading(_procs((17, None)), [17], used=300 * MIB, baseline_used=100 * MIB)
    assert (got, source) == (200 * MIB, "nvml-device-delta") and "NVML_VALUE_NOT_AVAILABLE" in note


def test_gpu_peak_only_from_per_process_readings():
    assert gpu_peak([(5, "nvml-pid"), (9, "nvml-pid"), (7, "nvml-pid")]) == (9, "nvml-pid")
    assert gpu_peak([(5, "nvml-device-delta"), (9, "nvml-device-delta")]) == (None, "")
    assert gpu_peak([(None, ""), (4, "nvml-pid"), (50, "nvml-device-delta")]) == (4, "nvml-pid")


def test_laps_split_into_parts_that_add_up():
    laps = [("import", 1.0, {}), ("read", 0.5, {"convert": 0.2}), ("harness", 0.1, {}),
            ("build", 2.0, {"convert": 0.3}), ("harness", 0.4, {"stage_build": 0.35})]
    parts = split_laps(laps)
    assert parts == pytest.approx({"import": 1.0, "read": 0.3, "convert": 0.5, "build": 1.7, "stage_build": 0.35,
                                   "harness": 0.15})
    assert sum(parts.values()) == pytest.approx(4.0)
    # a carve-out larger than its lap takes the lap, never more
    over = split_laps([("read", 0.1, {"convert": 5.0})])
    assert over["convert"] == pytest.approx(0.1) and over["read"] == 0.0


def test_first_call_is_the_first_loop_that_ran():
    warm, rewarm, samples = np.zeros((0, 4)), np.array([[0, 0, 0, 7_000_000]]), np.array([[0, 0, 0, 1_000_000]])
    assert first_call([("w", warm), ("r", rewarm), ("s", samples)]) == (7.0, "r")
    assert first_call([("w", warm)]) == (None, "")


def test_the_record_round_trips_and_old_rows_have_none():
    fp = Footprint(host_loaded_mib=12.5, load_s=0.3, first_call="first warmup loop", sources={"host": "vmrss"})
    r = WorkerResult("passed", footprint=fp)
    back = WorkerResult.from_json(json.loads(json.dumps(r.to_json())))
    assert back.footprint == fp
    assert WorkerResult.from_json({"status": "passed"}).footprint is None           # before footprints
    assert WorkerResult.from_json({"status": "passed", "footprint": {}}).footprint is None
    newer = {"status": "passed", "footprint": {"load_s": 1.0, "a_later_field": 1}}
    assert WorkerResult.from_json(newer).footprint.load_s == 1.0
    assert WorkerResult.failure("failed", "x").to_json()["footprint"] == {}


# --- the meter on a GPU row, with NVML and torch as recorded structures ---------------------------------

class FakeNvml:
    """pynvml's calls the meter makes, on one device whose memory in use and process list we set."""

    def __init__(self, listed_pid):
        self.listed_pid = listed_pid
        self.used = 1100 * MIB
        self.mine = 0

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("h", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        assert uuid == "GPU-58eb0d0c-0000-0000-0000-000000000001"
        return ("h", 0)

    def nvmlDeviceGetUUID(self, h):
        return b"GPU-58eb0d0c-0000-0000-0000-000000000001"

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H200"

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=b"00000000:3B:00.0")

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=143771 * MIB, used=self.used + self.mine, free=0)

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h):
        others = _procs((900, 1100 * MIB))
        return others + (_procs((self.listed_pid, self.mine)) if self.mine else [])


class FakeTorchCuda:
    def __init__(self):
        self.reserved, self.peak = 0, 0

    def is_initialized(self):
        return True

    def memory_reserved(self, i):
        return self.reserved

    def max_memory_reserved(self, i):
        return self.peak

    def memory_allocated(self, i):
        return self.reserved // 2

    def reset_peak_memory_stats(self, i):
        self.peak = self.reserved


def _gpu_meter(monkeypatch, listed_pid):
    from retinabench.harness import gpu_monitor
    monkeypatch.setattr(gpu_monitor, "cuda_device_ids",
                        lambda ordinal: ({"uuid": "58eb0d0c-0000-0000-0000-000000000001", "pci_bus_id": ""}, ""))
    torch = SimpleNamespace(cuda=FakeTorchCuda())
    monkeypatch.setitem(sys.modules, "torch", torch)
    nv = FakeNvml(listed_pid)
    return FootprintMeter("cuda:0", nvml=nv), nv, torch.cuda


def test_gpu_row_per_process_memory_and_torch_peaks(monkeypatch):
    meter, nv, cuda = _gpu_meter(monkeypatch, os.getpid())
    meter.begin()
    nv.mine, cuda.reserved, cuda.peak = 700 * MIB, 300 * MIB, 420 * MIB   # the runtime loaded
    meter.lap("import")
    meter.loaded()
    meter.measure_begin()
    nv.mine, cuda.reserved, cuda.peak = 760 * MIB, 320 * MIB, 350 * MIB   # the measured loops allocated more
    meter.chunk(np.array([[0, 0, 0, 5_000_000]]), None, np.array([[0, 0, 0, 1_000_000]]))
    nv.mine = 740 * MIB
    fp = meter.record()
    assert fp.gpu_loaded_mib == 700 and fp.gpu_peak_mib == 760 and fp.sources["gpu"] == "nvml-pid"
    assert fp.torch_reserved_loaded_mib == 300 and fp.torch_reserved_peak_mib == 350   # reset before measuring
    assert fp.first_call_ms == 5.0 and fp.first_call == "first warmup loop"
    assert set(fp.snapshots["gpu"]) == {"loaded", "chunk", "finish"}   # none right before the measured loops
    assert meter.record() is fp


def test_gpu_row_in_another_pid_namespace_uses_the_device_delta(monkeypatch):
    meter, nv, cuda = _gpu_meter(monkeypatch, 987654)   # NVML lists a pid that is not ours
    meter.begin()
    nv.mine = 700 * MIB
    meter.loaded()
    meter.measure_begin()
    nv.mine = 760 * MIB
    meter.chunk()
    fp = meter.record()
    assert fp.gpu_loaded_mib == 700 and fp.sources["gpu"] == "nvml-device-delta"
    assert fp.gpu_peak_mib is None and any("not attributed" in n for n in fp.notes)


def test_gpu_row_without_nvml_has_host_figures_and_a_note(monkeypatch):
    class Broken:
        def nvmlInit(self):
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")
    meter = FootprintMeter("cuda", nvml=Broken())
    meter.begin()
    meter.loaded()
    meter.measure_begin()
    fp = meter.record()
    assert fp.gpu_loaded_mib is None and fp.host_loaded_mib is not None
    assert any("NVML unavailable" in n and "libnvidia-ml" in n for n in fp.notes)


# --- real worker processes ------------------------------------------------------------------------------

def _row(tmp: Path, mnet25_dir: Path, t1_path: Path, backend: str = "empty", options: dict = None,
         python: str = sys.executable, loops: int = 20, warmup: int = 3) -> tuple:
    """One row measured by a real worker (`python -m retinabench.harness.worker JOB`): its record and samples."""
    job = Job(RowId(backend, input="448x448"), BackendSpec(backend, threads=1, options=dict(options or {})),
              str(mnet25_dir), (str(t1_path),), InputSpec("fit", 448, 448), loops=loops, warmup=warmup,
              threshold=0.5)
    work = WorkDir(tmp / f"{backend}-{len(list(tmp.iterdir()))}")
    work.prepare(job)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    out = subprocess.run([python, "-m", "retinabench.harness.worker", str(work.job)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    result = work.read_result()
    assert result is not None, out.stderr
    samples = work.read_samples() if result.status == "passed" else {}
    return result, samples, wall


def _mem_total_mib() -> float:
    return parse_status(Path("/proc/meminfo").read_text())["MemTotal"] / MIB


def test_a_cpu_row_holds_more_than_its_baseline_and_less_than_the_machine(tmp_path, mnet25_dir, t1_path):
    for backend in ("empty", "onnxruntime"):
        r, _, _ = _row(tmp_path, mnet25_dir, t1_path, backend)
        assert r.status == "passed", r.reason
        fp = r.footprint
        assert 5 < fp.host_baseline_mib < 200        # the interpreter and the harness's record modules
        assert 0 < fp.host_loaded_mib < _mem_total_mib()
        assert 0 < fp.host_peak_mib < _mem_total_mib() and fp.host_load_peak_mib >= fp.host_loaded_mib - 1
        assert fp.sources == {"host": "vmrss", "host_peak": "vmhwm-reset"}
        assert fp.gpu_loaded_mib is None and fp.gpu_peak_mib is None      # a CPU row touches no GPU
        assert fp.model_mib == pytest.approx(sum(p.stat().st_size for p in mnet25_dir.iterdir()
                                                 if p.suffix in (".json", ".params")) / MIB, abs=0.01)
        assert set(fp.snapshots) == {"baseline", "loaded", "measure_begin", "finish"} and not fp.notes


def test_a_known_reservation_shows_in_host_memory(tmp_path, mnet25_dir, t1_path):
    plain, _, _ = _row(tmp_path, mnet25_dir, t1_path, "empty")
    reserved, _, _ = _row(tmp_path, mnet25_dir, t1_path, "empty", {"reserve_mib": 256})
    assert reserved.status == "passed" and reserved.settings.extras["reserve_mib"] == 256
    a, b = plain.footprint, reserved.footprint
    for field in ("host_loaded_mib", "host_load_peak_mib", "host_peak_mib"):
        grew = getattr(b, field) - getattr(a, field)
        assert 256 - 1 <= grew < 256 + 32, (field, grew)   # every page touched, held through the loops
    assert b.load_build_s > a.load_build_s                  # touching 256 MiB takes time, in load()


def test_load_parts_add_up_to_the_whole(tmp_path, mnet25_dir, t1_path):
    for backend in ("empty", "onnxruntime"):
        r, samples, wall = _row(tmp_path, mnet25_dir, t1_path, backend)
        fp = r.footprint
        parts = [fp.load_import_s, fp.load_read_s, fp.load_convert_s, fp.load_build_s, fp.load_stage_build_s,
                 fp.load_harness_s]
        assert all(p is not None and p >= 0 for p in parts)
        assert sum(parts) == pytest.approx(fp.load_whole_s, rel=0.02)
        assert fp.load_s == pytest.approx(sum(parts[:4]), abs=1e-5)
        assert fp.load_harness_s < 0.25 * fp.load_whole_s + 0.05   # the measured parts cover the loading
        assert fp.load_whole_s < wall                                # inside the worker's lifetime
        assert fp.load_convert_s > 0          # both import the MXNet model into the graph IR (ONNX export, shapes)
        # Backend.load() is the build part plus the graph import it triggered (none happens in open_model here)
        assert fp.load_build_s + fp.load_convert_s == pytest.approx(r.load_s, rel=0.02, abs=2e-3)
        assert fp.load_stage_build_s == 0.0
        # the cold start is the first warmup loop, as recorded in the samples
        assert fp.first_call == "first warmup loop"
        assert fp.first_call_ms == pytest.approx(samples["warmup"][0, 3] / 1e6, abs=1e-3)
        assert fp.first_loop_ms == fp.first_call_ms


def test_without_warmup_the_cold_start_is_the_first_measured_loop(tmp_path, mnet25_dir, t1_path):
    r, samples, _ = _row(tmp_path, mnet25_dir, t1_path, "empty", loops=5, warmup=0)
    assert r.footprint.first_call == "first measured loop"
    assert r.footprint.first_call_ms == pytest.approx(samples["samples"][0, 3] / 1e6, abs=1e-3)


def test_a_failed_row_keeps_its_footprint_so_far(tmp_path, mnet25_dir, t1_path):
    r, _, _ = _row(tmp_path, mnet25_dir, t1_path, "empty", {"fault": "raise", "reserve_mib": 64})
    assert r.status == "failed" and "injected fault" in r.reason
    fp = r.footprint
    assert fp is not None and fp.host_loaded_mib > 64 and fp.load_s > 0 and fp.first_call_ms is None
    assert fp.host_load_peak_mib >= fp.host_loaded_mib - 1 and fp.host_peak_mib is None   # it never measured


def test_caffe_allocates_its_blobs_on_the_first_forward(tmp_path, mnet25_dir, t1_path):
    """What the Caffe rows' figure means (the tables' note): the net's blobs arrive on the first call."""
    from backends.caffe_backend import CaffeBackend
    python = CaffeBackend.interpreter()
    ok, why = CaffeBackend.available()
    if not ok:
        pytest.skip(why)
    r, samples, _ = _row(tmp_path, mnet25_dir, t1_path, "caffe", python=python)
    assert r.status == "passed", r.reason
    fp = r.footprint                               # measured under the Caffe worker's own Python (3.9)
    assert r.versions["python"].startswith("3.9") and fp.sources["host_peak"] == "vmhwm-reset"
    assert fp.host_load_peak_mib - fp.host_loaded_mib > 50      # ~250 MiB of blobs and im2col buffers at 448x448
    assert fp.host_peak_mib >= fp.host_load_peak_mib - 5        # ... and they stay for the measured loops
    assert fp.first_call_ms > 1.2 * np.median(samples["samples"][:, 3]) / 1e6   # the cold start pays for them


# --- a run: summary.csv, the tables, the README section, the plot ---------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnet25_dir, t1_path):
    tmp = tmp_path_factory.mktemp("fp")
    cfg = tmp / "s.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "fp", "model": str(mnet25_dir), "images": [str(t1_path)],
        "input": {"mode": "fit", "width": 320, "height": 224}, "threads": 1, "loops": 6, "warmup": 1,
        "backends": ["empty", "onnxruntime", {"name": "caffe", "device": "cuda"}]}))
    out = subprocess.run([sys.executable, "bench.py", "--config", str(cfg), "--out", str(tmp / "r"), "--wide"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp / "r").iterdir()
    return run, out.stdout


def test_summary_csv_has_the_footprint_columns_after_the_older_ones(tiny_run):
    from retinabench.report.summary import FOOTPRINT_COLUMNS, PROCESS_COLUMNS, SUMMARY_COLUMNS
    run, _ = tiny_run
    lines = list(csv.DictReader((run / "summary.csv").open()))
    # footprints came after the columns before them, processes and contention after footprints
    assert list(lines[0]) == SUMMARY_COLUMNS
    assert SUMMARY_COLUMNS[-len(FOOTPRINT_COLUMNS) - len(PROCESS_COLUMNS):-len(PROCESS_COLUMNS)] == FOOTPRINT_COLUMNS
    ort = [ln for ln in lines if ln["backend"] == "onnxruntime"]
    assert len(ort) == 4 and len({ln["host_mib_loaded"] for ln in ort}) == 1     # per row, on every stage line
    o = ort[0]
    assert float(o["host_mib_loaded"]) > 0 and float(o["load_s"]) > 0 and float(o["first_call_ms"]) > 0
    assert o["host_mib_source"] == "vmhwm-reset" and o["first_call"] == "first warmup loop"
    assert o["gpu_mib_loaded"] == ""
    caffe_gpu = [ln for ln in lines if ln["backend"] == "caffe"]
    assert caffe_gpu[0]["status"] == "unavailable" and caffe_gpu[0]["host_mib_loaded"] == ""


def test_tables_show_the_columns_and_say_what_they_mean(tiny_run):
    run, stdout = tiny_run
    md = (run / "summary.md").read_text()
    for text in (stdout, md):
        assert "host MiB" in text and "GPU MiB" in text and "load s" in text and "cold-start ms" in text
        assert "before any runtime was imported" in text and "not run here" in text
        assert "written but not run here" in text
    from retinabench.report.readme import load_run
    from retinabench.report.speed import speed_section
    data = load_run(run)
    section = speed_section(data, run)
    header = next(ln for ln in section.splitlines() if ln.startswith("| backend"))
    assert [c.strip() for c in header.split("|")[-6:-1]] == ["host MiB", "GPU MiB", "load s", "cold-start ms", "flags"]
    caffe = next(ln for ln in section.splitlines() if ln.startswith("| caffe"))
    assert "not run here" in caffe
    assert "*host MiB*" in section and "*cold-start ms*" in section


def test_the_footprint_plot_is_planned_only_with_data(tiny_run):
    from retinabench.report.plots import planned_plots
    from retinabench.report.readme import load_run
    run, _ = tiny_run
    data = load_run(run)
    specs = [s.name for s in planned_plots(data)]
    assert specs[-1] == "footprint"
    fig = planned_plots(data)[-1].make(data)
    assert len(fig.axes) == 2 and all(ax.get_xlabel() and ax.get_title() and ax.get_legend() for ax in fig.axes)
    committed = sorted((ROOT / "results").glob("*-320x416"))
    if committed:   # a run recorded before footprints: no plot, no columns
        old = load_run(committed[0])
        assert "footprint" not in [s.name for s in planned_plots(old)]
        from retinabench.report.tables import footprint_headers
        assert footprint_headers(old.summary) == []


# --- on a GPU machine (skipped here): the NVML path for real --------------------------------------------

def _cuda_and_nvml() -> str:
    try:
        import pynvml  # noqa: F401
        import torch
    except ImportError as e:
        return f"no {e.name}"
    return "" if torch.cuda.is_available() else "no CUDA device"


@pytest.mark.skipif(bool(_cuda_and_nvml()), reason=_cuda_and_nvml() or "needs CUDA and pynvml")
def test_gpu_rows_report_their_process_memory(tmp_path, mnet25_dir, t1_path):
    def gpu_row(options):
        job = Job(RowId("empty", "cuda", "cuda", "448x448"),
                  BackendSpec("empty", "cuda", threads=1, device="cuda", options=options), str(mnet25_dir),
                  (str(t1_path),), InputSpec("fit", 448, 448), loops=20, warmup=3, threshold=0.5)
        work = WorkDir(tmp_path / f"gpu{len(list(tmp_path.iterdir()))}")
        work.prepare(job)
        out = subprocess.run([sys.executable, "-m", "retinabench.harness.worker", str(work.job)], cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
        r = work.read_result()
        assert r is not None and r.status == "passed", out.stderr
        return r.footprint
    plain, reserved = gpu_row({}), gpu_row({"reserve_gpu_mib": 512})
    assert plain.gpu_loaded_mib > 100                  # at least the CUDA context
    assert plain.gpu_loaded_mib >= plain.torch_reserved_loaded_mib
    assert reserved.gpu_loaded_mib - plain.gpu_loaded_mib >= 512 - 2
    assert reserved.torch_reserved_loaded_mib - plain.torch_reserved_loaded_mib >= 512
    assert reserved.gpu_peak_mib >= reserved.gpu_loaded_mib


def test_the_meter_imports_like_the_records():
    """The Caffe worker (Python 3.9) imports the meter: 3.9 syntax, the standard library and records at the top."""
    import ast
    allowed = {"footprint.py": {"retinabench.records", "retinabench.harness.device_processes"},
               "device_processes.py": set(), "cpu_load.py": set()}
    for name, ours in allowed.items():
        tree = ast.parse((ROOT / "retinabench" / "harness" / name).read_text(), feature_version=(3, 9))
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
        assert top - set(sys.stdlib_module_names) - {"__future__"} == ours, name


def test_gpu_columns_and_notes_from_recorded_rows():
    """A GPU run's table (cannot run here): the GPU MiB cell, Caffe's GPU row and the notes."""
    from retinabench.records import RowSettings
    from retinabench.report.summary import summary_rows
    from retinabench.report.tables import footprint_note, pivot, stage_table
    from retinabench.store import RowResult
    samples = np.tile(np.array([[1_000_000, 2_000_000, 500_000, 3_500_000]], np.int64), (12, 1))
    fp = Footprint(host_baseline_mib=60.0, host_loaded_mib=1500.0, host_peak_mib=1510.0, gpu_loaded_mib=812.0,
                   gpu_peak_mib=830.5, torch_reserved_loaded_mib=120.0, torch_reserved_peak_mib=122.0, load_s=3.21,
                   first_call_ms=950.0, first_call="first warmup loop", sources={"host": "vmrss",
                   "host_peak": "vmhwm-reset", "gpu": "nvml-device-delta"})
    torch_row = RowResult(RowId("torch", "graph", "cuda"), WorkerResult("passed", settings=RowSettings(device="cuda"),
                                                                        footprint=fp), samples_ns=samples,
                          warmup_ns=samples[:2])
    caffe_row = RowResult.failed(RowId("caffe", device="cuda"), "unavailable", "this Caffe build is CPU-only (no CUDA)")
    summary = summary_rows([torch_row, caffe_row])
    table = stage_table(summary)
    header, _, torch_line, caffe_line = table.splitlines()[:4]
    assert "host MiB" in header and "GPU MiB" in header and "load s" in header and "cold-start ms" in header
    assert "1500 (1510)" in torch_line and "812 (830)" in torch_line and "3.21" in torch_line and "950" in torch_line
    assert "not run here" in caffe_line
    note = footprint_note(summary)
    assert "*GPU MiB*" in note and "pid namespace" in note and "written but not run here" in note
    assert "hence *not run here*" in note and "Caffe rows run on the CPU" not in note   # no CPU Caffe row
    assert pivot(summary)[0]["footprint"]["gpu_mib_source"] == "nvml-device-delta"
