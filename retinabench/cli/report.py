"""`bench.py report RESULTS_DIR [--readme README.md]`: a run's tables and plots, README sections rewritten."""
from __future__ import annotations

import argparse
from pathlib import Path

from retinabench.cli.registry import subcommand
from retinabench.records import ExitCode


def cmd_report(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")  # headless: never open a window, even where a display exists
    from retinabench.report.plots import write_plots
    from retinabench.report.readme import load_run, report_sections, update_readme

    run = load_run(Path(args.results_dir))
    base = Path(args.readme).parent if args.readme else Path.cwd()
    for name, body in report_sections(run, base).items():
        print(f"## {name}\n\n{body}\n")
    if not args.no_plots:
        paths = write_plots(run)
        print(f"plots: {len(paths)} written to {run.path / 'plots'} ({', '.join(p.name for p in paths) or 'none'})")
    if args.readme:
        up = update_readme(Path(args.readme), run)
        print(f"{args.readme}: markers found: {', '.join(up.found)}; "
              f"rewritten: {', '.join(up.changed) or 'none (already up to date)'}"
              + (f"; not found (left alone): {', '.join(up.missing)}" if up.missing else ""))
    return ExitCode.OK


@subcommand("report")
def register(sub: "argparse._SubParsersAction") -> None:
    rep = sub.add_parser("report", help="print a run's report tables; write its plots; rewrite README sections")
    rep.add_argument("results_dir", help="a run folder, e.g. results/20261127-051330-1280x896")
    rep.add_argument("--readme", help="rewrite this README's sections between retinabench markers")
    rep.add_argument("--no-plots", action="store_true", help="do not write RESULTS_DIR/plots/*.png")
    rep.set_defaults(func=cmd_report)
