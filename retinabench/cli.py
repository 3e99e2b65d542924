"""The command line: run a scenario, detect faces in one image, convert, report, compare, env.

    python bench.py --config configs/1280x896.yaml [--model M] [--image I] [--loops N] [--resume RUN]
    python bench.py detect IMAGE --model M --backend NAME [--threshold T] [--input fit --size WxH] --json
    python bench.py convert MODEL --to caffe --out DIR [--size WxH] [--upsample exact|bilinear]
    python bench.py report RESULTS_DIR [--readme README.md]
    python bench.py compare RUN_A RUN_B
    python bench.py env

Exit codes: 0 every row passed or was unavailable; 2 a user error (bad config, missing or corrupt
model or image, unknown backend: one line on stderr, no traceback); 3 a partial run (some row
failed: a crash, an out-of-memory, a runtime error; the others completed); 130 interrupted (Ctrl-C
or SIGTERM: finished rows are kept, run.json says `incomplete`, --resume finishes the run).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

from retinabench.errors import BenchError

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 2, 3, 130
SUBCOMMANDS = ("run", "detect", "convert", "report", "compare", "env")


def resolve_model(value: str) -> Path:
    """An existing model whose files parse: a corrupt model is an error before any worker starts."""
    from retinabench.model.source import open_model
    if value == "default":
        from retinabench.defaults import default_model_path
        path = default_model_path()
    else:
        path = Path(os.path.expanduser(value))
    open_model(path).check()  # names what is missing, truncated or inconsistent
    return path


def resolve_images(values: Sequence[str]) -> List[Path]:
    """Existing, decodable images; 'default' is the PyPI-shipped photo (retinabench.defaults)."""
    import cv2
    if not values:
        raise BenchError("no images given")
    paths = []
    for v in values:
        if v == "default":
            from retinabench.defaults import default_image_path
            p = default_image_path()
        else:
            p = Path(os.path.expanduser(v))
        if not p.exists():
            raise BenchError(f"image {p} does not exist")
        if not p.is_file():
            raise BenchError(f"image {p} is not a file")
        if not os.access(p, os.R_OK):
            raise BenchError(f"image {p} is not readable")
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None or img.size == 0:
            raise BenchError(f"image {p} cannot be decoded as an image")
        paths.append(p.resolve())
    return paths


class _Bar:
    """Progress of one row, fed by the worker's progress lines: a tqdm bar on a terminal, a plain
    line at each quarter in a log (where a bar's carriage returns would make one endless line)."""

    def __init__(self, desc: str):
        self._desc = desc
        self._quarter = 0
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=1, desc=desc, unit="loop", leave=False, dynamic_ncols=True, file=sys.stderr)
        else:
            print(f"{desc}: started", file=sys.stderr, flush=True)

    def update_to(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
        elif total and 4 * done // total > self._quarter:
            self._quarter = 4 * done // total
            print(f"{self._desc}: {done}/{total} loops (warmup included)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _row_done(r, i: int, n: int) -> None:
    """One line per finished row, so a log (where bars vanish) shows how far a long run got."""
    line = f"[{i}/{n}] {r.key}: {r.status}"
    if r.status == "passed" and r.samples_ns is not None and len(r.samples_ns):
        from retinabench.report.stats import Measurement
        m = Measurement.from_ns(r.samples_ns[:, 3])
        line += f", total median {m.median_ms:.3f} ms, CV {100 * m.cv:.1f}%"
    elif r.reason:
        line += f": {r.reason}"
    print(line, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from retinabench.config import load_scenario
    from retinabench.harness.runner import run_scenario
    from retinabench.report.tables import stage_table

    overrides = {"loops": args.loops, "warmup": args.warmup, "model": args.model,
                 "images": args.image, "threads": args.threads}
    if args.backends:
        overrides["backends"] = args.backends.split(",")
    scenario = load_scenario(Path(args.config), overrides)
    from retinabench.harness.runner import worker_memory_limit
    worker_memory_limit()  # a bad RETINABENCH_WORKER_MEMORY_LIMIT is an error now, not a failed row later
    model = resolve_model(scenario.model)
    images = resolve_images(scenario.images)
    results_root = Path(args.out or scenario.results_dir)
    print(f"scenario {scenario.name}: model {model}, {len(images)} image(s), input {scenario.input.label}, "
          f"{len(scenario.rows())} row(s) x {scenario.loops} loops (+{scenario.warmup} warmup)", file=sys.stderr)
    outcome = run_scenario(scenario, model, images, results_root, resume=Path(args.resume) if args.resume else None,
                           progress_factory=lambda row, i, n: _Bar(f"[{i}/{n}] {row.key}"),
                           on_row_done=_row_done)
    from retinabench.report.results import summary_rows, validity_table
    summary = summary_rows(outcome.rows)
    print(stage_table(summary))
    print(validity_table(summary))
    for r in outcome.rows:
        faces = (r.info.get("faces") or [[]])[0]
        if r.status == "passed":
            print(f"{r.key}: {len(faces)} face(s) in the first image")
    print(f"results: {outcome.run_dir} ({outcome.status})")
    if outcome.status == "incomplete":
        print(f"run interrupted; finish it with: python bench.py --config {args.config} --resume {outcome.run_dir}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if outcome.status == "partial" else EXIT_OK


def cmd_detect(args: argparse.Namespace) -> int:
    from backends.base import REGISTRY
    from retinabench.config import BackendSpec, InputSize, Row, Scenario, parse_size
    from retinabench.harness.runner import interpreter_for, make_job, run_worker

    if args.backend not in REGISTRY:
        raise BenchError(f"unknown backend {args.backend!r} (known: {', '.join(sorted(REGISTRY))})")
    if not 0.0 <= args.threshold <= 1.0:
        raise BenchError(f"--threshold {args.threshold}: expected a number in [0, 1]")
    if args.input == "fit":
        if not args.size:
            raise BenchError("--input fit needs --size WxH (multiples of 32), e.g. --size 1280x896")
        w, h = parse_size(args.size)
        size = InputSize("fit", w, h)
    else:
        if args.size:
            raise BenchError("--size applies to --input fit; native mode uses the image's own size")
        size = InputSize("native")
    model = resolve_model(args.model or os.environ.get("RETINABENCH_MODEL") or "default")
    images = resolve_images([args.image])
    options = dict(kv.split("=", 1) for kv in args.option or [])
    spec = BackendSpec(args.backend, args.variant, args.threads, args.device, options)
    scenario = Scenario("detect", str(model), (str(images[0]),), size, (spec,), loops=1, warmup=0,
                        threshold=args.threshold, family=args.family)
    row = Row(spec, 1, 1)
    python = interpreter_for(args.backend)
    with tempfile.TemporaryDirectory(prefix="retinabench-detect-") as tmp:
        record = run_worker(make_job(scenario, row, model, images, save_outputs=False), Path(tmp), python)
    if record.get("status") != "passed":
        raise BenchError(f"{args.backend}: {record.get('status', 'failed')}: {record.get('reason', '')}")
    faces = {"faces": record["faces"][0]}
    if args.json:
        print(json.dumps(faces))
    else:
        for f in faces["faces"]:
            x1, y1, x2, y2 = f["box"]
            print(f"score {f['score']:.4f}  box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
        print(f"{len(faces['faces'])} face(s)")
    return EXIT_OK


def cmd_env(args: argparse.Namespace) -> int:
    from backends.base import REGISTRY, backend_class
    from retinabench.harness.env import fingerprint
    print(json.dumps(fingerprint(), indent=1))
    for name in sorted(REGISTRY):
        try:
            ok, reason = backend_class(name).available()
        except BenchError as e:
            ok, reason = False, str(e)
        print(f"{name:14s} {'available' if ok else 'unavailable: ' + reason}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py", description="RetinaFace multi-backend benchmark harness")
    sub = p.add_subparsers(dest="command")

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
    run.set_defaults(func=cmd_run)

    det = sub.add_parser("detect", help="detect faces in one image with one backend")
    det.add_argument("image")
    det.add_argument("--model", help="model path or 'default' (env RETINABENCH_MODEL)")
    det.add_argument("--backend", default="onnxruntime")
    det.add_argument("--variant", default="default")
    det.add_argument("--device", default="cpu")
    det.add_argument("--threads", type=int)
    det.add_argument("--family", choices=("insightface", "biubug6"), help="override the model's family")
    det.add_argument("--option", action="append", help="backend option KEY=VALUE (repeatable)")
    det.add_argument("--threshold", type=float, default=0.8)
    det.add_argument("--input", choices=("native", "fit"), default="native")
    det.add_argument("--size", help="WIDTHxHEIGHT for --input fit")
    det.add_argument("--json", action="store_true", help="print {'faces': [...]} as JSON")
    det.set_defaults(func=cmd_detect)

    try:
        from retinabench import cli_convert
        cli_convert.add_parser(sub)
    except ImportError:
        pass
    try:
        from retinabench import cli_report
        cli_report.add_parsers(sub)
    except ImportError:
        pass

    envp = sub.add_parser("env", help="print the environment fingerprint and which backends are available")
    envp.set_defaults(func=cmd_env)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run"] + argv  # `bench.py --config X` is `bench.py run --config X`
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return args.func(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
