"""Recompute a finished run's summary (summary.csv, summary.md) from its own samples with this commit's code.

    python tools/resummarise.py results/<run> [--why "flags recalibrated"]

The samples, rows, detections and accuracy files are the run's and stay as they are; only the arithmetic
over the samples (statistics, intervals, flags) is today's. run.json records when, by which commit and
why, so a reader of the run folder sees that its summary is younger than its measurements.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinabench.config import _FIELDS, scenario_from_dict  # noqa: E402
from retinabench.harness.env import fingerprint  # noqa: E402
from retinabench.report.summary import write_summary  # noqa: E402
from retinabench.store import RunStore  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--why", default="")
    args = p.parse_args()
    store = RunStore.open(args.run)
    saved = store.read_config()   # as the run wrote it: its recorded fields (`source` is where it came from)
    data = {k: v for k, v in saved.items() if k in _FIELDS and not (k == "max_batch" and not v)}
    scenario = scenario_from_dict(data, str(store.file("config.yaml")))
    rows = store.ordered_rows()
    write_summary(store, rows, scenario.reference, scenario.run_spread)
    meta = store.read_meta()
    env = fingerprint()
    meta.setdefault("summary_recomputed", []).append({
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": env.get("git_commit"),
        "dirty": env.get("git_dirty"), "why": args.why})
    store.write_meta(meta)
    print(f"{store.path}: summary.csv and summary.md recomputed from {len(rows)} rows' samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
