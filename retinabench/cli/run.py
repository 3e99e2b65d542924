"""`bench.py --config X.yaml` (or `bench.py run --config X.yaml`): run a scenario, print its table.

Common variations need no YAML: `--backends 'onnxruntime, openvino:bf16'` picks the rows (with or
without --config), `--reference`, `--size WxH`, `--device`, `--loops`, `--warmup` and `--threads`
change what the config says. Before any row loads, the output folder is checked for writing and
thread counts above the machine's cores are a warning (kept in run.json's `warnings`).
"""
from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from retinabench.cli.common import ProgressBar, check_writable_dir, resolve_images, resolve_model
from retinabench.cli.registry import subcommand
from retinabench.errors import BenchError
from retinabench.records import ExitCode
from retinabench.store import RowResult

if TYPE_CHECKING:
    from retinabench.config import Scenario

DEFAULT_SIZE = "1280x896"   # the input of a scenario given without --config (the original's first table)


def row_done(r: RowResult, i: int, n: int) -> None:
    """One line per finished row, so a log (where bars vanish) shows how far a long run got."""
    line = f"[{i}/{n}] {r.key}: {r.status}"
    if r.passed:
        from retinabench.report.stats import Measurement
        m = Measurement.from_ns(r.samples_ns[:, 3])
        line += f", total median {m.median_ms:.3f} ms, CV {100 * m.cv:.1f}%"
    elif r.reason:
        line += f": {r.reason}"
    if r.stderr_tail:
        line += f"\n    its stderr ends: {r.stderr_tail}  (all of it: rows/{r.key}.stderr.txt)"
    print(line, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from retinabench.harness.process import worker_memory_limit
    from retinabench.harness.runner import run_scenario
    from retinabench.report.summary import summarise_run, validity_table
    from retinabench.report.tables import stage_table

    scenario, notes = scenario_from_args(args)
    results_root = Path(args.out or scenario.results_dir)
    check_output(args, results_root)
    worker_memory_limit()  # a bad RETINABENCH_WORKER_MEMORY_LIMIT is an error now, not a failed row later
    model = resolve_model(scenario.model)
    images = resolve_images(scenario.images)
    warnings = thread_warnings(scenario)
    for line in notes + [f"warning: {w}" for w in warnings]:
        print(line, file=sys.stderr)
    print(f"scenario {scenario.name}: model {model}, {len(images)} image(s), input "
          f"{', '.join(i.label for i in scenario.inputs) or scenario.input.label}, "
          f"{len(scenario.rows())} row(s) x {scenario.loops} loops (+{scenario.warmup} warmup)", file=sys.stderr)
    if scenario.load is not None:
        return serve_scenario(scenario, model, images, results_root)
    outcome = run_scenario(scenario, model, images, results_root, summarise_run,
                           resume=Path(args.resume) if args.resume else None,
                           progress_factory=ProgressBar,
                           on_row_done=row_done, warnings=warnings)
    summary = outcome.summary
    if args.wide:
        print(stage_table(summary))
        print(validity_table(summary))
        print(faces_line(outcome.rows))
        print(f"results: {outcome.run_dir} ({outcome.status})")
    elif summary:
        from retinabench.report.render import console
        from retinabench.report.run_data import load_run
        print(console(build_table(load_run(outcome.run_dir)), commands=next_commands(outcome.run_dir),
                      notes=[faces_line(outcome.rows), f"results: {outcome.run_dir} ({outcome.status})"]))
    else:
        print(f"results: {outcome.run_dir} ({outcome.status})")
    if outcome.status == "contended":
        from retinabench.store import RunStore
        print(RunStore(outcome.run_dir).read_meta().get("reason", ""))
    if outcome.status == "incomplete":
        print(f"run interrupted; finish it with: {resume_command(args, outcome.run_dir)}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.PARTIAL if outcome.status == "partial" else ExitCode.OK


def serve_scenario(scenario: Any, model: Path, images: List[Path], results_root: Path) -> int:
    """A scenario with a `load:` section: its rows under MLPerf LoadGen (retinabench.harness.serving_run)."""
    from retinabench.harness.serving_run import run_serving
    from retinabench.report.serving_report import read_lines, serving_reports, serving_table
    load = scenario.load
    print(f"serving: LoadGen {load.scenario}, {len(scenario.rows())} row(s), {load.rounds} round(s)", file=sys.stderr)
    outcome = run_serving(scenario, model, images, results_root, serving_reports)
    if (outcome.run_dir / "serving.csv").is_file():
        print(serving_table(read_lines(outcome.run_dir)))
    print(f"results: {outcome.run_dir} ({outcome.status})")
    print(f"next: bench.py report {outcome.run_dir}   (the README section; LoadGen's logs are under loadgen/)")
    return ExitCode.PARTIAL if outcome.status == "partial" else ExitCode.OK


def build_table(run: Any) -> Any:
    from retinabench.report.table_model import build
    return build(run)


def faces_line(rows: List[RowResult]) -> str:
    """How many faces each passed row found in the first image, in one line (the same count: said once)."""
    counts = {r.key: len((r.result.faces or [[]])[0]) for r in rows if r.status == "passed"}
    if not counts:
        return "faces: no row passed"
    if len(set(counts.values())) == 1:
        return f"faces in the first image: {next(iter(counts.values()))} for every passed row"
    return "faces in the first image: " + ", ".join(f"{k} {n}" for k, n in counts.items())


def next_commands(run_dir: Path) -> List[str]:
    """What to run next: this run's report, and a comparison with the previous run of the scenario."""
    run_dir = Path(run_dir)
    scenario = run_dir.name.split("-", 2)[-1] if run_dir.name.count("-") >= 2 else ""
    earlier = sorted(p for p in run_dir.parent.glob(f"*-{scenario}") if p != run_dir and (p / "summary.csv").is_file()
                     and p.name < run_dir.name and p.name.split("-", 2)[-1] == scenario) if scenario else []
    cmds = [f"bench.py report {run_dir} --html   (tables, plots and flags in one file)"]
    if earlier:
        cmds.append(f"bench.py compare {earlier[-1]} {run_dir}   (against the previous run of {scenario})")
    else:
        cmds.append(f"bench.py compare OLDER_RUN {run_dir} --fail-if-slower 10   (a regression gate)")
    return cmds


# ---- the scenario: a config, or the command line alone, with the options over it

def scenario_from_args(args: argparse.Namespace) -> Tuple["Scenario", List[str]]:
    """The scenario to run: --config's file (or, without one, `cli_scenario_data`) under the options,
    and the lines to show before the run (a reference chosen for the user), once it is valid.

    --backends, --device and the reference default need the file's backend entries and reference,
    so the file is read first and those options rewrite its data; the rest are plain overrides."""
    from retinabench.config import read_config, scenario_with_overrides

    if not args.config and not args.backends:
        raise BenchError("run needs --config FILE.yaml or --backends NAME[:VARIANT],... "
                         "(e.g. bench.py run --backends onnxruntime,openvino --size 640x448 --loops 100)")
    data = read_config(Path(args.config)) if args.config else cli_scenario_data(args.size)
    notes: List[str] = []
    if isinstance(data, dict):  # anything else: validation names what is wrong
        data = dict(data)
        entries = data.get("backends") if isinstance(data.get("backends"), list) else []
        if args.backends:
            data["backends"] = entries = chosen_entries(parse_backends(args.backends), entries)
        if args.backends or args.reference:
            data["reference"], note = pick_reference(args.reference, data.get("reference"), entries)
            notes += [note] if note else []
        if args.device:
            from retinabench.config import entry_on_device
            data["device"] = device_arg(args.device)
            if isinstance(data.get("backends"), list):
                data["backends"] = [entry_on_device(e, data["device"]) for e in data["backends"]]
    return scenario_with_overrides(data, args.config or "<command line>", _overrides(args)), notes


def _overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The options that replace one field of the scenario each (None: not given, the file's value)."""
    from retinabench.config import fit_input

    overrides: Dict[str, Any] = {"loops": args.loops, "warmup": args.warmup, "model": args.model,
                                 "images": args.image, "threads": args.threads, "schedule": args.schedule,
                                 "seed": args.seed}
    if args.size:
        overrides["input"] = fit_input(args.size, "--size").to_json()
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
    return overrides


def cli_scenario_data(size: Optional[str]) -> Dict[str, Any]:
    """A scenario without a file: the default model and image, fit into --size (default 1280x896,
    the original's first table), the Scenario's own defaults for the rest (1000 loops, 50 warmup).

    Named cli-WxH, so its run folders never pass for a shipped scenario's (whose backends are fixed)."""
    from retinabench.config import fit_input

    spec = fit_input(size or DEFAULT_SIZE, "--size")
    return {"name": f"cli-{spec.label}", "model": "default", "images": ["default"], "input": spec.to_json()}


def parse_backends(text: str) -> List[Tuple[str, str]]:
    """--backends 'onnxruntime, openvino:bf16' -> [(name, variant), ...], each checked against the
    registry, so a typo is one line naming the known backends (or the backend's known variants)."""
    from backends.base import REGISTRY, backend_class

    items = [t.strip() for t in text.split(",")]
    if not any(items):
        raise BenchError(f"--backends {text!r}: expected NAME[:VARIANT],..., e.g. onnxruntime,openvino:bf16")
    chosen: List[Tuple[str, str]] = []
    for item in items:
        name, colon, variant = (part.strip() for part in item.partition(":"))
        if not name or (colon and not variant):
            raise BenchError(f"--backends {text!r}: {item!r} is not NAME or NAME:VARIANT")
        if name not in REGISTRY:
            raise BenchError(f"--backends: unknown backend {name!r} (known: {', '.join(sorted(REGISTRY))})"
                             + _did_you_mean(name, REGISTRY))
        variant = variant or "default"
        try:
            variants = backend_class(name).variants
        except BenchError as e:
            raise BenchError(f"--backends: {e}") from None
        if variant not in variants:
            raise BenchError(f"--backends: backend {name!r} has no variant {variant!r} "
                             f"(known: {', '.join(variants)})" + _did_you_mean(variant, variants))
        if (name, variant) in chosen:
            raise BenchError(f"--backends: {name}:{variant} is listed twice")
        chosen.append((name, variant))
    return chosen


def _did_you_mean(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def chosen_entries(chosen: List[Tuple[str, str]], listed: List[Any]) -> List[Any]:
    """The config's own entry for each chosen (name, variant) where it lists one (its device,
    options and env kept), else a plain one: `--backends onnxruntime` on a GPU config whose
    onnxruntime row is on the CPU stays on the CPU."""
    from retinabench.config import backend_entry_key

    out: List[Any] = []
    for name, variant in chosen:
        same = [e for e in listed if backend_entry_key(e) == (name, variant)]
        out.append(same[0] if same else (name if variant == "default" else {"name": name, "variant": variant}))
    return out


def pick_reference(given: Optional[str], configured: Any, entries: List[Any]) -> Tuple[Any, str]:
    """The backend the ratios and the accuracy section compare against, and a line to say why when
    it is not the one the user or the config named.

    --reference NAME when given (one of the chosen backends); else the config's, when it is among
    them; else the first chosen backend (a shipped config's reference, MXNet say, is often not among
    the two backends a user picks, and ratios need one)."""
    from retinabench.config import backend_entry_key

    names = list(dict.fromkeys(k[0] for k in map(backend_entry_key, entries) if k))
    if given is not None:
        if given not in names:
            raise BenchError(f"--reference {given!r}: not one of the chosen backends ({', '.join(names)})"
                             + _did_you_mean(given, names))
        return given, ""
    if configured in names or not names:
        return configured, ""
    why = f"; the config's reference {configured!r} is not among them" if configured else ""
    return names[0], f"reference: {names[0]} (the first of --backends{why}; --reference NAME picks another)"


def device_arg(text: str) -> str:
    """--device: cpu, cuda or cuda:N, for every backend entry."""
    from retinabench.records import check_device
    try:
        return check_device(text.strip())
    except ValueError as e:
        raise BenchError(f"--device: {e}") from None


# ---- before the run: where it writes, how many threads it asks for

def check_output(args: argparse.Namespace, results_root: Path) -> None:
    """The folder the run writes to can be written, before any model is read or row loaded: a bad
    --out is one line now, not a traceback after the first row. A --resume folder that does not
    exist is left to the run store, which says it is not a run folder (nothing is created here)."""
    if args.resume:
        if Path(args.resume).is_dir():
            check_writable_dir(Path(args.resume), "--resume")
        return
    check_writable_dir(results_root, "--out" if args.out else "results_dir")


def thread_warnings(scenario: "Scenario") -> List[str]:
    """One line per thread count above the cores this process may run on: the backends' threads
    would then take turns on the cores, and the times would measure the switching too.

    Rows on a remote Dask cluster run on other machines, whose cores are not known here: no check."""
    if scenario.executor == "dask" and scenario.scheduler:
        return []
    cores = usable_cores()
    over: Dict[int, List[str]] = {}
    for b in scenario.backends:
        if b.threads is not None and b.threads > cores:
            over.setdefault(b.threads, []).append(b.name if b.variant == "default" else f"{b.name}:{b.variant}")
    return [f"threads {t} is more than the {cores} core(s) this machine gives the run ({', '.join(names)}): "
            "the threads will share cores and the times will include their switching"
            for t, names in sorted(over.items())]


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one, e.g. in a container
    limited with --cpuset-cpus), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    """The command that finishes an interrupted run: this one's arguments, with --resume RUN_DIR."""
    argv = list(getattr(args, "argv", None) or ["run", "--config", str(args.config)])
    kept: List[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            kept.append(a)
    return shlex.join(["python", "bench.py", *kept, "--resume", str(run_dir)])


def count(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `least` (--loops 0 is refused by the option's name, in
    argparse's one line, rather than later by the config field's)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= {least}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: expected a whole number >= {least}")
        return value
    parse.__name__ = "count"  # what argparse names in its message
    return parse


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
    run = sub.add_parser("run", help="run a scenario (the default when the first argument is an option)",
                         description="Run a scenario, a YAML file (--config) or the command line alone "
                                     "(--backends),\nand print its table; the options change what the file says.",
                         epilog="examples:\n"
                                "  bench.py run --config configs/smoke.yaml\n"
                                "  bench.py run --backends 'onnxruntime, openvino:bf16' --size 640x448 --loops 100\n"
                                "  bench.py run --config configs/1280x896.yaml --backends onnxruntime,openvino "
                                "--loops 200")
    run.add_argument("--config", metavar="FILE", help="scenario YAML, e.g. configs/1280x896.yaml (default: none: the default model "
                                      f"and image at --size, {DEFAULT_SIZE} if not given; needs --backends)")
    run.add_argument("--model", help="model path or 'default' (default: the config's; RETINABENCH_MODEL overrides "
                                     "the config, this option both)")
    run.add_argument("--image", action="append", help="image path, repeatable (default: the config's; "
                                                      "RETINABENCH_IMAGE overrides the config, this option both)")
    run.add_argument("--backends", metavar="NAME[:VARIANT],...",
                     help="the rows to run, e.g. 'onnxruntime, openvino:bf16', replacing the config's list; a "
                          "backend the config lists keeps its settings (default: the config's list)")
    run.add_argument("--reference", metavar="NAME",
                     help="backend the ratios and the accuracy section compare against (default: the config's "
                          "when it is among the backends, else the first of --backends)")
    run.add_argument("--size", metavar="WxH",
                     help="input WIDTHxHEIGHT, multiples of 32, the image fitted into it (default: the config's "
                          f"input; {DEFAULT_SIZE} without --config)")
    run.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N for every backend (default: each "
                                                        "backend's device in the config; cpu without --config)")
    run.add_argument("--loops", type=count(1), metavar="N", help="measured loops per row (default: the config's; 1000 without it)")
    run.add_argument("--warmup", type=count(0), metavar="N", help="warmup loops per row, excluded from the statistics (default: the "
                                                "config's; 50 without it)")
    run.add_argument("--threads", type=count(1), metavar="N", help="intra-op threads for every backend (default: the config's; "
                                                 "without it, each runtime's own choice)")
    run.add_argument("--wide", action="store_true",
                     help="print every column and the validity table, not the compact table")
    run.add_argument("--out", help="results root; the run writes RESULTS_ROOT/<UTC time>-<scenario>/ "
                                   "(default: the config's results_dir, 'results')")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="finish an interrupted run folder: run only its missing rows (default: a new run)")
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
                     help="where rows run: here, or on the workers of a Dask cluster (default: the config's, local)")
    run.add_argument("--scheduler", metavar="ADDR",
                     help="with --executor dask: the Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                          "(default: a LocalCluster, or LocalCUDACluster for CUDA rows, on this machine)")
    run.set_defaults(func=cmd_run)
