"""How much a backend's ratio to the reference moves between runs, sequential against interleaved.

    python benchmarks/schedule_spread.py [--repeats 3] [--loops 300] [--warmup 30] [--models default,PATH]

For each model, the same small scenario (1280x896 fit, 2 threads, onnxruntime as the reference,
then mxnet, openvino (f32) and opencv-onnx, rows in that order) runs `repeats` times with
`schedule: sequential` and `repeats` times interleaved, alternating the two so that a slow hour
of the machine does not land on one schedule. Each run's inference-median ratio to onnxruntime is
read from its summary.csv; a backend's spread is (max - min) / min over the runs of one schedule.
Writes results/<UTC stamp>-schedule-spread/ with every run folder under runs/, spread.json and
spread.md (the table the README cites).
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinabench.harness.env import fingerprint  # noqa: E402
from retinabench.store import RunStore  # noqa: E402

BACKENDS = ["onnxruntime", "mxnet", "openvino", "opencv-onnx"]
SCHEDULES = ("sequential", "interleaved")


def scenario(model: str, image: str, loops: int, warmup: int, schedule: str) -> Dict[str, object]:
    return {"name": f"spread-{schedule}", "model": model, "images": [image],
            "input": {"mode": "fit", "width": 1280, "height": 896}, "threads": 2, "loops": loops,
            "warmup": warmup, "reference": "onnxruntime", "schedule": schedule, "backends": BACKENDS}


def inference_ratios(run: Path) -> Dict[str, float]:
    """backend -> inference-median ratio to the reference, from a run's summary.csv."""
    with (run / "summary.csv").open() as f:
        lines = [ln for ln in csv.DictReader(f) if ln["stage"] == "inference" and ln["status"] == "passed"]
    med = {ln["backend"]: float(ln["median_ms"]) for ln in lines}
    return {b: med[b] / med["onnxruntime"] for b in med if b != "onnxruntime"}


def spread(values: List[float]) -> float:
    return (max(values) - min(values)) / min(values)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loops", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--models", default="default", help="comma-separated: 'default' or model paths")
    p.add_argument("--image", default="default")
    p.add_argument("--out", default="results")
    args = p.parse_args()

    out = RunStore.create(Path(args.out), "schedule-spread")
    runs_root = out.path / "runs"
    results: Dict[str, Dict[str, List[Dict[str, object]]]] = {}
    for model in args.models.split(","):
        label = "default" if model == "default" else Path(model).name
        results[label] = {s: [] for s in SCHEDULES}
        for i in range(args.repeats):
            for schedule in (SCHEDULES if i % 2 == 0 else SCHEDULES[::-1]):  # alternate which goes first
                cfg = out.path / f"{label}-{schedule}-{i}.yaml"
                cfg.write_text(yaml.safe_dump(scenario(model, args.image, args.loops, args.warmup, schedule)))
                before = set(runs_root.iterdir()) if runs_root.exists() else set()
                proc = subprocess.run([sys.executable, str(ROOT / "bench.py"), "--config", str(cfg),
                                       "--out", str(runs_root)], cwd=ROOT, capture_output=True, text=True)
                cfg.unlink()
                (run,) = set(runs_root.iterdir()) - before
                shutil.rmtree(run / ".work", ignore_errors=True)  # worker scratch: duplicates rows/
                if proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    return proc.returncode
                ratios = inference_ratios(run)
                results[label][schedule].append({"run": run.name, "ratios": ratios})
                print(f"{label} {schedule} {i + 1}/{args.repeats}: " +
                      ", ".join(f"{b} {r:.3f}" for b, r in ratios.items()), file=sys.stderr, flush=True)
    table = {label: {s: {b: {"ratios": [r["ratios"][b] for r in runs], "spread": spread([r["ratios"][b] for r in runs])}
                         for b in BACKENDS[1:]} for s, runs in by_schedule.items()}
             for label, by_schedule in results.items()}
    out.write_file("spread.json", json.dumps({"repeats": args.repeats, "loops": args.loops, "warmup": args.warmup,
                                              "backends": BACKENDS, "runs": results, "table": table,
                                              "env": fingerprint()}, indent=1))
    lines = ["# Inference-median ratio to onnxruntime, per run, and its spread between runs", "",
             f"1280x896 fit, 2 threads, {args.loops} loops after {args.warmup} warmup; rows in the order "
             f"{', '.join(BACKENDS)}; spread = (max - min) / min over the {args.repeats} runs of a schedule.", ""]
    for label, by_schedule in table.items():
        lines += [f"## model: {label}", "",
                  "| backend | " + " | ".join(f"sequential {i + 1}" for i in range(args.repeats)) + " | spread | "
                  + " | ".join(f"interleaved {i + 1}" for i in range(args.repeats)) + " | spread |",
                  "| --- |" + " --- |" * (2 * args.repeats + 2)]
        for b in BACKENDS[1:]:
            seq, inter = by_schedule["sequential"][b], by_schedule["interleaved"][b]
            lines.append(f"| {b} | " + " | ".join(f"{v:.3f}" for v in seq["ratios"]) + f" | {100 * seq['spread']:.1f}% | "
                         + " | ".join(f"{v:.3f}" for v in inter["ratios"]) + f" | {100 * inter['spread']:.1f}% |")
        order = lambda r: tuple(sorted({**r, "onnxruntime": 1.0}, key={**r, "onnxruntime": 1.0}.get))  # noqa: E731
        ranks = {s: {order(r["ratios"]) for r in runs} for s, runs in results[label].items()}
        lines += ["", "Ranking of the four backends by inference median: " + "; ".join(
            f"{s}: {'the same in every run' if len(v) == 1 else f'{len(v)} different orders'}" for s, v in ranks.items()),
            ""]
    out.write_file("spread.md", "\n".join(lines))
    print("\n".join(lines))
    print(f"results: {out.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
