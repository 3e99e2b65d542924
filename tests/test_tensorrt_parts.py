"""The TensorRT backend's parts that run without TensorRT (CI): the log, the version gate, the
profile chosen for static and dynamic ONNX inputs, the I/O dtype map, the checked returns of the
build and load steps (against a stand-in `tensorrt` module), and settings/metrics parity between
torch's `pipe` and TensorRT's `fp16-pipe` (the same device pipeline, run here on CPU tensors)."""
from __future__ import annotations

import io
import re
import sys
import types
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from backends.tensorrt_backend import (
    NUMPYLESS_TYPES, Profile, TensorRTBackend, TrtLog, check_profile, choose_profile, make_trt_logger,
    onnx_inputs, torch_dtype, version_gate)
from backends.torch_backend import TorchBackend
from retinabench.errors import BackendUnavailable, BenchError, ModelError
from retinabench.graph.onnx_export import export_onnx
from retinabench.model.device.insightface import POSTPROCESS_TIMER
from retinabench.model.device.pipeline import NETWORK_TIMER, build_device_stages
from retinabench.model.device.preprocess import PREPROCESS_TIMER
from retinabench.model.family import get_family

FAMILY = get_family("insightface")


# ---------------------------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------------------------

def test_log_writes_warnings_and_worse_to_its_stream_and_keeps_errors():
    out = io.StringIO()
    log = TrtLog(stream=out)
    log.write("INFO", "building layer 3")
    log.write("VERBOSE", "tactic 7")
    log.write("WARNING", "weights of\nlayer conv1 underflow")
    log.write("ERROR", "IBuilder::buildSerializedNetwork: Error Code 4: profile invalid")
    log.write("INTERNAL_ERROR", "Assertion failed")
    assert out.getvalue().splitlines() == [
        "[TensorRT] [W] weights of layer conv1 underflow",
        "[TensorRT] [E] IBuilder::buildSerializedNetwork: Error Code 4: profile invalid",
        "[TensorRT] [F] Assertion failed"]
    assert log.errors() == ["IBuilder::buildSerializedNetwork: Error Code 4: profile invalid", "Assertion failed"]


def test_log_goes_to_stderr_by_default(capsys):
    TrtLog().write("ERROR", "no stream given")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "[TensorRT] [E] no stream given\n"


def test_log_min_severity_and_bad_severity():
    out = io.StringIO()
    log = TrtLog(min_severity="VERBOSE", stream=out)
    log.write("VERBOSE", "v")
    assert out.getvalue() == "[TensorRT] [V] v\n"
    with pytest.raises(ValueError, match="expected one of"):
        TrtLog(min_severity="LOUD")


def test_failure_quotes_the_errors_since_the_mark_on_one_line():
    log = TrtLog(stream=io.StringIO())
    log.write("ERROR", "an earlier failure")
    mark = log.mark()
    assert log.failure("engine build failed", mark) == "tensorrt: engine build failed (TensorRT logged no error)"
    log.write("ERROR", "first\nof two")
    log.write("WARNING", "not an error")
    log.write("ERROR", "second")
    line = log.failure("engine build failed", mark)
    assert line == "tensorrt: engine build failed (TensorRT log: first of two | second)"
    assert "an earlier failure" in log.failure("x")  # since 0: every kept error
    assert "\n" not in line


def test_failure_shows_the_last_three_errors_cut_to_width_and_counts_the_rest():
    log = TrtLog(keep=4, stream=io.StringIO())
    for i in range(10):
        log.write("ERROR", f"error {i} " + "x" * 300)
    line = log.failure("execute_async_v3 failed")
    shown = re.findall(r"error (\d)", line)
    assert shown == ["7", "8", "9"]
    assert "(and 7 earlier, on stderr)" in line   # 10 logged, 3 shown (only 4 kept in memory)
    assert [len(m) for m in re.findall(r"error \d x+\.\.\.", line)] == [150, 150, 150]
    assert len(log.errors()) == 4


def test_make_trt_logger_subclasses_ilogger_and_forwards(monkeypatch):
    trt = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    out = io.StringIO()
    log = TrtLog(stream=out)
    logger = make_trt_logger(log)
    assert isinstance(logger, trt.ILogger) and logger.base_initialised
    logger.log(trt.ILogger.Severity.ERROR, "bad")
    logger.log(trt.ILogger.Severity.INFO, "quiet")
    assert log.errors() == ["bad"] and out.getvalue() == "[TensorRT] [E] bad\n"


# ---------------------------------------------------------------------------------------------
# The version gate
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["10.0.1", "10.13.0.35", "10.16.1.11"])
def test_version_gate_accepts_tensorrt_10(version):
    assert version_gate(version) == (True, "")


def test_version_gate_refuses_tensorrt_11_with_the_reason():
    ok, reason = version_gate("11.4.0")
    assert not ok
    assert reason.startswith("tensorrt 11.4.0 is not supported")
    assert "BuilderFlag.FP16" in reason and "removed in 11" in reason and "strongly typed" in reason


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0"])
def test_version_gate_refuses_older_apis(version):
    ok, reason = version_gate(version)
    assert not ok and "TensorRT 10 API" in reason


def test_version_gate_unreadable_version():
    assert version_gate("nightly") == (False, "tensorrt 'nightly': cannot read its major version")


def test_available_gives_the_gate_reason(monkeypatch):
    trt = _fake_tensorrt()
    trt.__version__ = "11.0.0.7"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    ok, reason = TensorRTBackend.available()
    assert not ok and reason.startswith("tensorrt 11.0.0.7 is not supported")


# ---------------------------------------------------------------------------------------------
# The profile, from the ONNX input
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(mnet25, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    graph = mnet25.graph()
    return {"dynamic": export_onnx(graph, d / "dynamic.onnx", (1, 3, 448, 640), dynamic_batch=True),
            "static": export_onnx(graph, d / "static.onnx", (2, 3, 448, 640), dynamic_batch=False)}


def test_dynamic_batch_onnx_gets_a_profile_up_to_max_batch(exported):
    ((name, shape),) = onnx_inputs(exported["dynamic"])
    assert shape == (-1, 3, 448, 640)
    p = choose_profile(shape, batch=4, height=448, width=640, max_batch=32)
    assert (p.min, p.opt, p.max, p.fixed_batch) == ((1, 3, 448, 640), (4, 3, 448, 640), (32, 3, 448, 640), False)
    check_profile(shape, p)
    q = choose_profile(shape, batch=4, height=448, width=640, max_batch=32, opt_batch=32)  # the original's way
    assert q.opt == (32, 3, 448, 640) and q.to_json()["max"] == [32, 3, 448, 640]


def test_static_batch_onnx_gets_a_fixed_profile(exported):
    ((_, shape),) = onnx_inputs(exported["static"])
    assert shape == (2, 3, 448, 640)
    p = choose_profile(shape, batch=2, height=448, width=640, max_batch=8)
    assert p == Profile((2, 3, 448, 640), (2, 3, 448, 640), (2, 3, 448, 640), fixed_batch=True)
    check_profile(shape, p)


def test_static_batch_onnx_refuses_another_batch(exported):
    ((_, shape),) = onnx_inputs(exported["static"])
    with pytest.raises(ModelError, match="fixed batch of 2 and this row's batch is 4: run it at batch 2, "
                                         "or export the model with a free batch dimension"):
        choose_profile(shape, batch=4, height=448, width=640, max_batch=8)


def test_fixed_spatial_size_must_match_the_row(exported):
    ((_, shape),) = onnx_inputs(exported["dynamic"])
    with pytest.raises(ModelError, match="fixed height of 448; this row needs 896"):
        choose_profile(shape, batch=1, height=896, width=640, max_batch=1)


def test_default_onnx_model_has_free_batch_and_size():
    from retinabench.defaults import default_model_path
    try:
        path = default_model_path()
    except Exception as e:
        pytest.skip(f"default model not fetched: {e}")
    ((_, shape),) = onnx_inputs(path)
    assert shape == (-1, 3, -1, -1)
    p = choose_profile(shape, batch=1, height=896, width=1280, max_batch=1)
    assert p.min == p.opt == p.max == (1, 3, 896, 1280)


@pytest.mark.parametrize("opt_batch", [0, 9])
def test_opt_batch_outside_the_profile_is_an_error(opt_batch):
    with pytest.raises(BenchError, match=f"opt_batch={opt_batch} is outside the profile's batches 1..8"):
        choose_profile((-1, 3, 448, 448), batch=2, height=448, width=448, max_batch=8, opt_batch=opt_batch)


def test_profile_violating_a_fixed_dimension_is_caught():
    with pytest.raises(ModelError, match="does not fit the profile"):
        check_profile((1, 3, 448, 448), Profile((1, 3, 448, 448), (2, 3, 448, 448), (4, 3, 448, 448)))


def test_opt_batch_is_an_option():
    be = TensorRTBackend(variant="default", device="cuda", options={"opt_batch": 8})
    assert be.options.opt_batch == 8
    with pytest.raises(Exception, match="opt_batch: expected int"):
        TensorRTBackend(variant="default", device="cuda", options={"opt_batch": "eight"})


# ---------------------------------------------------------------------------------------------
# The dtype map: every TensorRT I/O type
# ---------------------------------------------------------------------------------------------

# trt.nptype of TensorRT 10 (tensorrt/__init__.py): the types numpy has.
TRT10_NPTYPE = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}
EXPECTED = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
            "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
            "FP8": torch.float8_e4m3fn}
UNBUFFERABLE = {"INT4", "FP4", "E8M0"}  # packed sub-byte / scale types: no torch buffer type


def _fake_nptype(dtype):
    if dtype.name not in TRT10_NPTYPE:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return TRT10_NPTYPE[dtype.name]


def _stub_datatypes():
    try:
        dist = metadata.distribution("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed")
    (stub,) = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith("tensorrt_bindings/tensorrt.pyi")]
    text = stub.read_text()
    block = text[text.index("class DataType:"):]
    members = re.search(r"__members__: typing.ClassVar\[dict\[str, DataType\]\]  # value = \{(.*?)\}\n", block).group(1)
    return re.findall(r"'([A-Z0-9_]+)'", members)


def test_the_dtype_map_covers_every_tensorrt_type_in_the_stubs():
    names = _stub_datatypes()
    assert set(names) == set(EXPECTED) | UNBUFFERABLE, names
    for name in names:
        dtype = types.SimpleNamespace(name=name)
        if name in UNBUFFERABLE:
            with pytest.raises(ModelError, match=f"tensorrt I/O type {name} has no buffer type"):
                torch_dtype(dtype, _fake_nptype)
        else:
            assert torch_dtype(dtype, _fake_nptype) == EXPECTED[name], name
    assert set(NUMPYLESS_TYPES) == {"BF16", "FP8"}


# ---------------------------------------------------------------------------------------------
# Checked returns of the build and load steps, against a stand-in tensorrt module
# ---------------------------------------------------------------------------------------------

class _Severity:
    def __init__(self, name):
        self.name = name


def _fake_tensorrt(**behaviour):
    """Just enough of the TensorRT 10 Python API for _build and _open_engine; `behaviour` breaks a step."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.16.1.11"
    sev = types.SimpleNamespace(**{n: _Severity(n) for n in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")})

    class ILogger:
        Severity = sev

        def __init__(self):
            self.base_initialised = True

    def err(logger, msg):
        logger.log(sev.ERROR, msg)

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs = [Tensor("data", [-1, 3, 448, 640])] + [Tensor("extra", [1])] * behaviour.get("extra_inputs", 0)

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class Config:
        def __init__(self, logger):
            self.logger = logger

        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            pass

        def clear_flag(self, flag):
            pass

        def add_optimization_profile(self, profile):
            if behaviour.get("profile_index", 0) < 0:
                err(self.logger, "IOptimizationProfile: opt batch exceeds max")
            return behaviour.get("profile_index", 0)

    class OptProfile:
        def set_shape(self, name, lo, opt, hi):
            self.shape = (name, lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config(self.logger)

        def create_optimization_profile(self):
            return OptProfile()

        def build_serialized_network(self, network, config):
            if behaviour.get("build_fails"):
                err(self.logger, "Error Code 10: Could not find any implementation for node conv1")
                return None
            return b"plan"

    class OnnxParser:
        def __init__(self, network, logger):
            self.logger = logger

        def parse_from_file(self, path):
            return not behaviour.get("parse_fails")

        @property
        def num_errors(self):
            return 1 if behaviour.get("parse_fails") else 0

        def get_error(self, i):
            return "In node 12 (Resize): UNSUPPORTED_NODE\nmode"

    class Engine:
        num_io_tensors = 2 + behaviour.get("engine_inputs", 1) - 1

        def get_tensor_name(self, i):
            return ["data", "extra", "out"][i] if self.num_io_tensors == 3 else ["data", "out"][i]

        def get_tensor_mode(self, name):
            return "in" if name in ("data", "extra") else "out"

        def get_tensor_profile_shape(self, name, index):
            return [[1, 3, 448, 640], [2, 3, 448, 640], [4, 3, 448, 640]]

        def create_execution_context(self):
            if behaviour.get("no_context"):
                err(self.logger, "Requested amount of GPU memory could not be allocated")
                return None
            return Context()

    class Context:
        def set_input_shape(self, name, shape):
            return not behaviour.get("shape_rejected")

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            if behaviour.get("no_engine"):
                err(self.logger, "Serialization assertion failed: magic tag does not match")
                return None
            engine = Engine()
            engine.logger = self.logger
            return engine

    trt.ILogger, trt.Builder, trt.OnnxParser, trt.Runtime = ILogger, Builder, OnnxParser, Runtime
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", TF32="tf32")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Dims4 = lambda *d: tuple(d)
    return trt


PROFILE = Profile((1, 3, 448, 640), (2, 3, 448, 640), (4, 3, 448, 640))


def _backend(monkeypatch, **behaviour):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(**behaviour))
    be = TensorRTBackend(variant="default", device="cuda")
    be._log = TrtLog(stream=io.StringIO())
    be._logger = make_trt_logger(be._log)
    return be


def test_build_succeeds_with_the_stand_in(monkeypatch, tmp_path):
    assert _backend(monkeypatch)._build(tmp_path / "m.onnx", PROFILE) == b"plan"


@pytest.mark.parametrize("behaviour, error, message", [
    ({"parse_fails": True}, ModelError, r"tensorrt: cannot parse .*m\.onnx: In node 12 \(Resize\): UNSUPPORTED_NODE mode "
                                        r"\(TensorRT logged no error\)"),
    ({"extra_inputs": 1}, ModelError, r"the parsed network has 2 inputs \['data', 'extra'\]; expected one image input"),
    ({"profile_index": -1}, BenchError, r"add_optimization_profile rejected the profile .* of input 'data' \(returned -1\) "
                                        r"\(TensorRT log: IOptimizationProfile: opt batch exceeds max\)"),
    ({"build_fails": True}, BenchError, r"engine build failed \(build_serialized_network returned None\) "
                                        r"\(TensorRT log: Error Code 10: Could not find any implementation for node conv1\)"),
])
def test_build_failures_name_the_step_and_quote_the_log(monkeypatch, tmp_path, behaviour, error, message):
    be = _backend(monkeypatch, **behaviour)
    with pytest.raises(error, match=message) as e:
        be._build(tmp_path / "m.onnx", PROFILE)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("behaviour, error, message", [
    ({"no_engine": True}, BenchError, r"could not deserialise the cached engine .*engine\.plan "
                                      r"\(TensorRT log: Serialization assertion failed: magic tag does not match\)"),
    ({"engine_inputs": 2}, ModelError, r"the engine has inputs \['data', 'extra'\]; expected one image input"),
    ({"no_context": True}, BenchError, r"create_execution_context returned no context "
                                       r"\(TensorRT log: Requested amount of GPU memory could not be allocated\)"),
    ({"shape_rejected": True}, BenchError, r"set_input_shape rejected \[8, 3, 448, 640\] for input 'data' "
                                           r"\(the engine's profile: \{'min': \[1, 3, 448, 640\], 'opt': \[2, 3, 448, 640\], "
                                           r"'max': \[4, 3, 448, 640\]\}\)"),
])
def test_load_failures_name_the_step_and_quote_the_log(monkeypatch, tmp_path, behaviour, error, message):
    be = _backend(monkeypatch, **behaviour)
    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(error, match=message):
        be._open_engine(plan, (8, 3, 448, 640))


def test_a_cpu_device_is_unavailable(monkeypatch, mnet25):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    with pytest.raises(BackendUnavailable, match="tensorrt runs on a CUDA device, not 'cpu'"):
        TensorRTBackend(variant="default", device="cpu").load(mnet25, 1, 448, 448)


# ---------------------------------------------------------------------------------------------
# Settings and metrics parity: torch `pipe` and TensorRT `fp16-pipe` run the same pipeline
# ---------------------------------------------------------------------------------------------

class _FakeTimer:
    def __init__(self, label, times):
        self.label, self.times_ms = label, list(times)


def _pipeline(cls, variant, reference_native, t1_image):
    """The backend's device stages built on CPU tensors (no CUDA here), as the worker builds them."""
    be = cls(variant=variant, device="cuda")
    be.device_input = torch.zeros(reference_native["blob"].shape, dtype=torch.float32)
    pre = be.device_preprocess(FAMILY, "native", None)
    post = be.device_postprocess(FAMILY, reference_native["names"], 0.8)
    outputs = {k: torch.from_numpy(v) for k, v in reference_native["outputs"].items()}
    seconds = build_device_stages(pre, lambda blob: outputs, post, [t1_image])
    assert seconds > 0 and len(pre._plans) == 1 and post._built
    return be


def test_fp16_pipe_has_the_settings_of_torch_pipe(reference_native, t1_image):
    torch_be = _pipeline(TorchBackend, "pipe", reference_native, t1_image)
    trt_be = _pipeline(TensorRTBackend, "fp16-pipe", reference_native, t1_image)
    a, b = torch_be.settings(), trt_be.settings()
    assert (a.precision, a.device_stages) == (b.precision, b.device_stages) == ("f16", True)
    shared = set(torch_be.device_stage_settings())
    assert shared == set(trt_be.device_stage_settings()) == {
        "compile_stages", "upload", "upload_chunk", "host_resize", "preprocess_build_s", "preprocess_compile_s",
        "postprocess_build_s", "postprocess_compile_s", "nms_threshold", "candidates", "max_faces", "nms_iterations"}
    assert shared <= set(a.extras) and shared <= set(b.extras)
    timings = {k for k in shared if k.endswith("_s")}
    assert {k: a.extras[k] for k in shared - timings} == {k: b.extras[k] for k in shared - timings}
    assert a.extras["compile_stages"] is False  # both capture their stages uncompiled
    assert a.extras["preprocess_compile_s"] == b.extras["preprocess_compile_s"] == 0.0


def test_fp16_pipe_has_the_metrics_of_torch_pipe(reference_native, t1_image):
    got = []
    for be in (_pipeline(TorchBackend, "pipe", reference_native, t1_image),
               _pipeline(TensorRTBackend, "fp16-pipe", reference_native, t1_image)):
        # On CPU the stages keep no CUDA timers: give both backends the timers a GPU run would have.
        be._timer = _FakeTimer(NETWORK_TIMER, [1.0, 2.0])
        be._pre.timer = _FakeTimer(PREPROCESS_TIMER, [0.5, 0.5])
        be._post.timer = _FakeTimer(POSTPROCESS_TIMER, [0.2, 0.2])
        got.append(be.metrics())
    assert got[0] == got[1]
    assert set(got[0]) == {"gpu_time_ms", "gpu_times_include_warmup", "gpu_preprocess_ms", "gpu_postprocess_ms",
                           "postprocess_host_fallbacks", "gpu_timer_coverage"}
    assert got[0]["gpu_timer_coverage"] == {"gpu_time_ms": NETWORK_TIMER, "gpu_preprocess_ms": PREPROCESS_TIMER,
                                            "gpu_postprocess_ms": POSTPROCESS_TIMER}


def test_device_stage_variants_refuse_a_family_without_device_decoder():
    from retinabench.defaults import default_model_path
    from retinabench.model.source import open_model
    try:
        model = open_model(default_model_path())
    except Exception as e:
        pytest.skip(f"default model not fetched: {e}")
    for be in (TorchBackend(variant="pipe", device="cuda"), TensorRTBackend(variant="fp16-pipe", device="cuda")):
        with pytest.raises(BackendUnavailable, match="the biubug6 family has no device decode"):
            be.check_device_stages(model)
