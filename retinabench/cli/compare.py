"""`bench.py compare RUN_A RUN_B`: per matching row and stage, the ratio of medians B/A with a 95% CI."""
from __future__ import annotations

import argparse
from pathlib import Path

from retinabench.cli.registry import subcommand
from retinabench.records import ExitCode


def cmd_compare(args: argparse.Namespace) -> int:
    from retinabench.report.compare import compare_runs, comparison_text, summarise_verdicts
    from retinabench.report.run_data import load_run

    a, b = load_run(Path(args.run_a)), load_run(Path(args.run_b))
    c = compare_runs(a, b)
    print(comparison_text(c))
    if c.rows:
        print(summarise_verdicts(c))
    return ExitCode.OK


@subcommand("compare")
def register(sub: "argparse._SubParsersAction") -> None:
    cmp = sub.add_parser("compare", help="ratio of medians B/A per matching row and stage, with bootstrap 95%% CI")
    cmp.add_argument("run_a", help="baseline run folder")
    cmp.add_argument("run_b", help="run folder compared against the baseline")
    cmp.set_defaults(func=cmd_compare)
