"""`bench.py compare RUN_A RUN_B`: per matching row and stage, the ratio of medians B/A with a 95% CI."""
from __future__ import annotations

import argparse
from pathlib import Path

from retinabench.cli.registry import subcommand
from retinabench.records import ExitCode


def cmd_compare(args: argparse.Namespace) -> int:
    from retinabench.report.compare import compare_runs, comparison_text, summarise_verdicts
    from retinabench.report.run_data import load_run

    from retinabench.errors import BenchError
    from retinabench.report.compare import gate_text, slower_rows
    if args.fail_if_slower is not None and not 0 <= args.fail_if_slower < 10000:
        raise BenchError(f"--fail-if-slower {args.fail_if_slower}: expected a percentage >= 0, e.g. 10")
    a, b = load_run(Path(args.run_a)), load_run(Path(args.run_b))
    c = compare_runs(a, b)
    print(comparison_text(c))
    from retinabench.report.serving_report import compare_serving, is_serving
    if is_serving(a.path) and is_serving(b.path):
        print(compare_serving(a.path, b.path))
    if c.rows:
        print(summarise_verdicts(c))
    if args.fail_if_slower is None:
        return ExitCode.OK
    checked = sum(1 for r in c.rows if r.stage == args.stage)
    if not checked:
        raise BenchError(f"--fail-if-slower: no row of {args.run_a} matches one of {args.run_b} at stage {args.stage}")
    slower = slower_rows(c, args.fail_if_slower, args.stage)
    print(gate_text(slower, args.fail_if_slower, args.stage, checked))
    return ExitCode.SLOWER if slower else ExitCode.OK


@subcommand("compare")
def register(sub: "argparse._SubParsersAction") -> None:
    cmp = sub.add_parser("compare", help="ratio of medians B/A per matching row and stage, with bootstrap 95%% CI")
    cmp.add_argument("run_a", help="baseline run folder")
    cmp.add_argument("run_b", help="run folder compared against the baseline")
    cmp.add_argument("--fail-if-slower", type=float, metavar="PCT",
                     help="exit 6 when a row's B/A interval lies entirely above 1 + PCT/100 (a regression gate for CI); "
                          "rows are matched by identity")
    cmp.add_argument("--stage", default="total", choices=("preprocess", "inference", "postprocess", "total"),
                     help="the stage the gate checks (default: total)")
    cmp.set_defaults(func=cmd_compare)
