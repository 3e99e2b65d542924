"""The `empty` backend's CUDA floor variant, and the device-stage build pass outside the measured loop.

Without CUDA: the floor variant is unavailable with its reason; the build pass runs the stages once,
records no GPU-timer entry and returns its seconds. With CUDA, the same run for real (skipped here).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backends.base import create_backend
from retinabench.errors import BackendUnavailable
from retinabench.model.device import cuda as cudamod
from retinabench.model.device.cuda import GpuTimer, untimed
from retinabench.model.device.pipeline import build_device_stages
from retinabench.model.family import get_family

FAMILY = get_family("insightface")
HAS_CUDA = torch.cuda.is_available()


def test_empty_cuda_variant_needs_a_cuda_device(mnet25):
    with create_backend("empty", variant="cuda", device="cpu") as be:
        with pytest.raises(BackendUnavailable, match=r"empty variant 'cuda' needs a CUDA device \(device is 'cpu'\)"):
            be.load(mnet25, 1, 448, 448)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
def test_empty_cuda_variant_without_cuda_says_why(mnet25):
    with create_backend("empty", variant="cuda", device="cuda") as be:
        with pytest.raises(BackendUnavailable, match="no CUDA device"):
            be.load(mnet25, 1, 448, 448)


def test_empty_default_variant_is_still_the_cpu_floor(mnet25):
    with create_backend("empty", device="cpu") as be:
        be.load(mnet25, 1, 448, 448)
        be.infer(np.zeros((1, 3, 448, 448), np.float32))
        assert be.metrics() == {} and "floor" not in be.settings().extras


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_empty_cuda_variant_is_the_gpu_floor(mnet25):
    with create_backend("empty", device="cpu") as cpu, create_backend("empty", variant="cuda", device="cuda") as gpu:
        cpu.load(mnet25, 1, 448, 448)
        gpu.load(mnet25, 1, 448, 448)
        blob = np.zeros((1, 3, 448, 448), np.float32)
        for _ in range(3):
            outs = gpu.infer(blob)
        ref = cpu.infer(blob)
        assert set(outs) == set(ref) and all(np.array_equal(outs[k], ref[k]) for k in ref)
        m = gpu.metrics()
        assert len(m["gpu_time_ms"]) == 3 and all(t >= 0 for t in m["gpu_time_ms"])
        assert "event pair" in m["gpu_timer_coverage"]["gpu_time_ms"]
        assert gpu.settings().extras["floor"].startswith("GPU floor")


class _Event:
    def __init__(self):
        self.recorded = 0

    def record(self):
        self.recorded += 1

    def elapsed_time(self, other):
        return 1.5


def _timer(label="x"):
    t = GpuTimer.__new__(GpuTimer)  # torch.cuda.Event needs CUDA: stand-in events
    t.label, t._start, t._end, t.times_ms = label, _Event(), _Event(), []
    return t


def test_untimed_calls_leave_no_timer_entry():
    t = _timer()
    with untimed():
        t.start()
        t.stop()
        t.read()
        with untimed():  # nests
            t.read()
        t.read()
    t.start()
    t.stop()
    t.read()
    assert t.times_ms == [1.5] and t._start.recorded == 2


def test_build_device_stages_runs_one_untimed_pass():
    calls = []

    def pre(images):
        calls.append(("pre", len(images), cudamod._UNTIMED))
        return "blob", ["meta"]

    def infer(blob):
        calls.append(("infer", blob, cudamod._UNTIMED))
        return {"out": 1}

    def post(outputs, metas):
        calls.append(("post", outputs, metas, cudamod._UNTIMED))
        return []

    seconds = build_device_stages(pre, infer, post, [object(), object()])
    assert seconds >= 0.0
    assert calls == [("pre", 2, 1), ("infer", "blob", 1), ("post", {"out": 1}, ["meta"], 1)]
    assert cudamod._UNTIMED == 0


def test_build_device_stages_builds_the_cpu_stages_and_reports_their_build(reference_native, t1_image):
    with create_backend("torch", variant="pipe", device="cuda") as be:
        be.device_input = torch.zeros(reference_native["blob"].shape)
        pre = be.device_preprocess(FAMILY, "native", None)
        post = be.device_postprocess(FAMILY, reference_native["names"], 0.8)
        outputs = {k: torch.from_numpy(v) for k, v in reference_native["outputs"].items()}
        build_device_stages(pre, lambda blob: outputs, post, [t1_image])
        extras = be.settings().extras
        assert extras["preprocess_build_s"] >= 0.0 and extras["postprocess_build_s"] > 0.0
        assert len(pre.build_s) == 1
        faces = post(outputs, pre([t1_image])[1])  # a measured loop now builds nothing
        assert len(pre.build_s) == 1 and len(faces[0]) == 6


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_with_the_build_pass_warmup_zero_measures_no_capture(mnet25, t1_image):
    from retinabench.harness.loop import measure
    with create_backend("torch", variant="pipe", device="cuda") as be:
        be.load(mnet25, 1, 896, 1280)
        pre = be.device_preprocess(FAMILY, "fit", (1280, 896))
        post = be.device_postprocess(FAMILY, be.output_names, 0.8)
        build_s = build_device_stages(pre, be.infer, post, [t1_image])
        result = measure(pre, be.infer, post, [t1_image], loops=20, warmup=0)
        m = be.metrics()
        assert len(m["gpu_time_ms"]) == len(m["gpu_preprocess_ms"]) == len(m["gpu_postprocess_ms"]) == 20
        first_ms = result.samples_ns[0, 3] / 1e6
        assert first_ms < build_s * 1e3 / 2, (first_ms, build_s)  # sample 0 holds no capture
