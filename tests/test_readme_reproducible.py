"""The README's tables are the committed runs' reports: regenerating them changes nothing.

Every run the README cites must be in the tree. A run whose own scenario sections are in the README
(between its markers) must regenerate them byte for byte; runs cited only in a section over several
machines are held to that section by tests/test_machines.py, and runs cited in prose (a profile, a
probe) only need to exist.
"""
from __future__ import annotations

import re

import pytest

from conftest import ROOT
from retinabench.report.readme import load_run, report_sections, rewrite_sections

README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
CITED = sorted(set(re.findall(r"\]\((results/[^/)]+)", TEXT)))
SECTIONS = dict(re.findall(r"<!-- retinabench:begin ([^ ]+) -->\n(.*?)<!-- retinabench:end \1 -->", TEXT, re.S))
OWN = sorted({rel for name, body in SECTIONS.items() if not name.startswith("machines-")
              for rel in re.findall(r"\]\((results/[^/)]+)", body)})


def test_readme_cites_committed_runs():
    assert CITED, "the README cites no results folder"
    for rel in CITED:
        assert (ROOT / rel).is_dir(), f"README cites {rel}, which is not in the tree"
    assert OWN, "no README section cites its run"


@pytest.mark.parametrize("rel", OWN)
def test_report_reproduces_the_readme_byte_for_byte(rel):
    run = load_run(ROOT / rel)
    new, update = rewrite_sections(TEXT, report_sections(run, README.parent))
    assert update.found, f"{rel}: the README has no markers for scenario {run.scenario!r}"
    assert new == TEXT, f"`bench.py report {rel} --readme README.md` would change the README"
