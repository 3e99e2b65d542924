"""Tables people read: one line per backend row with each stage's median (p90), Ultralytics-style status."""
from __future__ import annotations

from typing import Any, Dict, List

from tabulate import tabulate

from retinabench.harness.loop import STAGES
from retinabench.records import RowId


def _cell(s: Dict[str, Any]) -> str:
    return f"{s['median_ms']:.3f} ({s['p90_ms']:.3f})"


def pivot(summary: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """summary.csv-shaped lines (one per stage, each with its `row` id) -> one dict per row, stages as columns."""
    rows: Dict[RowId, Dict[str, Any]] = {}
    for s in summary:
        rid: RowId = s["row"]
        row = rows.setdefault(rid, {"row": rid, "backend": rid.backend, "variant": rid.variant, "input": rid.input,
                                    "batch": rid.batch, "max_batch": rid.max_batch, "status": s.get("status", ""),
                                    "flags": set(), "threads": s.get("threads", ""),
                                    "gpu_util": s.get("gpu_util_mean_pct", "")})
        if int(s.get("n") or 0) == 0:
            row["reason"] = s.get("flags", "")
            continue
        row[s["stage"]] = s
        row["flags"].update(f for f in str(s.get("flags", "")).split() if f)
    return list(rows.values())


def ratio_cell(s: Dict[str, Any]) -> str:
    """'0.830 (0.812-0.851)': a stage's ratio to the reference row with its 95% interval; '' without one."""
    if s.get("ratio") in ("", None):
        return ""
    if s.get("reference") == s["row"].key:
        return "1 (reference)"
    return f"{float(s['ratio']):.3f} ({float(s['ratio_ci_low']):.3f}-{float(s['ratio_ci_high']):.3f})"


def has_ratios(summary: List[Dict[str, Any]]) -> bool:
    return any(s.get("ratio") not in ("", None) for s in summary)


def reference_name(summary: List[Dict[str, Any]]) -> str:
    """The reference rows' backend (and variant), as a column header names it."""
    keys = {s["reference"] for s in summary if s.get("reference")}
    refs = [s["row"] for s in summary if s["row"].key in keys]
    return refs[0].name if refs else "reference"


def stage_table(summary: List[Dict[str, Any]], fmt: str = "simple") -> str:
    """Median (p90) in ms per stage; per-image time and images/s from the total; inference against the reference."""
    ratios = has_ratios(summary)
    headers = ["backend", "variant", "device", "input", "batch", "status", "threads"] + \
              [f"{s} ms" for s in STAGES] + ["per image ms", "images/s", "GPU util %"] + \
              ([f"inference vs {reference_name(summary)} (95% CI)"] if ratios else []) + ["notes"]
    lines = []
    for r in pivot(summary):
        rid: RowId = r["row"]
        head = [r["backend"], r["variant"], rid.device, r["input"], r["batch"], r["status"], r["threads"]]
        if "total" not in r:
            lines.append(head + [""] * (len(STAGES) + 3 + ratios) + [r.get("reason", "")])
            continue
        t = r["total"]
        lines.append(head + [_cell(r[s]) for s in STAGES]
                     + [f"{t['per_image_median_ms']:.3f}", f"{t['images_per_s']:.1f}", r["gpu_util"]]
                     + ([ratio_cell(r["inference"])] if ratios else []) + [" ".join(sorted(r["flags"]))])
    return tabulate(lines, headers=headers, tablefmt=fmt, disable_numparse=True)
