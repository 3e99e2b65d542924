"""What the measured loop itself costs per stage: the loop run with stages that do nothing.

    python benchmarks/harness_overhead.py [--loops 100000] [--out results]

Writes results/<UTC stamp>-harness-overhead/overhead.json (medians and p99 per stage, in
microseconds, with the environment fingerprint). The README's overhead figure comes from there.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retinabench.harness.env import fingerprint  # noqa: E402
from retinabench.harness.loop import STAGES, measure  # noqa: E402
from retinabench.store import RunStore  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loops", type=int, default=100_000)
    p.add_argument("--out", default="results")
    args = p.parse_args()
    blob, out = object(), {}
    result = measure(lambda images: (blob, None), lambda b: out, lambda o, m: [], [None],
                     loops=args.loops, warmup=1000)
    us = result.samples_ns / 1e3
    stats = {stage: {"median_us": float(np.median(us[:, i])), "p99_us": float(np.percentile(us[:, i], 99)),
                     "mean_us": float(us[:, i].mean())} for i, stage in enumerate(STAGES)}
    run = RunStore.create(Path(args.out), "harness-overhead")
    run.write_file("overhead.json", json.dumps({"loops": args.loops, "stages": stats, "env": fingerprint()}, indent=1))
    for stage, s in stats.items():
        print(f"{stage:12s} median {s['median_us']:.3f} us  p99 {s['p99_us']:.3f} us")
    print(f"results: {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
