"""`bench.py report RESULTS_DIR [RESULTS_DIR ...] [--readme README.md]`: a run's tables and plots, README
sections rewritten; with several runs of one scenario from different machines, the merged section
`machines-SCENARIO` (retinabench.report.machines)."""
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

    if len(args.results_dir) > 1:
        return _report_machines(args)
    run = load_run(Path(args.results_dir[0]))
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


def _report_machines(args: argparse.Namespace) -> int:
    from retinabench.report.machines import machines_sections, machines_update, write_machines_plot
    from retinabench.report.run_data import load_run

    runs = [load_run(Path(p)) for p in args.results_dir]
    base = Path(args.readme).parent if args.readme else Path.cwd()
    for name, body in machines_sections(runs, base).items():
        print(f"## {name}\n\n{body}\n")
    if not args.no_plots:
        print(f"plot: {write_machines_plot(runs)}")
    if args.readme:
        up = machines_update(Path(args.readme), runs)
        print(f"{args.readme}: rewritten: {', '.join(up.changed) or 'none (already up to date)'}")
    return ExitCode.OK


@subcommand("report")
def register(sub: "argparse._SubParsersAction") -> None:
    rep = sub.add_parser("report", help="print a run's report tables; write its plots; rewrite README sections")
    rep.add_argument("results_dir", nargs="+",
                     help="a run folder, e.g. results/20261127-051330-1280x896; several: one scenario from several "
                          "machines, merged")
    rep.add_argument("--readme", help="rewrite this README's sections between retinabench markers")
    rep.add_argument("--no-plots", action="store_true", help="do not write RESULTS_DIR/plots/*.png")
    rep.set_defaults(func=cmd_report)
