"""`bench.py best RUN [--max-p99 MS] [--max-mib MIB] [--throughput]`: per backend, the configuration of a
(sweep) run with the lowest per-image time (or the highest images/s) that meets the bounds, and the
Pareto set of time against memory. It reads the run folder; it measures nothing."""
from __future__ import annotations

import argparse
from pathlib import Path

from retinabench.cli.registry import subcommand
from retinabench.errors import BenchError
from retinabench.records import ExitCode


def cmd_best(args: argparse.Namespace) -> int:
    from retinabench.report.run_data import load_run
    from retinabench.report.scaling import best_text
    for name, v in (("--max-p99", args.max_p99), ("--max-mib", args.max_mib)):
        if v is not None and not v > 0:
            raise BenchError(f"{name} {v}: expected a positive bound")
    print(best_text(load_run(Path(args.run)), args.max_p99, args.max_mib,
                    "throughput" if args.throughput else "latency"))
    return ExitCode.OK


@subcommand("best")
def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("best", help="the best configuration per backend of a run, under p99 and memory bounds",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder, e.g. a sweep's results/<stamp>-<scenario>")
    p.add_argument("--max-p99", type=float, metavar="MS", help="the total p99 per batch must be at most this")
    p.add_argument("--max-mib", type=float, metavar="MIB", help="memory once loaded (host, or GPU for GPU rows)")
    p.add_argument("--throughput", action="store_true", help="rank by images/s instead of the per-image time")
    p.set_defaults(func=cmd_best)
