"""A new user's first hour: verdicts that respect intervals, a console that fits, an HTML report a browser
renders, run folders that hold what they should and nothing else."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from retinabench.report.stats import Interval
from retinabench.report.verdict import decide, describe_checks, expected_by_chance, holm, rank

# runs of configs/1280x896.yaml itself (not serve-server-1280x896 and the like)
COMMITTED = sorted(p for p in (ROOT / "results").glob("*-1280x896")
                   if re.fullmatch(r"\d{8}-\d{6}-1280x896", p.name) and (p / "summary.csv").is_file())


def _bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# --- verdicts ---------------------------------------------------------------------------------------

def test_a_tie_is_called_a_tie():
    tied = decide("inference", "openvino", "onnxruntime", Interval(1.09, 0.763, 1.330))
    assert not tied.decided
    assert "tied within noise" in tied.sentence() and "0.76-1.33" in tied.sentence() and "fastest" not in tied.sentence()
    clear = decide("inference", "openvino", "onnxruntime", Interval(1.27, 1.21, 1.33))
    assert clear.decided and "openvino is fastest" in clear.sentence() and "1.27x" in clear.sentence()
    edge = decide("total", "a", "b", Interval(1.05, 1.0, 1.1))    # an interval touching 1 does not decide
    assert not edge.decided


def test_rank_names_the_lowest_median_against_the_next():
    calls = []

    def pair(i, j):
        calls.append((i, j))
        return Interval(2.0, 1.8, 2.2)
    v = rank("total", ["slow", "fast", "middle"], [30.0, 10.0, 20.0], pair)
    assert v.best == "fast" and v.runner_up == "middle" and calls == [(1, 2)]
    assert rank("total", ["alone"], [1.0], pair) is None


def test_holm_keeps_the_familywise_error():
    adjusted = holm([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, then made monotone: 0.04, 0.09, 0.09, 0.5
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert expected_by_chance(12) == pytest.approx(0.6)
    assert "12 checks" in describe_checks(12, 0) and "0.6 of them" in describe_checks(12, 0)


# --- the console and the reports of a committed run of the shipped CPU scenario -----------------------

@pytest.mark.skipif(not COMMITTED, reason="no committed run of configs/1280x896.yaml in results/")
def test_the_console_table_of_the_shipped_cpu_scenario_fits_120_columns():
    from retinabench.report.render import console
    from retinabench.report.run_data import load_run
    from retinabench.report.table_model import build
    run = load_run(COMMITTED[-1])
    text = console(build(run), width=120, commands=["bench.py report X --html"])
    # (the line naming the legend's file is a path: it may be longer, and is never cut)
    assert max(len(line) for line in text.splitlines() if not line.startswith("what each flag")) <= 120
    header = next(line for line in text.splitlines() if line.startswith("backend"))
    assert len(header.split()) <= 12          # about eight columns, not nineteen
    assert text.splitlines()[-1].startswith("next: ")


def test_a_shipped_config_runs_with_two_backends_none_of_them_its_reference(tmp_path):
    out = _bench("--config", "configs/1280x896.yaml", "--backends", "onnxruntime, opencv-onnx", "--size", "320x224",
                 "--loops", "10", "--warmup", "1", "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "reference: onnxruntime" in out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines if not line.startswith("what each flag")) <= 120
    assert any(line.startswith("verdict: ") for line in lines) and lines[-1].startswith("next: ")
    (run,) = (tmp_path / "r").iterdir()
    assert not (run / ".work").exists()             # a complete run keeps no scratch folder
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete"


# --- HTML --------------------------------------------------------------------------------------------

def _browser() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (f"/usr/lib/chromium/{name}" if Path(f"/usr/lib/chromium/{name}").exists()
                                      else None)
        if path:
            return path
    pytest.skip("no headless browser installed (Debian: apt-get install chromium-headless-shell)")


@pytest.mark.skipif(not COMMITTED, reason="no committed run of configs/1280x896.yaml in results/")
def test_the_html_report_renders_its_table_and_a_plot_in_a_browser(tmp_path):
    from matplotlib.image import imread
    run = tmp_path / COMMITTED[-1].name
    shutil.copytree(COMMITTED[-1], run)
    out = _bench("report", str(run), "--html")
    assert out.returncode == 0, out.stderr
    page = run / "report.html"
    html = page.read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "<details>" in html and "<script" not in html
    browser = _browser()
    shot = tmp_path / "shot.png"
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                          "--window-size=1400,3000", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), res.stderr[-2000:]
    img = imread(shot)[..., :3]
    dark = (img.mean(axis=2) < 0.5)
    rows_with_ink = np.flatnonzero(dark.any(axis=1))
    assert rows_with_ink.size > 200                       # the table's text, at least
    # the stage plot's inference colour (#dd8452) is in the screenshot: the embedded plot rendered
    orange = (np.abs(img[..., 0] - 0xdd / 255) < 0.06) & (np.abs(img[..., 1] - 0x84 / 255) < 0.06) & \
        (np.abs(img[..., 2] - 0x52 / 255) < 0.06)
    assert orange.sum() > 500, "no plot colours in the screenshot"


def test_html_to_an_unwritable_place_is_one_line(tmp_path):
    if not COMMITTED:
        pytest.skip("no committed run to report")
    out = _bench("report", str(COMMITTED[-1]), "--no-plots", "--html", "/proc/nope/report.html")
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def test_a_rows_stderr_is_kept_in_the_run_folder(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"name": "e", "model": "default", "images": ["default"],
                                   "input": {"mode": "fit", "width": 320, "height": 224}, "loops": 5, "warmup": 1,
                                   "processes": 1,
                                   "backends": [{"name": "empty", "options": {"stderr": "[ERROR] something odd"}}]}))
    out = _bench("--config", str(cfg), "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "r").iterdir()
    kept = list((run / "rows").glob("*.stderr.txt"))
    assert kept and "[ERROR] something odd" in kept[0].read_text()
    assert "its stderr ends: [ERROR] something odd" in out.stderr
