"""The report people read: a run folder -> the README's markdown sections, and the README rewritten.

A section is regenerated only from the run folder's own files (retinabench.report.run_data), never
from "now": running the report twice on one folder gives the same bytes, so README diffs show
changed measurements and nothing else. Markers in the README (retinabench.report.markers):

    <!-- retinabench:begin SCENARIO -->            speed table (retinabench.report.speed)
    <!-- retinabench:begin accuracy-SCENARIO -->   accuracy section (retinabench.report.accuracy_section)
    <!-- retinabench:begin plots-SCENARIO -->      plot image links (retinabench.report.plots)
    ... each closed by <!-- retinabench:end NAME -->
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from retinabench.report.accuracy_section import accuracy_section
from retinabench.report.format import relative_link
from retinabench.report.markers import ReadmeUpdate, marker_lines, rewrite_sections, update_file
from retinabench.report.plots import planned_plots
from retinabench.report.run_data import RunData, load_run
from retinabench.report.speed import speed_section

__all__ = ["load_run", "report_sections", "rewrite_sections", "update_readme"]


def plots_section(run: RunData, link_base: Path) -> str:
    specs = planned_plots(run)
    if not specs:
        return f"No plots: run `{run.path.name}` has no passed rows."
    return "\n".join(f"![{s.title}]({relative_link(run.path / 'plots' / s.file, link_base)})" for s in specs)


def report_sections(run: RunData, link_base: Path) -> Dict[str, str]:
    """Marker name -> markdown, for one run."""
    name = run.scenario
    return {name: speed_section(run, link_base),
            f"accuracy-{name}": accuracy_section(run),
            f"plots-{name}": plots_section(run, link_base)}


def update_readme(readme: Path, run: RunData) -> ReadmeUpdate:
    """Rewrite the run's marked sections in a README; the file is written only when something changed."""
    begin, end = marker_lines(run.scenario)
    hint = (f"no markers for scenario {run.scenario!r}; add e.g. '{begin}' ... '{end}' "
            f"(also accuracy-{run.scenario}, plots-{run.scenario})")
    return update_file(Path(readme), report_sections(run, Path(readme).parent), hint)
