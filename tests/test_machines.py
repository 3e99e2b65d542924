"""One report over runs of one scenario from several machines: grouped by machine, refusing what differs."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from retinabench.errors import BenchError
from retinabench.report.machines import check_mergeable, machines_section, machines_table
from retinabench.report.run_data import load_run

CPU_1280 = ROOT / "results" / "20261127-053652-1280x896"
CPU_320 = ROOT / "results" / "20261127-055920-320x416"
README = ROOT / "README.md"


def _on_another_machine(tmp_path, run, cpu="Another CPU", cores=64):
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("plots"))
    env = json.loads((copy / "env.json").read_text())
    env.update(cpu_model=cpu, usable_cpus=cores)
    (copy / "env.json").write_text(json.dumps(env))
    return copy


def test_runs_of_one_scenario_merge_into_one_table_grouped_by_machine(tmp_path):
    other = _on_another_machine(tmp_path, CPU_1280)
    runs = [load_run(CPU_1280), load_run(other)]
    table = machines_table(runs).splitlines()[2:]
    machines = [ln.split("|")[1].strip() for ln in table]
    half = len(machines) // 2
    # each machine is named once, above the table; its rows carry its letter
    assert len(table) == 2 * 12 and set(machines[:half]) == {"A"} and set(machines[half:]) == {"B"}
    text = machines_section(runs, ROOT)
    assert "on 2 machines" in text and f"({CPU_1280.relative_to(ROOT).as_posix()})" in text
    assert "- **B**: Another CPU, 64 cores;" in text and text.count("Another CPU, 64 cores") == 1


def test_runs_of_different_scenarios_or_one_machine_are_refused(tmp_path):
    with pytest.raises(BenchError, match="measured different scenarios: scenario '320x416' there"):
        check_mergeable([load_run(CPU_1280), load_run(CPU_320)])
    with pytest.raises(BenchError, match="come from one machine"):
        check_mergeable([load_run(CPU_1280), load_run(CPU_1280)])
    other = _on_another_machine(tmp_path, CPU_1280)
    meta = json.loads((other / "run.json").read_text())
    meta["model_sha256"] = "0" * 64
    (other / "run.json").write_text(json.dumps(meta))
    with pytest.raises(BenchError, match="model"):
        check_mergeable([load_run(CPU_1280), load_run(other)])


def test_report_command_merges_several_runs(tmp_path):
    other = _on_another_machine(tmp_path, CPU_1280)
    out = subprocess.run([sys.executable, "bench.py", "report", str(CPU_1280), str(other), "--no-plots"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "## machines-1280x896" in out.stdout and "Another CPU, 64 cores" in out.stdout
    bad = subprocess.run([sys.executable, "bench.py", "report", str(CPU_1280), str(CPU_320), "--no-plots"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "different scenarios" in bad.stderr


def test_the_machines_pages_are_the_committed_runs_report():
    """Every docs/scenarios/machines-SCENARIO.md regenerates byte for byte from the runs it cites."""
    from retinabench.report.machines import machines_page
    pages = sorted((ROOT / "docs" / "scenarios").glob("machines-*.md"))
    if not pages:
        pytest.skip("no machines page yet")
    for page in pages:
        text = page.read_text(encoding="utf-8")
        runs = [load_run(ROOT / p) for p in dict.fromkeys(re.findall(r"\]\((?:\.\./)*(results/[^/)]+)\)", text))]
        assert machines_page(runs, ROOT) == text, f"{page.name} would change"
