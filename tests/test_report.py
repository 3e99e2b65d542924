"""Reports on real small runs: `bench.py report` (tables, plots, README markers) and `bench.py compare`."""
from __future__ import annotations

import csv
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

SCENARIO = "448x448"
VERDICTS = ("faster", "slower", "same (within noise)")


def _bench(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _run(tmp: Path, mnet25_dir: Path, t1_path: Path, backends: list) -> Path:
    cfg = tmp / "scenario.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": SCENARIO, "model": str(mnet25_dir), "images": [str(t1_path)],
        "input": {"mode": "fit", "width": 448, "height": 448}, "threads": 1,
        "batches": [1, 2], "max_batch": [2], "loops": 12, "warmup": 2,
        "reference": backends[0] if isinstance(backends[0], str) else None, "backends": backends,
    }))
    out = _bench("--config", str(cfg), "--out", str(tmp / "results"))
    assert out.returncode == 0, out.stderr
    (run,) = (tmp / "results").iterdir()
    return run


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, mnet25_dir, t1_path):
    """A batch sweep with a reference, the harness baseline, a bilinear Caffe row and an unavailable backend."""
    return _run(tmp_path_factory.mktemp("a"), mnet25_dir, t1_path,
                ["mxnet", "empty", "onnxruntime", {"name": "opencv-caffe", "options": {"upsample": "bilinear"}},
                 "tensorrt"])


@pytest.fixture(scope="module")
def run_b(tmp_path_factory, mnet25_dir, t1_path):
    return _run(tmp_path_factory.mktemp("b"), mnet25_dir, t1_path, ["onnxruntime", "empty"])


@pytest.fixture(scope="module")
def loaded_a(run_a):
    from retinabench.report.readme import load_run
    return load_run(run_a)


README = """# Title

Hand-written text stays.

<!-- retinabench:begin {s} -->
old table
<!-- retinabench:end {s} -->

Between the sections.

<!-- retinabench:begin accuracy-{s} -->
<!-- retinabench:end accuracy-{s} -->

<!-- retinabench:begin 1280x896 -->
another run's table, not this one's
<!-- retinabench:end 1280x896 -->

Footer.
"""


def _outside_markers(text: str) -> str:
    return re.sub(r"(<!-- retinabench:begin (\S+) -->\n).*?(<!-- retinabench:end \2 -->)", r"\1\3", text, flags=re.S)


def test_report_prints_status_machine_and_fastest(run_a, loaded_a):
    out = _bench("report", str(run_a), "--no-plots")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    env = json.loads((run_a / "env.json").read_text())
    words = " ".join(text.split())   # the context paragraph wraps at any space
    assert f"## {SCENARIO}" in text and env["cpu_model"] in words and env["timestamp_utc"][:10] in words
    assert "⛔ unavailable" in text  # tensorrt is not implemented here
    assert run_a.name in text  # the link to the run folder
    assert f"docs/scenarios/{SCENARIO}.md" in text   # and to the scenario's full page
    # The compact table: one line per row (4 backends x 2 batches + tensorrt x 2), with its batch column.
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| backend")]
    assert len(table) == 10 and len([ln for ln in table if ln.startswith("| tensorrt")]) == 2
    assert any(ln.startswith("- total: ") or ln.startswith("- inference: ") for ln in text.splitlines())


def test_fastest_sentence_follows_the_data(loaded_a):
    from retinabench.report.speed import fastest_sentences
    summary = list(csv.DictReader((loaded_a.path / "summary.csv").open()))
    inf = sorted((float(s["median_ms"]), s["backend"]) for s in summary
                 if s["stage"] == "inference" and s["batch"] == "1" and s["status"] == "passed"
                 and s["backend"] != "empty")
    (sentence,) = [s for s in fastest_sentences(loaded_a) if s.startswith("**inference**")]
    assert f": {inf[0][1]} (" in sentence and f"the next, {inf[1][1]} (" in sentence
    assert f"{inf[1][0] / inf[0][0]:.2f}x" in sentence
    assert not any(": empty (" in s for s in fastest_sentences(loaded_a))  # the baseline never wins
    # CPU rows share the family's pre/post code: no backend is named "fastest" at those stages.
    (pre,) = [s for s in fastest_sentences(loaded_a) if s.startswith("**preprocess**")]
    assert "the same shared code in every row" in pre


def test_accuracy_section_and_bilinear_cost(loaded_a):
    from retinabench.report.accuracy_section import accuracy_section
    text = accuracy_section(loaded_a)
    faces = {(a["backend"], a["batch"]): a for a in csv.DictReader((loaded_a.path / "accuracy_faces.csv").open())}
    bil = faces[("opencv-caffe", "1")]
    assert "Cost of the bilinear Deconvolution" in text and "opencv-caffe" in text
    assert f"{bil['matched']} of {bil['reference_faces']} reference faces matched" in text
    assert "default (upsample: bilinear)" in text
    # The network-free baseline has no accuracy to report: it stays in the CSV, not in the section.
    assert ("empty", "1") in faces and faces[("empty", "1")]["faces"] == "0"
    assert not [ln for ln in text.splitlines() if ln.startswith("| empty")]


def test_readme_rewrite_touches_only_marked_sections(run_a, tmp_path):
    readme = tmp_path / "README.md"
    original = README.format(s=SCENARIO)
    readme.write_text(original)
    out = _bench("report", str(run_a), "--readme", str(readme), "--no-plots")
    assert out.returncode == 0, out.stderr
    new = readme.read_text()
    assert _outside_markers(new) == _outside_markers(original)
    assert "another run's table, not this one's" in new and "old table" not in new
    assert "| backend" in new and "vs mxnet (95% CI)" in new
    assert f"markers found: {SCENARIO};" in out.stdout
    page = tmp_path / "docs" / "scenarios" / f"{SCENARIO}.md"     # the full tables live on the scenario's page
    text = page.read_text()
    assert "Cost of the bilinear Deconvolution" in text and "| backend" in text and "do not edit" in text
    assert f"docs/scenarios/{SCENARIO}.md" in new


def test_rerun_changes_nothing_byte_for_byte(run_a, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README.format(s=SCENARIO))
    first = _bench("report", str(run_a), "--readme", str(readme))
    assert first.returncode == 0, first.stderr
    page = tmp_path / "docs" / "scenarios" / f"{SCENARIO}.md"
    after_first, page_first = readme.read_bytes(), page.read_bytes()
    shutil.rmtree(run_a / "plots")  # the README and the page must not depend on the plot files
    second = _bench("report", str(run_a), "--readme", str(readme), "--no-plots")
    assert second.returncode == 0, second.stderr
    assert readme.read_bytes() == after_first and page.read_bytes() == page_first
    assert "rewritten: none (already up to date)" in second.stdout
    strip = lambda s: s.split("\nplots: ")[0].split("\n" + str(readme))[0]  # noqa: E731
    assert strip(first.stdout) == strip(second.stdout)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page_first.decode())
    assert links and all((page.parent / link).resolve().parent == (run_a / "plots").resolve() for link in links)


def test_a_readme_without_the_scenarios_marker_gets_its_page_alone(run_a, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing marked\n")
    out = _bench("report", str(run_a), "--readme", str(readme), "--no-plots")
    assert out.returncode == 0, out.stderr
    assert readme.read_text() == "# nothing marked\n"
    assert "none (the page alone)" in out.stdout and (tmp_path / "docs" / "scenarios" / f"{SCENARIO}.md").is_file()
    missing = _bench("report", str(run_a), "--readme", str(tmp_path / "nope.md"), "--no-plots")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such README" in missing.stderr


def test_plots_are_labelled_pngs(run_a, loaded_a):
    from matplotlib.image import imread
    from retinabench.report.plots import planned_plots, write_plots
    specs = planned_plots(loaded_a)
    # a CPU sweep: no GPU samples; its rows recorded their memory and start-up
    assert [s.name for s in specs] == ["stages", "batch", "latency", "footprint"]
    for spec in specs:
        fig = spec.make(loaded_a)
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert fig.legends or all(ax.get_legend() for ax in fig.axes)
    paths = write_plots(loaded_a)
    assert [p.name for p in paths] == [s.file for s in specs]
    for p in paths:
        assert p.parent == run_a / "plots" and p.stat().st_size > 0
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_compare_two_runs_row_per_match(run_a, run_b):
    out = _bench("compare", str(run_a), str(run_b))
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("onnxruntime ", "empty "))]
    # onnxruntime and empty at batch 1 and 2, four stages each.
    assert len(lines) == 2 * 2 * 4
    assert all(ln.rstrip().endswith(VERDICTS) for ln in lines)
    assert "only in A: " in out.stdout and "mxnet/default 448x448 b1" in out.stdout


def test_compare_a_run_with_itself_is_the_same(loaded_a):
    from retinabench.report.compare import compare_runs
    c = compare_runs(loaded_a, loaded_a)
    assert len(c.rows) == 4 * 2 * 4  # four passed backends x two batches x four stages
    for r in c.rows:
        assert r.ratio == 1.0 and r.ci_low <= 1.0 <= r.ci_high and r.verdict == "same (within noise)"


def test_bootstrap_sees_a_real_slowdown():
    # Seeded samples shaped like a row's (20 rounds of 50 loops, 10% noise, a slow round), not a
    # fresh run's: how wide a real row's interval is depends on how loaded the machine was.
    from retinabench.report.compare import verdict
    from retinabench.report.stats import ratio_ci
    rng = np.random.default_rng(7)
    rounds = np.repeat(np.arange(20), 50)
    a = 5.0 * rng.lognormal(0.0, 0.1, rounds.size) * np.where(rounds == 3, 1.3, 1.0)
    iv = ratio_ci(a * 1.5, a, rounds, rounds)  # two runs: each side resampled on its own
    assert iv.low <= 1.5 <= iv.high and iv.low > 1.0
    assert verdict(1.5, iv.low, iv.high) == "slower"
    iv2 = ratio_ci(a / 1.5, a, rounds, rounds)
    assert verdict(1 / 1.5, iv2.low, iv2.high) == "faster"
    assert ratio_ci(a * 1.5, a, rounds, rounds) == iv  # fixed seed: reproducible
    assert verdict(1.01, 0.99, 1.03) == verdict(1.015, 1.011, 1.019) == "same (within noise)"


@pytest.mark.parametrize("command", ["report", "compare"])
def test_bad_folders_are_one_line_errors(command, run_a, tmp_path):
    not_a_run = tmp_path / "empty-folder"
    not_a_run.mkdir()
    cases = [(tmp_path / "missing", "no such results folder"), (not_a_run, "not a results folder (no run.json)")]
    for path, message in cases:
        args = [command, str(path)] + ([str(run_a)] if command == "compare" else [])
        out = _bench(*args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("error: ") and message in out.stderr and str(path) in out.stderr
