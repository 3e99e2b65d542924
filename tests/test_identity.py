"""One row identity everywhere: rows that differ in anything keep apart, records round-trip, old runs load."""
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

from backends.base import REGISTRY, backend_class
from conftest import ROOT, SHARED
from retinabench.config import scenario_from_dict
from retinabench.errors import ConfigError
from retinabench.records import BackendSpec, InputSpec, Job, RowId, RowSettings, WorkerResult
from retinabench.report.summary import summary_rows
from retinabench.report.tables import stage_table
from retinabench.store import RowResult, RunStore

TORCH_ON_TWO_DEVICES = {"name": "two-devices", "model": "M", "device": "cuda", "loops": 3, "warmup": 1,
                        "input": {"mode": "fit", "width": 320, "height": 224},
                        "backends": ["torch", {"name": "torch", "device": "cpu"}]}


def _bench(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kw)


# --- the identity record ----------------------------------------------------------------------------

def test_row_id_key_holds_every_field_and_is_path_safe():
    a = RowId("torch", "pipe", "cuda:1", "448x448", 32, 32)
    assert a.key == "torch-pipe-cuda1-448x448-b32-m32" and "/" not in a.key and ":" not in a.key
    others = [RowId("torch", "default", "cuda:1", "448x448", 32, 32), RowId("torch", "pipe", "cuda", "448x448", 32, 32),
              RowId("torch", "pipe", "cuda:1", "native", 32, 32), RowId("torch", "pipe", "cuda:1", "448x448", 16, 32),
              RowId("torch", "pipe", "cuda:1", "448x448", 32, 64)]
    assert len({a.key, *(o.key for o in others)}) == 6
    assert RowId.from_json(json.loads(json.dumps(a.to_json()))) == a and hash(a) == hash(RowId(**a.to_json()))
    assert sorted([others[0], a])[0] == others[0]  # ordered: by backend, variant, device, ...
    assert a.label(batch=True, device=True) == "torch (pipe) b32 on cuda:1"


@pytest.mark.parametrize("bad", [dict(backend="a/b"), dict(device="gpu"), dict(device="cpu:0"), dict(batch=0),
                                 dict(batch=4, max_batch=2), dict(input="1280 x 896"), dict(variant="")])
def test_row_id_refuses_what_could_not_name_a_file(bad):
    with pytest.raises(ValueError):
        RowId(**{"backend": "torch", **bad})


def test_records_round_trip_through_json():
    row = RowId("onnxruntime", input="1280x896")
    job = Job(row, BackendSpec("onnxruntime", threads=2, options={"graph_optimization_level": "ORT_ENABLE_ALL"}),
              "/m.onnx", ("/a.jpg",), InputSpec("fit", 1280, 896), 10, 2, 0.8, family="biubug6", timeout_s=30)
    assert Job.from_json(json.loads(json.dumps(job.to_json()))) == job
    settings = RowSettings("cuda", "pipe", "f16", 16, True, extras={"tf32": False, "model_compile_s": 1.5})
    result = WorkerResult("passed", load_s=1.0, settings=settings, faces=[[{"score": 0.9}]],
                          metrics={"gpu_time_ms": [0.5]})
    back = WorkerResult.from_json(json.loads(json.dumps(result.to_json())))
    assert back == result and back.settings.device_stages is True
    # settings are stored flat; what a record does not declare stays an extra, never a field
    assert RowSettings.from_json({"device": "cpu", "upsample": "exact", "converted": True}).extras == {"converted": True}
    with pytest.raises(ValueError):
        WorkerResult("finished")


def test_tensorrt_pipe_counts_as_running_its_stages_on_the_device():
    """Reports read RowSettings.device_stages: TensorRT's fp16-pipe must declare it as torch's pipe does."""
    trt = backend_class("tensorrt")(variant="fp16-pipe", device="cuda")
    torch_pipe = backend_class("torch")(variant="pipe", device="cuda")
    assert trt.settings().device_stages is True and torch_pipe.settings().device_stages is True
    assert backend_class("tensorrt")(variant="fp16", device="cuda").settings().device_stages is False


# --- rows that differ in one field stay apart ------------------------------------------------------

def _passed(rid: RowId, ms: float) -> RowResult:
    s = np.full((5, 4), int(ms * 1e6), np.int64)
    s[:, 3] = s[:, :3].sum(1)
    return RowResult(rid, WorkerResult("passed", settings=RowSettings(rid.device, rid.variant, "f32", 1)),
                     samples_ns=s, warmup_ns=np.zeros((0, 4), np.int64))


@pytest.mark.parametrize("a, b", [
    (RowId("openvino", "default", input="640x448"), RowId("openvino", "bf16", input="640x448")),   # variant only
    (RowId("torch", batch=2, max_batch=8, input="448x448"), RowId("torch", batch=2, max_batch=32, input="448x448")),
    (RowId("torch", device="cuda", input="448x448"), RowId("torch", device="cpu", input="448x448")),
])
def test_two_rows_that_differ_in_one_field_both_reach_the_store_summary_and_table(tmp_path, a, b):
    store = RunStore(tmp_path)
    store.write_row(_passed(a, 1.0))
    store.write_row(_passed(b, 2.0))
    rows = store.read_rows()
    assert set(rows) == {a, b}
    summary = summary_rows([rows[a], rows[b]])
    assert {s["row"] for s in summary} == {a, b}
    totals = {s["row"]: s["median_ms"] for s in summary if s["stage"] == "total"}
    assert totals[a] == pytest.approx(3.0) and totals[b] == pytest.approx(6.0)
    assert len([ln for ln in stage_table(summary).splitlines() if ln.startswith(a.backend)]) == 2


def test_scenario_refuses_two_entries_of_one_identity_and_names_the_entry():
    with pytest.raises(ConfigError, match=r"backends\[1\]: backend 'torch', variant 'default' on cpu is listed twice"):
        scenario_from_dict({**TORCH_ON_TWO_DEVICES, "device": "cpu"})


def test_scenario_on_two_devices_has_two_rows():
    rows = scenario_from_dict(TORCH_ON_TWO_DEVICES).rows()
    assert [r.id.device for r in rows] == ["cuda", "cpu"] and len({r.key for r in rows}) == 2


def test_same_runtime_on_two_devices_runs_both_rows(tmp_path, mnet25_dir, t1_path):
    """The bug that started this: `device: cuda` at the top and `{name: torch, device: cpu}`."""
    pytest.importorskip("torch")
    import torch
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump({**TORCH_ON_TWO_DEVICES, "model": str(mnet25_dir), "images": [str(t1_path)],
                                   "threads": 1}))
    out = _bench("--config", str(cfg), "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "r").iterdir()
    rows = RunStore(run).read_rows()
    cuda, cpu = RowId("torch", device="cuda", input="320x224"), RowId("torch", device="cpu", input="320x224")
    assert set(rows) == {cuda, cpu}
    assert rows[cpu].status == "passed"
    if not torch.cuda.is_available():
        assert rows[cuda].status == "unavailable" and "no CUDA device" in rows[cuda].reason
    lines = list(csv.DictReader((run / "summary.csv").open()))
    assert {(ln["device"], ln["status"]) for ln in lines} >= {("cpu", "passed"), ("cuda", rows[cuda].status)}
    table = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("torch ")]  # the console's rows
    assert sorted(ln[2] for ln in table) == ["cpu", "cuda"]   # two devices: a device column, one row on each


# --- typed backend options -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_an_unknown_backend_option_is_one_line_naming_the_key(name):
    data = {"model": "M", "input": {"mode": "native"}, "backends": [{"name": name, "options": {"graph_optimisation_level": 1}}]}
    with pytest.raises(ConfigError) as e:
        scenario_from_dict(data)
    msg = str(e.value)
    assert "\n" not in msg and "graph_optimisation_level" in msg and repr(name) in msg and "unknown option" in msg


@pytest.mark.parametrize("name, options, words", [
    ("onnxruntime", {"graph_optimization_level": "FAST"}, "is not one of ORT_DISABLE_ALL"),
    ("empty", {"fault_after": "two"}, "expected int, got str"),
    ("torch", {"candidates": 1.5}, "expected int, got float"),
    ("caffe", {"upsample": "nearest"}, "is not one of exact, bilinear"),
    ("tensorrt", {"workspace_mib": True}, "expected int, got bool"),
])
def test_a_mistyped_backend_option_is_one_line(name, options, words):
    with pytest.raises(ConfigError, match=words):
        scenario_from_dict({"model": "M", "input": {"mode": "native"}, "backends": [{"name": name, "options": options}]})


def test_known_options_reach_the_backend_typed():
    s = scenario_from_dict({"model": "M", "input": {"mode": "native"},
                            "backends": [{"name": "torch", "variant": "pipe", "options": {"candidates": 128}}]})
    be = backend_class("torch")(variant="pipe", device="cuda", options=s.backends[0].options)
    assert be.options.candidates == 128 and be.options.max_faces == 64


# --- run folders written before RowId ---------------------------------------------------------------

COMMITTED = ROOT / "results" / "20261127-055920-320x416"


def test_a_committed_run_loads_with_typed_ids():
    rows = RunStore(COMMITTED).read_rows()
    assert len(rows) == 12 and all(r.stored_key.endswith("-b1-m1") and "cpu" not in r.stored_key for r in rows.values())
    assert {r.id.device for r in rows.values()} == {"cpu"}
    ordered = RunStore(COMMITTED).ordered_rows(rows)
    assert [r.id.backend for r in ordered][:2] == ["mxnet", "caffe"]  # run.json's order, from its old keys


def test_report_compare_and_resume_on_a_committed_run(tmp_path, mnet25_dir, t1_path):
    """An old folder resumes: its rows load, the missing ones run (in the new key format), reports work."""
    run = tmp_path / COMMITTED.name
    shutil.copytree(COMMITTED, run, ignore=shutil.ignore_patterns("plots"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(model=str(mnet25_dir), images=[str(t1_path)])   # where this machine has them
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for old in ("empty-default-b1-m1", "tensorrt-default-b1-m1"):  # the two quick rows go missing
        for suffix in (".json", ".npz"):
            (run / "rows" / f"{old}{suffix}").unlink(missing_ok=True)
    meta = json.loads((run / "run.json").read_text())
    meta.update(status="incomplete", missing=["empty-default-b1-m1", "tensorrt-default-b1-m1"])
    (run / "run.json").write_text(json.dumps(meta))
    kept = {p.name: p.read_bytes() for p in (run / "rows").iterdir()}
    scenario = {k: v for k, v in config.items() if k != "source" and v != []}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))

    out = _bench("--config", str(tmp_path / "s.yaml"), "--resume", str(run))
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert {p.name: p.read_bytes() for p in (run / "rows").iterdir() if p.name in kept} == kept  # untouched
    rows = RunStore(run).read_rows()
    assert len(rows) == 12 and rows[RowId("empty", input="320x416")].stored_key == "empty-default-cpu-320x416-b1-m1"
    lines = list(csv.DictReader((run / "summary.csv").open()))
    assert len({(ln["backend"], ln["variant"]) for ln in lines}) == 12

    report = _bench("report", str(run), "--no-plots")
    assert report.returncode == 0 and "openvino" in report.stdout, report.stderr
    compare = _bench("compare", str(COMMITTED), str(run))
    assert compare.returncode == 0, compare.stderr
    assert "mxnet" in compare.stdout and "only in B: empty" not in compare.stdout


# --- the installed console command --------------------------------------------------------------------

def test_console_command_is_bench_py():
    exe = Path(sys.executable).with_name("retinabench")
    if not exe.exists():
        pytest.skip(f"{exe} not installed: run ./setup.sh (pip install -e .)")
    for args in (["--help"], ["run", "--help"], ["compare", "--help"]):
        a = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
        b = _bench(*args)
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout)
