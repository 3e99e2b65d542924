"""The command line a new user meets: run without YAML, --version, a mistyped subcommand, help with
defaults, detect --save, output folders that cannot be written, too many threads, and the caches
outside the project.

Runs are real `bench.py` processes on tiny scenarios (320x224, a few loops, one process per row,
the fast CPU backends); nothing is mocked but the environment variables that pick a cache folder.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import yaml

from conftest import ROOT
from retinabench.config import load_scenario

CONFIGS = ROOT / "configs"
TINY = ["--size", "320x224", "--loops", "3", "--warmup", "1", "--processes", "1"]


def bench(*args: str, env: dict = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


def one_line_error(out: subprocess.CompletedProcess, *words: str) -> str:
    """The project's error style: exit 2, one `error: ...` line on stderr, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def only_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def scenario_of(*argv: str):
    """The scenario `bench.py run ARGV` would run, and the lines it would say first (no run)."""
    from retinabench.cli import build_parser
    from retinabench.cli.run import scenario_from_args
    argv = tuple(str(CONFIGS / a[len("configs/"):]) if a.startswith("configs/") else a for a in argv)
    return scenario_from_args(build_parser().parse_args(["run", *argv]))


# --- run: backends, variants, reference, size, device, loops -------------------------------------------

def test_shipped_config_with_two_backends_and_no_reference_among_them(tmp_path):
    """configs/1280x896.yaml's reference is mxnet; picking onnxruntime and a named openvino variant
    (with spaces around the comma) runs, referred to the first one, which stderr says."""
    out = bench("--config", "configs/1280x896.yaml", "--backends", "onnxruntime , openvino:bf16", *TINY,
                "--threads", "2", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    said = [ln for ln in out.stderr.splitlines() if ln.startswith("reference:")]
    assert said == ["reference: onnxruntime (the first of --backends; the config's reference 'mxnet' is not among "
                    "them; --reference NAME picks another)"]
    run = only_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["reference"] == "onnxruntime"
    assert [(b["name"], b["variant"]) for b in config["backends"]] == [("onnxruntime", "default"), ("openvino", "bf16")]
    assert config["input"] == {"mode": "fit", "width": 320, "height": 224}
    assert (config["loops"], config["warmup"]) == (3, 1)
    meta = json.loads((run / "run.json").read_text())
    assert meta["rows"] == ["onnxruntime-default-cpu-320x224-b1-m1", "openvino-bf16-cpu-320x224-b1-m1"]
    summary = (run / "summary.csv").read_text()
    assert "onnxruntime-default-cpu-320x224-b1-m1" in summary  # the ratios' reference


def test_run_without_a_config(tmp_path):
    """--backends alone is a scenario: the default model and image at --size, named cli-WxH."""
    out = bench("run", "--backends", "empty,onnxruntime", *TINY, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reference: empty (the first of --backends; --reference NAME picks another)" in out.stderr
    run = only_run(tmp_path)
    assert run.name.endswith("-cli-320x224")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["model"], config["images"], config["reference"]) == ("default", ["default"], "empty")


def test_backends_keep_the_config_entry_and_device_moves_every_entry():
    """A GPU config lists onnxruntime on the CPU: --backends keeps that entry; --device cpu moves
    every entry (the config's device was cuda for the others)."""
    scenario, notes = scenario_of("--config", "configs/gpu-320x416.yaml", "--backends", "onnxruntime, empty:cuda")
    assert [(b.name, b.variant, b.device) for b in scenario.backends] == [("onnxruntime", "default", "cpu"),
                                                                          ("empty", "cuda", "cuda")]
    assert scenario.reference == "onnxruntime" and notes and "'torch' is not among them" in notes[0]
    scenario, _ = scenario_of("--config", "configs/gpu-320x416.yaml", "--device", "cpu")
    assert {b.device for b in scenario.backends} == {"cpu"} and len(scenario.backends) == 14
    scenario, _ = scenario_of("--config", "configs/smoke.yaml", "--device", "cuda:1", "--backends", "onnxruntime")
    assert [b.device for b in scenario.backends] == ["cuda:1"]


def test_reference_option():
    scenario, notes = scenario_of("--config", "configs/1280x896.yaml", "--backends", "onnxruntime,openvino",
                                  "--reference", "openvino")
    assert scenario.reference == "openvino" and notes == []
    scenario, notes = scenario_of("--config", "configs/1280x896.yaml", "--reference", "onnxruntime")
    assert scenario.reference == "onnxruntime"
    assert scenario.backends == load_scenario(ROOT / "configs" / "1280x896.yaml").backends  # the config's rows, all of them
    scenario, notes = scenario_of("--config", "configs/1280x896.yaml", "--backends", "mxnet,onnxruntime")
    assert scenario.reference == "mxnet" and notes == []  # the config's, among the chosen: nothing to say


def test_size_loops_warmup_override_the_config():
    scenario, _ = scenario_of("--config", "configs/smoke.yaml", "--size", "320x224", "--loops", "7", "--warmup", "0")
    assert (scenario.input.label, scenario.loops, scenario.warmup) == ("320x224", 7, 0)
    scenario, _ = scenario_of("--backends", "onnxruntime")
    assert (scenario.input.label, scenario.loops, scenario.warmup, scenario.name) == ("1280x896", 1000, 50,
                                                                                      "cli-1280x896")
    # the options added beside these keep working
    scenario, _ = scenario_of("--backends", "onnxruntime", "--processes", "2", "--contention-limit", "off")
    assert (scenario.processes, scenario.contention_limit) == (2, None)
    scenario, _ = scenario_of("--config", "configs/smoke.yaml", "--contention-limit", "0.5")
    assert (scenario.processes, scenario.contention_limit) == (None, 0.5)


@pytest.mark.parametrize("args, words", [
    (["--backends", "onnxrt"], ["unknown backend 'onnxrt'", "known: caffe, empty", "did you mean 'onnxruntime'"]),
    (["--backends", "openvino:bf8"], ["backend 'openvino' has no variant 'bf8'", "known: default, bf16"]),
    (["--backends", "onnxruntime,,empty"], ["'' is not NAME or NAME:VARIANT"]),
    (["--backends", "onnxruntime:"], ["is not NAME or NAME:VARIANT"]),
    (["--backends", "onnxruntime, onnxruntime"], ["listed twice"]),
    (["--backends", "onnxruntime", "--reference", "openvino"], ["--reference 'openvino'", "(onnxruntime)"]),
    (["--backends", "onnxruntime", "--size", "300x224"], ["--size.width: 300 is not a multiple of 32"]),
    (["--backends", "onnxruntime", "--size", "big"], ["--size 'big': expected WIDTHxHEIGHT"]),
    (["--backends", "onnxruntime", "--device", "gpu"], ["--device: device 'gpu': expected cpu, cuda or cuda:N"]),
    (["--backends", "onnxruntime", "--loops", "0"], ["--loops: 0: expected a whole number >= 1"]),
    (["--backends", "onnxruntime", "--warmup", "-1"], ["--warmup: -1: expected a whole number >= 0"]),
    (["--backends", "onnxruntime", "--loops", "99999999"], ["loops: 99999999 is out of range"]),
    (["--out", "somewhere"], ["run needs --config FILE.yaml or --backends"]),
])
def test_run_option_errors_are_one_line(args, words):
    one_line_error(bench("run", *args), *words)


def test_the_resume_hint_repeats_the_command():
    from retinabench.cli import build_parser
    from retinabench.cli.run import resume_command
    argv = ["run", "--backends", "onnxruntime, empty", "--resume", "results/old", "--loops", "3"]
    args = build_parser().parse_args(argv)
    args.argv = argv  # as main() records it
    assert resume_command(args, Path("results/new")) == ("python bench.py run --backends 'onnxruntime, empty' "
                                                         "--loops 3 --resume results/new")


# --- the program: --version, a mistyped subcommand, the old form, help ------------------------------

def test_version():
    from retinabench.cli import package_version
    out = bench("--version")
    assert out.returncode == 0 and out.stdout == f"retinabench {package_version()}\n", out
    pyproject = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert package_version() == pyproject  # the installed metadata (pip install -e .) or the file


def test_version_without_installed_metadata(monkeypatch):
    """A checkout that was never pip-installed still knows its version, from pyproject.toml."""
    from importlib import metadata

    from retinabench.cli import package_version

    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", missing)
    assert package_version() == re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def test_unknown_subcommand_is_named():
    line = one_line_error(bench("reprot", "x"))
    assert line == ("error: unknown command 'reprot' (known: run, detect, accuracy, convert, report, compare, "
                    "best, env); "
                    "did you mean 'report'?")
    assert "did you mean" not in one_line_error(bench("zzz"))
    one_line_error(bench("configs/smoke.yaml"), "bench.py run --config configs/smoke.yaml")


def test_options_first_still_mean_run():
    from retinabench.cli import _with_command
    assert _with_command(["--config", "x.yaml", "--loops", "3"]) == ["run", "--config", "x.yaml", "--loops", "3"]
    assert _with_command(["report", "x"]) == ["report", "x"]
    one_line_error(bench("--config", "configs/nonexistent.yaml"), "configs/nonexistent.yaml: cannot read config")


def test_argparse_errors_are_one_line():
    one_line_error(bench("detect"), "bench.py detect", "image")
    one_line_error(bench("run", "--schedule", "random"), "invalid choice")


def _subparsers():
    import argparse

    from retinabench.cli import build_parser
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_subcommand_help_shows_defaults():
    """Every option that takes a value says its default (flags and required options have none)."""
    subs = _subparsers()
    assert set(subs) >= {"run", "detect", "convert", "report", "compare", "env"}
    missing = []
    for name, sub in subs.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if action.option_strings and action.nargs != 0 and not action.required:
                if "default" not in formatter._expand_help(action):
                    missing.append(f"{name} {action.option_strings[0]}")
        sub.format_help()  # renders (a bad % in a help text fails here)
    assert missing == []


def test_detect_help_shows_its_defaults():
    out = bench("detect", "--help")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0
    for expected in ("runtime to run the model with (default: onnxruntime)", "cpu, cuda or cuda:N (default: cpu)",
                     "minimum face score (default: 0.8)", "(default: native)"):
        assert expected in text, expected


# --- detect: what ran, --save ----------------------------------------------------------------------

def _faces_from_text(stdout: str) -> List[List[float]]:
    return [[float(v) for v in m.groups()]
            for m in re.finditer(r"box \[([-\d.]+), ([-\d.]+), ([-\d.]+), ([-\d.]+)\]", stdout)]


def test_detect_says_what_ran_and_saves_an_annotated_image(tmp_path):
    import cv2

    from retinabench.defaults import MODEL_FILE, default_image_path
    target = tmp_path / "faces.png"  # PNG: lossless, so unchanged pixels compare equal
    out = bench("detect", "default", "--backend", "onnxruntime", "--threads", "2", "--input", "fit",
                "--size", "640x448", "--save", str(target))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("detect: backend onnxruntime, variant default, device cpu, input 640x448; model ")
    assert MODEL_FILE in lines[0] and re.search(r"model_sha256 [0-9a-f]{12}\)$", lines[0]), lines[0]
    assert lines[-1] == f"wrote {target}: 6 face(s) drawn (box, score, 5 landmarks)"
    boxes = _faces_from_text(out.stdout)
    assert len(boxes) == 6

    before = cv2.imread(str(default_image_path()))
    after = cv2.imread(str(target))
    assert after.shape == before.shape
    changed = (after != before).any(axis=2)
    near_boxes = np.zeros_like(changed)
    for x1, y1, x2, y2 in boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
        inside = changed[y1:y2 + 1, x1:x2 + 1]
        border = np.concatenate([inside[0], inside[-1], inside[:, 0], inside[:, -1]])
        assert border.mean() > 0.9  # the box is drawn where the face is
        assert inside[2:-2, 2:-2].sum() >= 5 * 4  # five landmark dots inside it
        near_boxes[max(0, y1 - 30):y2 + 31, max(0, x1 - 30):x2 + 120] = True  # the score's text beside it
    assert changed[~near_boxes].mean() < 0.002  # elsewhere the image is untouched


def test_detect_json_keeps_stdout_json(tmp_path):
    target = tmp_path / "faces.jpg"
    out = bench("detect", "default", "--threads", "2", "--input", "fit", "--size", "320x224", "--json",
                "--save", str(target))
    assert out.returncode == 0, out.stderr[-3000:]
    faces = json.loads(out.stdout)["faces"]
    assert out.stderr.startswith("detect: backend onnxruntime")
    assert f"wrote {target}: {len(faces)} face(s)" in out.stderr
    assert target.stat().st_size > 10_000


@pytest.mark.parametrize("where, words", [
    ("/proc/nope/faces.jpg", ["--save /proc/nope/faces.jpg", "cannot create the folder /proc/nope"]),
    ("/proc/faces.jpg", ["cannot write in the folder /proc"]),
    ("{tmp}/faces.txt", ["OpenCV cannot write .txt"]),
    ("{tmp}", ["is a folder"]),
])
def test_detect_save_to_an_unwritable_place_is_one_line(tmp_path, where, words):
    one_line_error(bench("detect", "default", "--save", where.format(tmp=tmp_path)), *words)


# --- the output folder -------------------------------------------------------------------------------

@pytest.mark.parametrize("where, words", [
    ("/proc/nope", ["--out: cannot create the folder /proc/nope"]),
    ("/proc", ["--out: cannot write in the folder /proc"]),
    ("{file}/sub", ["--out:", "cannot be created", "is not a folder"]),
    ("{file}", ["exists and is not a folder"]),
])
def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, where, words):
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    one_line_error(bench("--config", "configs/smoke.yaml", "--out", where.format(file=file)), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_read_only_output_folder_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder: the /proc cases cover the check")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        one_line_error(bench("--config", "configs/smoke.yaml", "--out", str(ro)), "cannot write in the folder")
    finally:
        ro.chmod(0o755)


# --- threads above the cores ---------------------------------------------------------------------------

def test_more_threads_than_cores_is_a_warning_recorded_in_the_run(tmp_path):
    from retinabench.cli.run import usable_cores
    threads = usable_cores() + 1
    out = bench("run", "--backends", "onnxruntime", *TINY, "--threads", str(threads), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    warning = [i for i, ln in enumerate(lines) if ln.startswith(f"warning: threads {threads} is more than the "
                                                                 f"{usable_cores()} core(s)")]
    start = [i for i, ln in enumerate(lines) if ln.startswith("scenario ")]
    assert len(warning) == 1 and warning[0] < start[0], out.stderr
    meta = json.loads((only_run(tmp_path) / "run.json").read_text())
    assert meta["warnings"] == [lines[warning[0]][len("warning: "):]]


def test_threads_within_the_cores_say_nothing():
    from retinabench.cli.run import thread_warnings
    scenario, _ = scenario_of("--backends", "onnxruntime", "--threads", "1")
    assert thread_warnings(scenario) == []


# --- caches: under the user's cache folder, never the project -------------------------------------------

def test_cache_home_precedence(monkeypatch, tmp_path):
    from retinabench.defaults import cache_home
    for var in ("RETINABENCH_CACHE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home" / ".cache" / "retinabench"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    assert cache_home() == tmp_path / "home" / ".cache" / "retinabench"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "retinabench"
    monkeypatch.setenv("RETINABENCH_CACHE_HOME", str(tmp_path / "own"))
    assert cache_home() == tmp_path / "own"
    assert cache_home({"HOME": "/elsewhere"}) == Path("/elsewhere/.cache/retinabench")


def test_every_cache_lands_in_the_cache_home(monkeypatch, tmp_path):
    from retinabench import defaults
    from retinabench.graph import cache
    from retinabench.harness.process import worker_env
    for var in ("RETINABENCH_DEFAULTS", "RETINABENCH_CACHE", "TORCHINDUCTOR_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "cache-home"
    monkeypatch.setenv("RETINABENCH_CACHE_HOME", str(home))
    assert defaults.default_model_path() == home / "defaults" / defaults.MODEL_FILE  # extracted there
    entry = cache.cached("test", {"k": 1}, lambda d: (d / "x.bin").write_bytes(b"x"))
    assert entry.parent == home / "converted" / "test" and (entry / "x.bin").read_bytes() == b"x"
    assert worker_env()["TORCHINDUCTOR_CACHE_DIR"] == str(home / "inductor")
    # the variables that pick one folder still do
    monkeypatch.setenv("RETINABENCH_DEFAULTS", str(tmp_path / "d"))
    monkeypatch.setenv("RETINABENCH_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "i"))
    assert (defaults.cache_dir(), cache.cache_root()) == (tmp_path / "d", tmp_path / "c")
    assert worker_env()["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "i")


def test_no_code_writes_a_cache_into_the_project():
    """Only defaults.cache_home names a `.cache` folder, and it is the user's (tests/test_security.py
    keeps `.cache` as a folder to skip, for checkouts that still hold an old one)."""
    hits = []
    for folder in ("retinabench", "backends", "scripts", "tools", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.sh")):
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if re.search(r"""["']\.cache["']""", line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}")
    assert len(hits) == 1 and hits[0].startswith("retinabench/defaults.py:"), hits
