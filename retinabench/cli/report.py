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
    folder = Path(args.results_dir[0])
    special = _report_special(folder, args)
    if special is not None:
        return special
    run = load_run(folder)
    base = Path(args.readme).parent if args.readme else Path.cwd()
    for name, body in report_sections(run, base).items():
        print(f"## {name}\n\n{body}\n")
    if not args.no_plots or args.html is not None:
        paths = write_plots(run)
        print(f"plots: {len(paths)} written to {run.path / 'plots'} ({', '.join(p.name for p in paths) or 'none'})")
    if args.html is not None:
        from retinabench.report.html_report import write_html
        target = Path(args.html) if args.html else run.path / "report.html"
        from retinabench.cli.common import check_writable_dir
        check_writable_dir(target.parent, "--html")
        print(f"html: {write_html(run, target)}")
    if args.readme:
        up = update_readme(Path(args.readme), run)  # and docs/scenarios/<scenario>.md beside it
        print(f"{args.readme}: markers found: {', '.join(up.found) or 'none (the page alone)'}; "
              f"rewritten: {', '.join(up.changed) or 'none (already up to date)'}"
              + (f"; not found (left alone): {', '.join(up.missing)}" if up.missing else ""))
    return ExitCode.OK


def _report_special(folder: Path, args: argparse.Namespace) -> "int | None":
    """An accuracy run or an interval-coverage study: its one README section; None for a speed run."""
    import json
    from retinabench.report.coverage_section import coverage_section, is_coverage, marker
    from retinabench.report.dataset_accuracy import ap_section
    from retinabench.report.markers import update_file

    base = Path(args.readme).parent if args.readme else Path.cwd()
    from retinabench.report.serving_report import is_serving, serving_section, serving_time_section
    extra = {}
    if is_coverage(folder):
        name, body = marker(folder), coverage_section(folder, base)
    elif is_serving(folder):
        scenario = json.loads((folder / "run.json").read_text()).get("scenario", folder.name)
        name, body = f"serving-{scenario}", serving_section(folder, base)
        extra = {f"serving-time-{scenario}": serving_time_section(folder, base)}
    elif (folder / "run.json").is_file() and json.loads((folder / "run.json").read_text()).get("kind") == "accuracy":
        if not (folder / "accuracy_ap.csv").is_file():
            from retinabench.errors import BenchError
            raise BenchError(f"{folder}: an accuracy run without accuracy_ap.csv (interrupted?)")
        name, body = "accuracy-ap", ap_section(folder, base)
    else:
        return None
    if args.html is not None:
        from retinabench.errors import BenchError
        raise BenchError(f"--html: {folder.name} is a {name.split('-')[0]} run, whose report is its README section "
                         "(printed without --html; --readme writes it); HTML reports are for speed runs")
    for title, text in {name: body, **extra}.items():
        print(f"## {title}\n\n{text}\n")
    if args.readme:
        up = update_file(Path(args.readme), {name: body, **extra}, f"no markers for {name!r}")
        print(f"{args.readme}: rewritten: {', '.join(up.changed) or 'none (already up to date)'}")
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
    rep.add_argument("--html", nargs="?", const="", metavar="FILE",
                     help="write one self-contained HTML report (tables, plots, flags, environment); "
                          "FILE defaults to RESULTS_DIR/report.html")
    rep.set_defaults(func=cmd_report)
