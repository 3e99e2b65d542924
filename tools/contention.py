"""What concurrency does to a timing: one row measured alone, then alongside N other rows, on this host.

    python tools/contention.py --config configs/smoke.yaml --row onnxruntime [--with 2] [--others mxnet]
                               [--loops 300] [--batch 1] [--model M] [--image I] [--out results]

The Dask executor keeps CPU rows apart (one MEASURE slot per host), but GPU rows of one host, or a
cluster set up with several MEASURE slots, measure side by side. This check measures the cost:
a LocalCluster on this machine is given N + 1 MEASURE slots, deliberately; the row (BACKEND or
BACKEND:VARIANT, at the scenario's first batch size or --batch) is measured alone, then again while
N background rows (--others, cycled; default: the row itself) run flat out beside it on the other
slots, through the same task the Dask executor runs (retinabench.harness.dask_executor). The
background rows start --settle seconds first and are stopped when the row is done.

Writes results/<UTC stamp>-contention/: alone/rows/ and together/rows/ (the row files, as a run
folder holds them), hosts/, contention.json and contention.md: each stage's median alone and
together, their ratio with a 95% interval (retinabench.report.stats.ratio_ci, rounds resampled),
and how much of the row's measured time the background rows covered.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retinabench.errors import BenchError  # noqa: E402

STAGES = ("preprocess", "inference", "postprocess", "total")


def covered(windows: Sequence[Sequence[float]], busy: Sequence[Sequence[float]]) -> float:
    """The fraction of the measured windows' time ([round, start, end]) during which any `busy`
    stretch ([start, end]) was under way."""
    total = sum(float(w[2]) - float(w[1]) for w in windows)
    if total <= 0:
        return 0.0
    spans = sorted((float(a), float(b)) for a, b in busy)
    merged: List[Tuple[float, float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    hit = 0.0
    for w in windows:
        ws, we = float(w[1]), float(w[2])
        hit += sum(max(0.0, min(we, b) - max(ws, a)) for a, b in merged)
    return hit / total


def _pick(rows: List[Any], spec: str, batch: int) -> Any:
    backend, _, variant = spec.partition(":")
    for r in rows:
        if r.id.backend == backend and r.id.variant == (variant or "default") and r.id.batch == batch:
            return r
    known = ", ".join(sorted({f"{r.id.backend}:{r.id.variant}" for r in rows}))
    raise BenchError(f"--row/--others {spec!r}: no such row at batch {batch} in the scenario (known: {known})")


def main(argv: Sequence[str] = ()) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--row", required=True, help="BACKEND or BACKEND:VARIANT, a row of the scenario")
    p.add_argument("--with", dest="n", type=int, default=2, help="background rows beside it (default 2)")
    p.add_argument("--others", help="comma-separated BACKEND[:VARIANT] of the background rows (default: the row)")
    p.add_argument("--batch", type=int, help="batch size (default: the scenario's first)")
    p.add_argument("--loops", type=int, help="measured loops of the row (default: the scenario's)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--model")
    p.add_argument("--image", action="append")
    p.add_argument("--settle", type=float, default=3.0, help="seconds the background rows get to load first")
    p.add_argument("--out", help="results root (default: the scenario's results_dir)")
    args = p.parse_args(list(argv) or None)
    try:
        return run(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import dask
    from retinabench.cli.common import resolve_images, resolve_model
    from retinabench.config import load_scenario
    from retinabench.harness import dask_executor as dx
    from retinabench.harness.runner import make_job
    from retinabench.harness.units import Unit, host_file
    from retinabench.harness.schedule import Schedule
    from retinabench.records import RowId, WorkerResult
    from retinabench.report.stats import Measurement, ratio_ci
    from retinabench.store import RowResult, RunStore, read_npz
    import io

    if args.n < 1:
        raise BenchError("--with: at least one background row")
    sc = load_scenario(Path(args.config), {"loops": args.loops, "warmup": args.warmup, "model": args.model,
                                           "images": args.image})
    model, images = resolve_model(sc.model).resolve(), [p.resolve() for p in resolve_images(sc.images)]
    batch = args.batch or sc.batches[0]
    rows = sc.rows()
    target = _pick(rows, args.row, batch)
    others = [_pick(rows, s, batch) for s in args.others.split(",")] if args.others else [target]
    background = [others[i % len(others)] for i in range(args.n)]
    if any(dx.is_cuda(r.id.device) for r in [target, *background]):
        raise BenchError("tools/contention.py measures CPU rows (GPU rows: run it on the GPU host's CPU rows, or "
                         "compare a GPU row's run with the Dask executor's overlap flags)")
    schedule = Schedule.of("interleaved", sc.loops, 0, sc.round_loops, sc.rewarm_loops)
    chunks = tuple(schedule.rounds(sc.loops))

    def unit(i: int, row: Any, chunks: Tuple[int, ...]) -> Unit:
        return Unit(i, (row,), chunks, tuple((0,) for _ in chunks), sc.warmup, schedule.rewarm_loops, f"c{i}")

    jobs = {r.id: make_job(sc, r, model, images) for r in [target, *background]}
    # the background rows measure far longer than the row, and are stopped once it is done
    long = tuple([chunks[0]] * (len(chunks) * 1000))
    distributed = dx.import_distributed()
    with dask.config.set(dx.OWN_CLUSTER_CONFIG):
        cluster = distributed.LocalCluster(n_workers=args.n + 1, threads_per_worker=1, processes=True,
                                           resources={dx.MEASURE: 1}, dashboard_address=None, host="127.0.0.1")
    client = distributed.Client(cluster, set_as_default=False)
    try:
        print(f"contention: {target.key} alone, then beside {args.n} x "
              f"{', '.join(sorted({r.key for r in background}))} on {cluster.scheduler_address}", file=sys.stderr)
        alone = client.submit(dx.measure_task, uuid.uuid4().hex, unit(0, target, chunks), [jobs[target.id]],
                              resources={dx.MEASURE: 1}, retries=0, pure=False).result()
        bg_token = uuid.uuid4().hex
        bg = [client.submit(dx.measure_task, bg_token, unit(i + 1, r, long), [jobs[r.id]], resources={dx.MEASURE: 1},
                            retries=0, pure=False) for i, r in enumerate(background)]
        time.sleep(args.settle)
        together = client.submit(dx.measure_task, uuid.uuid4().hex, unit(0, target, chunks), [jobs[target.id]],
                                 resources={dx.MEASURE: 1}, retries=0, pure=False).result()
        client.run(dx.stop_session, bg_token, on_error="ignore")
        bg_out = [f.result() for f in bg]
    finally:
        client.close()
        cluster.close()

    def row_of(out: Dict[str, Any]) -> RowResult:
        item = out["rows"][0]
        r = RowResult(RowId.from_json(item["id"]), WorkerResult.from_json(item["result"]), host=out["host"],
                      busy=item["busy"])
        if r.status == "passed":
            arrays = read_npz(io.BytesIO(item["files"]["samples.npz"]))  # type: ignore[arg-type]
            r.samples_ns, r.warmup_ns = arrays["samples"], arrays["warmup"]
            r.rounds, r.rewarm_ns = arrays.get("rounds"), arrays.get("rewarm")
        return r

    a, t = row_of(alone), row_of(together)
    if not (a.passed and t.passed):
        raise BenchError(f"{target.key}: alone {a.status} ({a.reason}), together {t.status} ({t.reason})")
    # each background row's work: from its row if it ended, else from the stopped task's record
    bg_work = [[b for item in out["rows"] for b in item["busy"]] + [b for v in out.get("busy", {}).values() for b in v]
               for out in bg_out]
    bg_busy = [b for work in bg_work for b in work]
    t.overlaps = [f"background{i + 1}:{r.key}" for i, (r, work) in enumerate(zip(background, bg_work))
                  if covered(t.result.windows, work) > 0]
    cover = covered(t.result.windows, bg_busy)
    out_dir = RunStore.create(Path(args.out or sc.results_dir), "contention").path   # <UTC stamp>-contention
    for name, r in (("alone", a), ("together", t)):
        (out_dir / name).mkdir()
        RunStore(out_dir / name).write_row(r)
    RunStore(out_dir).write_file(host_file(alone["host"]), json.dumps(alone["env"], indent=1, default=str))
    stages = {}
    for i, stage in enumerate(STAGES):
        ma, mt = Measurement.from_ns(a.samples_ns[:, i]), Measurement.from_ns(t.samples_ns[:, i])
        iv = ratio_ci(t.samples_ns[:, i], a.samples_ns[:, i], t.rounds, a.rounds)
        stages[stage] = {"alone_median_ms": ma.median_ms, "together_median_ms": mt.median_ms, "ratio": iv.estimate,
                         "ratio_ci_low": iv.low, "ratio_ci_high": iv.high}
    report = {"row": target.key, "host": alone["host"], "with": args.n, "background": [r.key for r in background],
              "loops": sc.loops, "rounds": len(chunks), "settle_s": args.settle,
              "background_covered": round(cover, 4), "overlaps": t.overlaps, "stages": stages}
    RunStore(out_dir).write_file("contention.json", json.dumps(report, indent=1))
    lines = [f"# Contention: {target.key} alone and beside {args.n} background row(s) on {alone['host']}", "",
             f"Background: {', '.join(report['background'])}; they covered {100 * cover:.0f}% of the row's "
             f"measured time. {sc.loops} loops in {len(chunks)} rounds each way.", "",
             "| stage | alone median ms | together median ms | together / alone (95% CI) |",
             "| --- | --- | --- | --- |"]
    for stage, s in stages.items():
        lines.append(f"| {stage} | {s['alone_median_ms']:.3f} | {s['together_median_ms']:.3f} | "
                     f"{s['ratio']:.3f} ({s['ratio_ci_low']:.3f}-{s['ratio_ci_high']:.3f}) |")
    text = "\n".join(lines) + "\n"
    RunStore(out_dir).write_file("contention.md", text)
    print(text)
    print(f"results: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
