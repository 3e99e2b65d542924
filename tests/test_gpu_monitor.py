"""The GPU monitor without NVML: its pure functions on synthetic data, then the whole open ->
windows -> close flow against a stand-in pynvml (two GPUs, timestamped utilisation samples), and
env.gpu_info's identification of the row's GPU by UUID / PCI bus id."""
from __future__ import annotations

import json
import sys
import time
import types

import pytest

from retinabench.harness import env
from retinabench.harness import gpu_monitor as gm
from retinabench.harness.gpu_monitor import (
    GpuMonitor, in_windows, match_nvml_device, normalize_pci_bus_id, normalize_uuid, sample_period, summarize, thin,
    timestamp_clock)

UUIDS = ["GPU-11111111-2222-3333-4444-555555555555", "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"]
BUSES = ["00000000:1B:00.0", "00000000:3B:00.0"]
NVML = [{"index": i, "uuid": UUIDS[i], "pci_bus_id": BUSES[i], "name": "NVIDIA H200"} for i in range(2)]


# ---------------------------------------------------------------------------------------------
# Identification
# ---------------------------------------------------------------------------------------------

def test_uuids_compare_without_prefix_or_case():
    assert normalize_uuid("GPU-AAAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee") == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert normalize_uuid(b"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\0") == "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    assert normalize_uuid(None) == ""


def test_pci_bus_ids_compare_across_nvml_and_cuda_formats():
    assert normalize_pci_bus_id("00000000:3B:00.0") == normalize_pci_bus_id("0000:3b:00.0") == (0, 0x3B, 0, 0)
    assert normalize_pci_bus_id("3b:00.0") == (0, 0x3B, 0, 0)
    assert normalize_pci_bus_id(b"00000001:3B:01.0\0") == (1, 0x3B, 1, 0)
    assert normalize_pci_bus_id("not a bus") is None
    assert gm.format_pci_bus_id(0, 0x3B, 0) == "00000000:3B:00.0"


def test_match_by_uuid_first_then_pci_bus_id():
    # torch gives the UUID without "GPU-": cuda:0 under CUDA_VISIBLE_DEVICES=1 is NVML's index 1
    assert match_nvml_device({"uuid": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"}, NVML) == (1, "uuid")
    assert match_nvml_device({"uuid": "", "pci_bus_id": "0000:1b:00.0"}, NVML) == (0, "pci_bus_id")
    assert match_nvml_device({"uuid": "GPU-unknown", "pci_bus_id": "0000:3B:00.0"}, NVML) == (1, "pci_bus_id")
    assert match_nvml_device({}, NVML) == (None, "")
    twins = [dict(NVML[0]), dict(NVML[0], index=1)]  # ambiguous: no guess
    assert match_nvml_device({"uuid": UUIDS[0]}, twins) == (None, "")


def test_cuda_ordinal():
    assert gm.cuda_ordinal("cuda") == 0 and gm.cuda_ordinal("cuda:3") == 3 and gm.cuda_ordinal(2) == 2


# ---------------------------------------------------------------------------------------------
# Samples and windows
# ---------------------------------------------------------------------------------------------

def test_timestamp_clock():
    wall, mono = 1_800_000_000.0, 5_000.0
    assert timestamp_clock((wall - 0.5) * 1e6, wall, mono) == ("wall", 0.0)
    clock, offset = timestamp_clock((mono - 0.5) * 1e6, wall, mono)
    assert clock == "monotonic" and offset == wall - mono
    clock, offset = timestamp_clock(123.0 * 1e6, wall, mono)
    assert clock == "fitted" and offset == pytest.approx(wall - 123.0)
    assert timestamp_clock(None, wall, mono) == ("assumed-wall", 0.0)


def test_sample_period_is_the_median_spacing():
    assert sample_period([0.0, 1 / 6, 2 / 6, 3 / 6, 5 / 6]) == pytest.approx(1 / 6)  # one sample missing
    assert sample_period([1.0]) is None


def test_a_sample_counts_when_its_whole_period_is_inside_a_window():
    windows = [(10.0, 12.0), (20.0, 20.5)]
    assert in_windows(11.0, windows, 1.0)
    assert not in_windows(10.5, windows, 1.0)     # its period began in warmup
    assert not in_windows(12.1, windows, 0.0)
    assert not in_windows(20.5, windows, 1.0)     # the window is shorter than a period
    assert in_windows(20.5, windows, 0.1)


def _util(t0, t1, period, value):
    n = int(round((t1 - t0) / period))
    return [(t0 + k * period, value(t0 + k * period)) for k in range(n + 1)]


def test_summarize_keeps_in_window_samples_and_flags_short_windows():
    # 100% during the two measured chunks, 0% in warmup and between them; samples every 1/6 s
    busy = [(100.0, 101.0), (103.0, 103.8)]
    util = _util(90.0, 110.0, 1 / 6, lambda t: 100.0 if in_windows(t, busy, 1 / 6) else 0.0)
    clocks = [{"t_unix": 100.5, "sm_clock_mhz": 1980.0, "mem_used_mib": 900.0},
              {"t_unix": 102.0, "sm_clock_mhz": 345.0, "mem_used_mib": 900.0}]
    rec = summarize(util, busy, clocks, device={"uuid": UUIDS[1]})
    assert rec["util_mean_pct"] == 100.0                        # warmup and the gap between chunks excluded
    assert rec["samples_in_windows"] == len(rec["samples"]) > 0
    assert all(in_windows(s["t_unix"], busy, 1 / 6) for s in rec["samples"])
    assert rec["window_s"] == pytest.approx(1.8) and rec["short_window"] is True
    assert rec["sample_period_s"] == pytest.approx(1 / 6, abs=1e-6)
    assert rec["windows"] == [[100.0, 101.0], [103.0, 103.8]]
    assert [c["t_s"] for c in rec["clock_samples"]] == [0.5]     # the 102.0 reading fell between chunks
    assert rec["samples"][0]["t_s"] >= 1 / 6 - 1e-9
    assert rec["device"] == {"uuid": UUIDS[1]} and rec["error"] == ""
    json.dumps(rec)


def test_summarize_short_and_long_windows():
    util = _util(0.0, 10.0, 0.2, lambda t: 50.0)
    short = summarize(util, [(1.0, 1.1)])
    assert short["short_window"] and short["util_mean_pct"] is None
    assert "lies wholly inside a window" in short["note"]
    long = summarize(util, [(1.0, 4.0)])
    assert not long["short_window"] and long["util_mean_pct"] == 50.0
    empty = summarize([], [], error="NVML unavailable: no driver")
    assert empty["util_mean_pct"] is None and empty["short_window"] and empty["error"].startswith("NVML")


def test_thin_keeps_the_list_small():
    items = list(range(10_000))
    out = thin(items, 500)
    assert len(out) == 500 and out[0] == 0 and out[-1] == 9_999
    assert thin([1, 2], 500) == [1, 2]
    rec = summarize(_util(0.0, 4000.0, 1 / 6, lambda t: 30.0), [(0.0, 4000.0)])
    assert rec["samples_in_windows"] > 20_000 and len(rec["samples"]) == gm.MAX_SAMPLES
    assert rec["util_mean_pct"] == 30.0


# ---------------------------------------------------------------------------------------------
# The whole flow against a stand-in pynvml
# ---------------------------------------------------------------------------------------------

PERIOD = 0.05


def fake_pynvml(values=(10.0, 90.0), str_only=True):
    nv = types.ModuleType("pynvml")
    nv.NVML_GPU_UTILIZATION_SAMPLES, nv.NVML_CLOCK_SM = 1, 1

    class NVMLError_NotFound(Exception):
        pass

    nv.NVMLError_NotFound = NVMLError_NotFound
    handles = [types.SimpleNamespace(index=i) for i in range(2)]
    nv.calls = []

    def text(s):
        if str_only and not isinstance(s, str):
            raise TypeError("expected str")
        return s if isinstance(s, str) else s.decode()

    nv.nvmlInit = lambda: nv.calls.append("init")
    nv.nvmlDeviceGetCount = lambda: 2
    nv.nvmlDeviceGetHandleByIndex = lambda i: handles[i]
    nv.nvmlDeviceGetHandleByUUID = lambda u: handles[UUIDS.index(text(u))]
    nv.nvmlDeviceGetUUID = lambda h: UUIDS[h.index]
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H200"  # older pynvml returns bytes
    nv.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=BUSES[h.index])
    nv.nvmlDeviceGetClockInfo = lambda h, kind: 1980.0
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=512 * 2**20)
    nv.nvmlSystemGetDriverVersion = lambda: "580.82"
    nv.nvmlSystemGetCudaDriverVersion = lambda: 13000

    def samples(h, kind, last_seen):
        assert kind == nv.NVML_GPU_UTILIZATION_SAMPLES
        now = time.time()
        ks = range(int((now - 5.0) / PERIOD), int(now / PERIOD) + 1)  # the driver keeps ~5 s of samples
        out = [types.SimpleNamespace(timeStamp=int(round(k * PERIOD * 1e6)),
                                     sampleValue=types.SimpleNamespace(uiVal=int(values[h.index])))
               for k in ks if int(round(k * PERIOD * 1e6)) > last_seen and k * PERIOD <= now]
        if not out:
            raise NVMLError_NotFound("Not Found")
        return 1, out

    nv.nvmlDeviceGetSamples = samples
    return nv


def test_monitor_follows_the_rows_gpu_through_windows(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    # CUDA_VISIBLE_DEVICES=1: the row's cuda:0 is NVML's index 1 (torch's UUID has no "GPU-" prefix)
    monkeypatch.setattr(gm, "cuda_device_ids", lambda ordinal: ({"uuid": UUIDS[1][4:], "pci_bus_id": ""}, ""))
    m = GpuMonitor("cuda", interval_s=0.01, fetch_s=0.05)
    m.open()
    assert m.error == ""
    time.sleep(0.15)              # warmup: outside every window
    for _ in range(2):            # two measured chunks
        m.begin_window()
        time.sleep(0.35)
        m.end_window()
        time.sleep(0.1)
    rec = m.close()
    assert rec["error"] == "" and rec["clock"] == "wall"
    assert rec["device"]["uuid"] == UUIDS[1] and rec["device"]["matched_by"] == "uuid"
    assert rec["device"]["index"] == 1 and rec["device"]["cuda_ordinal"] == 0 and rec["device"]["name"] == "NVIDIA H200"
    assert rec["util_mean_pct"] == 90.0           # GPU 1's samples, not GPU 0's
    assert rec["sample_period_s"] == pytest.approx(PERIOD, rel=0.01)
    assert len(rec["windows"]) == 2 and rec["window_s"] == pytest.approx(0.7, abs=0.1)
    assert rec["short_window"] is True
    wins = [tuple(w) for w in rec["windows"]]
    assert rec["samples"] and all(in_windows(s["t_unix"], wins, PERIOD) for s in rec["samples"])
    assert rec["clock_samples"] and all(in_windows(c["t_unix"], wins) for c in rec["clock_samples"])
    assert rec["clock_samples"][0]["sm_clock_mhz"] == 1980.0 and rec["clock_samples"][0]["mem_used_mib"] == 512.0
    json.dumps(rec)
    assert m.close() is rec                        # idempotent


def test_monitor_falls_back_to_the_index_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(str_only=False))
    monkeypatch.setattr(gm, "cuda_device_ids", lambda ordinal: ({}, "no CUDA driver to identify cuda:1 (test)"))
    m = GpuMonitor("cuda:1", interval_s=0.01, fetch_s=0.05)
    m.open()
    m.begin_window()
    time.sleep(0.2)
    rec = m.close()
    assert rec["device"]["index"] == 1 and rec["device"]["matched_by"].startswith("index")
    assert "no CUDA driver" in rec["note"] and "NVML index 1 assumed" in rec["note"]
    assert rec["util_mean_pct"] == 90.0


def test_monitor_without_nvml_records_the_error_and_never_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    m = GpuMonitor("cuda:0")
    m.open()
    m.begin_window()
    m.end_window()
    rec = m.close()
    assert rec["error"].startswith("NVML unavailable: ") and rec["samples"] == [] and rec["util_mean_pct"] is None


def test_legacy_start_stop_still_give_samples(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.setattr(gm, "cuda_device_ids", lambda ordinal: ({"uuid": UUIDS[0]}, ""))
    m = GpuMonitor(0, interval_s=0.01, fetch_s=0.05)   # the worker's former call: an NVML-ish index
    assert m.device == "cuda:0"
    m.start()
    time.sleep(0.25)
    samples = m.stop()
    assert samples and all(s["gpu_util_pct"] == 10.0 for s in samples)


def test_gpu_info_names_the_rows_gpu_by_uuid(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    ids = {0: {"uuid": UUIDS[1]}, 1: {"uuid": "", "pci_bus_id": "0000:1b:00.0"}}
    monkeypatch.setattr(gm, "cuda_device_ids", lambda ordinal: (ids[ordinal], ""))
    info = env.gpu_info(["cuda", "cuda:1"])
    assert info["uuid"] == UUIDS[1] and info["pci_bus_id"] == BUSES[1] and info["name"] == "NVIDIA H200"
    assert info["devices"]["cuda"]["index"] == 1 and info["devices"]["cuda"]["matched_by"] == "uuid"
    assert info["devices"]["cuda:1"]["index"] == 0 and info["devices"]["cuda:1"]["matched_by"] == "pci_bus_id"
    assert [g["uuid"] for g in info["gpus"]] == UUIDS and info["driver"] == "580.82" and info["count"] == 2
    json.dumps(info)


def test_gpu_info_without_nvml_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert env.gpu_info() == {}
