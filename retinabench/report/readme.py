"""The report people read: a run folder -> the README's compact section and the scenario's full page.

A section and a page are regenerated only from the run folder's own files
(retinabench.report.run_data), never from "now": running the report twice on one folder gives the
same bytes, so diffs show changed measurements and nothing else. In the README,

    <!-- retinabench:begin SCENARIO -->   the compact table, its verdicts, links (retinabench.report.pages)
    <!-- retinabench:end SCENARIO -->

and `docs/scenarios/SCENARIO.md` beside it is written whole: the full speed table, footprint, flags,
accuracy and plots (retinabench.report.pages.page).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from retinabench.report.markers import ReadmeUpdate, rewrite_sections
from retinabench.report.pages import page, page_path, sections
from retinabench.report.run_data import RunData, load_run
from retinabench.store import atomic_write

__all__ = ["load_run", "report_sections", "rewrite_sections", "update_readme", "write_page", "PageUpdate"]


@dataclass
class PageUpdate:
    path: Path
    changed: bool


def report_sections(run: RunData, link_base: Path) -> Dict[str, str]:
    """Marker name -> markdown, for one run (links relative to `link_base`, the README's folder)."""
    return sections(run, link_base)


def write_page(run: RunData, readme_dir: Path) -> PageUpdate:
    """docs/scenarios/<scenario>.md, written only when its bytes change."""
    path = page_path(readme_dir, run.scenario)
    text = page(run, readme_dir)
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    if old != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode("utf-8"))
    return PageUpdate(path, old != text)


def update_readme(readme: Path, run: RunData) -> ReadmeUpdate:
    """Rewrite the run's marked section in a README and its page beside it."""
    from retinabench.errors import BenchError
    if not Path(readme).is_file():
        raise BenchError(f"{readme}: no such README")
    text = Path(readme).read_text(encoding="utf-8")
    new, update = rewrite_sections(text, report_sections(run, Path(readme).parent))
    if new != text:
        atomic_write(Path(readme), new.encode("utf-8"))
    written = write_page(run, Path(readme).parent)   # a scenario without a README section still gets its page
    if written.changed:
        update.changed.append(str(written.path))
    return update


