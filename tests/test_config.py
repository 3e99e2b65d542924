"""Scenario configs: the shipped ones validate; every bad field is one error naming it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from retinabench.config import load_scenario, scenario_from_dict
from retinabench.errors import ConfigError

BASE = {"model": "default", "input": {"mode": "fit", "width": 640, "height": 448}, "backends": ["mxnet"]}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path, monkeypatch):
    # on the largest machine the shipped configs are written for: the H200 host's 16 cores
    monkeypatch.setattr("retinabench.config.usable_cores", lambda: 16)
    s = load_scenario(path)
    assert s.rows()


def test_a_thread_sweep_beyond_the_cores_is_one_line(monkeypatch):
    monkeypatch.setattr("retinabench.config.usable_cores", lambda: 2)
    with pytest.raises(ConfigError, match=r"^sweep.threads: 4, 8, 16 above this machine's 2 cores \(oversubscribe"):
        load_scenario(ROOT / "configs" / "sweep-threads-16.yaml")


def test_448_sweep_max_batch_rule():
    s = load_scenario(ROOT / "configs" / "448x448.yaml")
    pairs = sorted({(r.id.batch, r.id.max_batch) for r in s.rows()})
    assert pairs == [(1, 8), (2, 8), (4, 8), (8, 8), (16, 32), (32, 32)]


def test_defaults():
    s = scenario_from_dict(dict(BASE))
    assert s.loops == 1000 and s.warmup == 50 and s.batches == (1,) and s.threshold == 0.8
    assert s.rows()[0].id.max_batch == 1


@pytest.mark.parametrize("change, field", [
    ({"loops": -1}, "loops"),
    ({"loops": "many"}, "loops"),
    ({"batches": [0]}, "batches[0]"),
    ({"batches": []}, "batches"),
    ({"input": {"mode": "fit", "width": 0, "height": 448}}, "input.width"),
    ({"input": {"mode": "fit", "width": 100000, "height": 448}}, "input.width"),
    ({"input": {"mode": "fit", "width": 650, "height": 448}}, "input.width"),
    ({"input": {"mode": "fit", "width": 640}}, "input.height"),
    ({"input": {"mode": "zoom", "width": 640, "height": 448}}, "input.mode"),
    ({"input": {"mode": "fit", "width": 640, "height": 448, "depth": 3}}, "input.depth"),
    ({"backends": ["nosuch"]}, "backends[0].name"),
    ({"backends": [{"name": "mxnet", "colour": "red"}]}, "backends[0].colour"),
    ({"backends": []}, "backends"),
    ({"images": []}, "images"),
    ({"threshold": 2}, "threshold"),
    ({"threads": 0}, "threads"),
    ({"surprise": 1}, "surprise"),
    ({"row_timeout_s": 0}, "row_timeout_s"),
    ({"row_timeout_s": "1h"}, "row_timeout_s"),
    ({"reference": "onnxruntime"}, "reference"),
])
def test_bad_fields_are_named(change, field):
    with pytest.raises(ConfigError) as e:
        scenario_from_dict({**BASE, **change})
    assert field in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_required_field():
    with pytest.raises(ConfigError, match="'backends'"):
        scenario_from_dict({"model": "m", "input": {"mode": "native"}})


def test_yaml_that_is_not_a_mapping_or_not_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_scenario(p)
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scenario(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


def test_yaml_cannot_construct_python_objects(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError):
        load_scenario(p)


def test_environment_and_flag_overrides(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    monkeypatch.setenv("RETINABENCH_MODEL", "/env/model")
    monkeypatch.setenv("RETINABENCH_IMAGE", "/env/a.jpg")
    s = load_scenario(p)
    assert s.model == "/env/model" and s.images == ("/env/a.jpg",)
    s = load_scenario(p, {"model": "/flag/model", "loops": 3})
    assert s.model == "/flag/model" and s.loops == 3
