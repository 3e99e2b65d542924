"""The README's tables and the scenario pages are the committed runs' reports: regenerating them changes nothing.

Every run the README or a page under docs/ cites must be in the tree. Each marked section of the README
(a scenario's compact table, the accuracy section, an interval-coverage study) regenerates byte for
byte from the folder it links to, and so does each generated page under docs/scenarios/ (a scenario's
full tables, or one scenario over several machines).
"""
from __future__ import annotations

import re

import pytest

from conftest import ROOT
from retinabench.report.coverage_section import coverage_section, is_coverage
from retinabench.report.dataset_accuracy import ap_section
from retinabench.report.machines import machines_page
from retinabench.report.pages import page
from retinabench.report.readme import load_run, report_sections, rewrite_sections
from retinabench.report.serving_report import serving_section, serving_time_section

README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = sorted((ROOT / "docs" / "scenarios").glob("*.md"))
MARKED = [README] + [p for p in DOCS if p not in PAGES]   # hand-written files with generated sections
_SECTION = re.compile(r"<!-- retinabench:begin ([^ ]+) -->\n(.*?)<!-- retinabench:end \1 -->", re.S)
SECTIONS = dict(_SECTION.findall(TEXT))
ALL_SECTIONS = [(path, name) for path in MARKED for name, _ in _SECTION.findall(path.read_text(encoding="utf-8"))]
LINK = re.compile(r"\]\((?:\.\./)*(results/\d{8}-\d{6}-[^/)]+)")   # a run folder: results/<UTC stamp>-<name>


def _cited(text: str) -> list:
    """The run folders a text links to, in the order it first names them."""
    return list(dict.fromkeys(LINK.findall(text)))


def test_every_cited_run_is_committed():
    cited = _cited(TEXT) + [c for p in DOCS for c in _cited(p.read_text(encoding="utf-8"))]
    assert cited, "the README and docs cite no results folder"
    for rel in cited:
        assert (ROOT / rel).is_dir(), f"{rel} is cited but not in the tree"


def test_every_readme_section_has_its_run():
    assert SECTIONS, "the README has no generated section"
    for path, name in ALL_SECTIONS:
        body = dict(_SECTION.findall(path.read_text(encoding="utf-8")))[name]
        assert _cited(body), f"{path.name}: section {name} cites no run folder"


@pytest.mark.parametrize("path, name", ALL_SECTIONS, ids=[f"{p.name}:{n}" for p, n in ALL_SECTIONS])
def test_sections_regenerate_byte_for_byte(path, name):
    text = path.read_text(encoding="utf-8")
    body = dict(_SECTION.findall(text))[name]
    base = path.parent
    folder = ROOT / _cited(body)[0]
    if name.startswith("coverage-"):
        assert is_coverage(folder)
        fresh = {name: coverage_section(folder, base)}
    elif name == "accuracy-ap":
        fresh = {name: ap_section(folder, base)}
    elif name.startswith("serving-time-"):
        fresh = {name: serving_time_section(folder, base)}
    elif name.startswith("serving-"):
        fresh = {name: serving_section(folder, base)}
    else:
        fresh = report_sections(load_run(folder), base)
    assert name in fresh, f"{folder} reports sections {sorted(fresh)}, not {name}"
    new, update = rewrite_sections(text, {name: fresh[name]})
    assert update.found == [name]
    assert new == text, f"`bench.py report {folder.relative_to(ROOT)} --readme {path.relative_to(ROOT)}` would change it"


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_pages_regenerate_byte_for_byte(path):
    text = path.read_text(encoding="utf-8")
    runs = [ROOT / c for c in _cited(text)]
    if path.name.startswith("machines-"):
        fresh = machines_page([load_run(r) for r in runs], ROOT)
    else:
        (run,) = runs
        fresh = page(load_run(run), ROOT)
    assert fresh == text, f"regenerating {path.relative_to(ROOT)} from {', '.join(map(str, runs))} changes it"
