"""The README rewrite: marked sections replaced, everything else byte for byte.

    <!-- retinabench:begin NAME -->
    ... generated ...
    <!-- retinabench:end NAME -->
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from retinabench.errors import BenchError
from retinabench.store import atomic_write


def marker_lines(name: str) -> Tuple[str, str]:
    return f"<!-- retinabench:begin {name} -->", f"<!-- retinabench:end {name} -->"


@dataclass
class ReadmeUpdate:
    found: List[str]
    missing: List[str]
    changed: List[str]


def rewrite_sections(text: str, sections: Dict[str, str]) -> Tuple[str, ReadmeUpdate]:
    """Replace what lies between each section's existing markers; everything else stays byte for byte."""
    found, missing, changed = [], [], []
    for name, body in sections.items():
        begin, end = marker_lines(name)
        pattern = re.compile(rf"^{re.escape(begin)}[ \t]*\n(.*?)^{re.escape(end)}[ \t]*$", re.M | re.S)
        matches = list(pattern.finditer(text))
        begins = len(re.findall(rf"^{re.escape(begin)}[ \t]*$", text, re.M))
        if begins == 0:
            missing.append(name)
            continue
        if len(matches) != 1 or begins != 1:
            raise BenchError(f"README: marker {begin!r} must appear once, followed by {end!r}")
        m = matches[0]
        new_inner = "\n" + body.strip("\n") + "\n\n"
        if m.group(1) != new_inner:
            changed.append(name)
            text = text[:m.start(1)] + new_inner + text[m.end(1):]
        found.append(name)
    return text, ReadmeUpdate(found, missing, changed)


def update_file(path: Path, sections: Dict[str, str], hint: str) -> ReadmeUpdate:
    """Rewrite `sections` in a README; the file is written only when something changed.

    `hint` says which markers to add when none of the sections' markers is there."""
    if not path.is_file():
        raise BenchError(f"{path}: no such README")
    text = path.read_text(encoding="utf-8")
    new, update = rewrite_sections(text, sections)
    if not update.found:
        raise BenchError(f"{path}: {hint}")
    if new != text:
        atomic_write(path, new.encode("utf-8"))
    return update
