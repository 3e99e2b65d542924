"""The README's section of an interval-coverage study (benchmarks/interval_coverage.py's folder).

One line per variant (before the change, after it, under a CPU hog): how far the rows' ratios moved
between runs, how many runs' intervals held the median of the runs, how far the runs under
contention landed from the quiet median, and how many chunks contention made the harness measure
again. Read from coverage.json alone, so the section regenerates byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from retinabench.report.format import md_table, relative_link, wrap


def is_coverage(folder: Path) -> bool:
    return (Path(folder) / "coverage.json").is_file()


def marker(folder: Path) -> str:
    data = json.loads((Path(folder) / "coverage.json").read_text())
    return "coverage-" + Path(str(data["config"])).stem


def coverage_section(folder: Path, link_base: Path) -> str:
    data = json.loads((Path(folder) / "coverage.json").read_text())
    table: Dict[str, Dict[str, Any]] = data["table"]
    link = relative_link(Path(folder) / "coverage.md", link_base)
    lines: List[List[str]] = []
    for v in data["variants"]:
        entries = [by[v["name"]] for by in table.values() if v["name"] in by]
        if not entries:
            continue
        covered = sum(sum(e["covered"]) for e in entries)
        runs = sum(len(e["covered"]) for e in entries)
        spread = max(e["spread"] for e in entries)
        quiet = [d for e in entries for d in e.get("from_quiet", [])]
        replaced = sum(sum(e["chunks_replaced"]) for e in entries)
        what = " ".join(v["overrides"]) or "defaults"
        if v.get("hog"):
            what += f", CPU hog {v['hog'][0]:g} s on / {v['hog'][1]:g} s off"
        lines.append([v["name"], what, f"{100 * spread:.1f}%", f"{covered}/{runs}",
                      f"{100 * max(quiet):.1f}%" if quiet else "–", str(replaced)])
    rows = ", ".join(sorted(table))
    env = data.get("env") or {}
    cpu = f"{env.get('cpu_model', '?')}, {env.get('usable_cpus', '?')} cores"
    text = (f"`{data['config']}` on model {_model(folder, data)} ({rows}; {data['stage']} ratio to the reference), "
            f"{data['repeats']} runs per variant, alternating, on {cpu}: [{Path(folder).name}/coverage.md]({link}) "
            "has every run's ratio and interval.")
    return wrap(text) + "\n\n" + md_table(["variant", "settings", "spread of runs", "intervals holding the median",
                                     "off the quiet median", "chunks re-measured"], lines)


def _model(folder: Path, data: Dict[str, Any]) -> str:
    """The model the study's runs measured (their config.yaml: a path, or 'default')."""
    import yaml
    for runs in data["runs"].values():
        for r in runs:
            cfg = Path(folder) / "runs" / r["run"] / "config.yaml"
            if cfg.is_file():
                model = str((yaml.safe_load(cfg.read_text()) or {}).get("model", "?"))
                return "default" if model == "default" else f"`{Path(model).name}`"
    return "?"
