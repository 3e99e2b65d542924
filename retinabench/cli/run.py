"""`bench.py --config X.yaml` (or `bench.py run --config X.yaml`): run a scenario, print its table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinabench.cli.common import ProgressBar, resolve_images, resolve_model
from retinabench.cli.registry import subcommand
from retinabench.records import ExitCode
from retinabench.store import RowResult


def row_done(r: RowResult, i: int, n: int) -> None:
    """One line per finished row, so a log (where bars vanish) shows how far a long run got."""
    line = f"[{i}/{n}] {r.key}: {r.status}"
    if r.passed:
        from retinabench.report.stats import Measurement
        m = Measurement.from_ns(r.samples_ns[:, 3])
        line += f", total median {m.median_ms:.3f} ms, CV {100 * m.cv:.1f}%"
    elif r.reason:
        line += f": {r.reason}"
    print(line, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from retinabench.config import load_scenario
    from retinabench.harness.process import worker_memory_limit
    from retinabench.harness.runner import run_scenario
    from retinabench.report.summary import summarise_run, validity_table
    from retinabench.report.tables import stage_table

    overrides = {"loops": args.loops, "warmup": args.warmup, "model": args.model,
                 "images": args.image, "threads": args.threads, "schedule": args.schedule, "seed": args.seed}
    if args.backends:
        overrides["backends"] = args.backends.split(",")
    if args.processes is not None:
        overrides["processes"] = args.processes
    if args.contention_limit is not None:
        overrides["contention_limit"] = _limit(args.contention_limit)
    if args.executor:
        overrides["executor"] = args.executor
    if args.scheduler:
        overrides["scheduler"] = args.scheduler
    elif args.executor == "local":
        overrides["scheduler"] = ""  # --executor local: the config's scheduler, if any, is not used
    scenario = load_scenario(Path(args.config), overrides)
    worker_memory_limit()  # a bad RETINABENCH_WORKER_MEMORY_LIMIT is an error now, not a failed row later
    model = resolve_model(scenario.model)
    images = resolve_images(scenario.images)
    results_root = Path(args.out or scenario.results_dir)
    print(f"scenario {scenario.name}: model {model}, {len(images)} image(s), input {scenario.input.label}, "
          f"{len(scenario.rows())} row(s) x {scenario.loops} loops (+{scenario.warmup} warmup)", file=sys.stderr)
    outcome = run_scenario(scenario, model, images, results_root, summarise_run,
                           resume=Path(args.resume) if args.resume else None,
                           progress_factory=ProgressBar,
                           on_row_done=row_done)
    summary = outcome.summary
    print(stage_table(summary))
    print(validity_table(summary))
    for r in outcome.rows:
        faces = (r.result.faces or [[]])[0]
        if r.status == "passed":
            print(f"{r.key}: {len(faces)} face(s) in the first image")
    print(f"results: {outcome.run_dir} ({outcome.status})")
    if outcome.status == "incomplete":
        print(f"run interrupted; finish it with: python bench.py --config {args.config} --resume {outcome.run_dir}",
              file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.PARTIAL if outcome.status == "partial" else ExitCode.OK


def _limit(text: str) -> object:
    """--contention-limit: 'off', or a number (the config's validation names a bad one)."""
    if text.strip().lower() == "off":
        return "off"
    try:
        return float(text)
    except ValueError:
        return text


@subcommand("run")
def register(sub: "argparse._SubParsersAction") -> None:
    run = sub.add_parser("run", help="run a scenario (the default when --config is given)")
    run.add_argument("--config", required=True, help="scenario YAML, e.g. configs/1280x896.yaml")
    run.add_argument("--model", help="model path or 'default' (overrides config and RETINABENCH_MODEL)")
    run.add_argument("--image", action="append", help="image path (repeatable; overrides config and RETINABENCH_IMAGE)")
    run.add_argument("--loops", type=int, help="measured loops (default: the config's, 1000)")
    run.add_argument("--warmup", type=int, help="warmup loops, excluded from the statistics")
    run.add_argument("--threads", type=int, help="intra-op threads for every backend")
    run.add_argument("--backends", help="comma-separated backend names replacing the config's list")
    run.add_argument("--out", help="results root (default: the config's results_dir)")
    run.add_argument("--resume", help="finish an interrupted run folder: run only its missing rows")
    run.add_argument("--schedule", choices=("interleaved", "sequential"),
                     help="how rows share the machine (default: the config's, interleaved rounds)")
    run.add_argument("--seed", type=int, help="seed of the interleaved rounds' shuffles (default: a fresh one, recorded)")
    run.add_argument("--processes", type=int,
                     help="worker processes per row, the loops split between them (default: the config's, else 10 on "
                          "a CPU, 3 on a GPU)")
    run.add_argument("--contention-limit", metavar="CORES",
                     help="CPU (in cores) other programs may use during a chunk before it is measured again, or 'off' "
                          "(default: the config's, 0.1)")
    run.add_argument("--executor", choices=("local", "dask"),
                     help="where rows run: here (default), or on the workers of a Dask cluster")
    run.add_argument("--scheduler", metavar="ADDR",
                     help="with --executor dask: the Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                          "(default: a LocalCluster, or LocalCUDACluster for CUDA rows, on this machine)")
    run.set_defaults(func=cmd_run)
