"""Tables people read: one line per backend row with each stage's median (p90), Ultralytics-style status."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from tabulate import tabulate

from retinabench.harness.loop import STAGES

RowKey = Tuple[str, str, str, int, int]


def _cell(s: Dict[str, Any]) -> str:
    return f"{s['median_ms']:.3f} ({s['p90_ms']:.3f})"


def pivot(summary: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """summary.csv-shaped rows (one per stage) -> one dict per backend row, stages as columns."""
    rows: Dict[RowKey, Dict[str, Any]] = {}
    for s in summary:
        key = (s["backend"], s["variant"], s["input"], int(s["batch"]), int(s["max_batch"]))
        row = rows.setdefault(key, {"backend": key[0], "variant": key[1], "input": key[2], "batch": key[3],
                                    "max_batch": key[4], "status": s.get("status", ""), "flags": set(),
                                    "threads": s.get("threads", ""), "gpu_util": s.get("gpu_util_mean_pct", "")})
        if int(s.get("n") or 0) == 0:
            row["reason"] = s.get("flags", "")
            continue
        row[s["stage"]] = s
        row["flags"].update(f for f in str(s.get("flags", "")).split() if f)
    return list(rows.values())


def stage_table(summary: List[Dict[str, Any]], fmt: str = "simple") -> str:
    """Median (p90) in ms per stage; per-image time and images/s from the total."""
    headers = ["backend", "variant", "input", "batch", "status", "threads"] + \
              [f"{s} ms" for s in STAGES] + ["per image ms", "images/s", "GPU util %", "notes"]
    lines = []
    for r in pivot(summary):
        if "total" not in r:
            lines.append([r["backend"], r["variant"], r["input"], r["batch"], r["status"], r["threads"]]
                         + [""] * (len(STAGES) + 3) + [r.get("reason", "")])
            continue
        t = r["total"]
        lines.append([r["backend"], r["variant"], r["input"], r["batch"], r["status"], r["threads"]]
                     + [_cell(r[s]) for s in STAGES]
                     + [f"{t['per_image_median_ms']:.3f}", f"{t['images_per_s']:.1f}", r["gpu_util"],
                        " ".join(sorted(r["flags"]))])
    return tabulate(lines, headers=headers, tablefmt=fmt, disable_numparse=True)
