"""The README's tables are the committed runs' reports: regenerating them changes nothing."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT
from retinabench.report.readme import load_run, report_sections, rewrite_sections

README = ROOT / "README.md"
CITED = sorted(set(re.findall(r"\]\((results/[^/)]+)", README.read_text(encoding="utf-8"))))


def test_readme_cites_committed_runs():
    assert CITED, "the README cites no results folder"
    for rel in CITED:
        assert (ROOT / rel).is_dir(), f"README cites {rel}, which is not in the tree"


@pytest.mark.parametrize("rel", [r for r in CITED if (ROOT / r / "summary.csv").is_file()])
def test_report_reproduces_the_readme_byte_for_byte(rel):
    text = README.read_text(encoding="utf-8")
    run = load_run(ROOT / rel)
    new, update = rewrite_sections(text, report_sections(run, README.parent))
    assert update.found, f"{rel}: the README has no markers for scenario {run.scenario!r}"
    assert new == text, f"`bench.py report {rel} --readme README.md` would change the README"
