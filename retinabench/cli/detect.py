"""`bench.py detect IMAGE --backend NAME`: the faces one backend finds in one image (a sanity check)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from retinabench.cli.common import resolve_images, resolve_model
from retinabench.cli.registry import subcommand
from retinabench.errors import BenchError
from retinabench.records import BackendSpec, ExitCode, InputSpec


def cmd_detect(args: argparse.Namespace) -> int:
    from backends.base import REGISTRY, backend_class
    from retinabench.config import Row, Scenario, fit_input
    from retinabench.harness.process import interpreter_for, run_worker
    from retinabench.harness.runner import make_job
    from retinabench.records import RowId, check_device
    from retinabench.store import WorkDir

    if args.backend not in REGISTRY:
        raise BenchError(f"unknown backend {args.backend!r} (known: {', '.join(sorted(REGISTRY))})")
    if not 0.0 <= args.threshold <= 1.0:
        raise BenchError(f"--threshold {args.threshold}: expected a number in [0, 1]")
    if args.input == "fit":
        if not args.size:
            raise BenchError("--input fit needs --size WxH (multiples of 32), e.g. --size 1280x896")
        size = fit_input(args.size)
    else:
        if args.size:
            raise BenchError("--size applies to --input fit; native mode uses the image's own size")
        size = InputSpec("native")
    try:
        device = check_device(args.device)
    except ValueError as e:
        raise BenchError(f"--device: {e}") from None
    cls = backend_class(args.backend)
    if args.variant not in cls.variants:
        raise BenchError(f"--variant: backend {args.backend!r} has no variant {args.variant!r} "
                         f"(known: {', '.join(cls.variants)})")
    pairs = [kv.split("=", 1) for kv in args.option or []]
    if any(len(p) != 2 for p in pairs):
        raise BenchError("--option: expected KEY=VALUE")
    given = dict(pairs)
    typed = cls.parse_options(given, f"--option (backend {args.backend!r})", from_strings=True)
    options = {k: getattr(typed, k) for k in given}  # the worker validates them again, as values
    model = resolve_model(args.model or os.environ.get("RETINABENCH_MODEL") or "default")
    images = resolve_images([args.image])
    spec = BackendSpec(args.backend, args.variant, args.threads, device, options)
    scenario = Scenario("detect", str(model), (str(images[0]),), size, (spec,), loops=1, warmup=0,
                        threshold=args.threshold, family=args.family)
    row = Row(RowId(spec.name, spec.variant, spec.device, size.label, 1, 1), spec)
    python = interpreter_for(args.backend)
    with tempfile.TemporaryDirectory(prefix="retinabench-detect-") as tmp:
        record = run_worker(make_job(scenario, row, model, images, save_outputs=False), WorkDir(Path(tmp)), python)
    if record.status != "passed":
        raise BenchError(f"{args.backend}: {record.status}: {record.reason}")
    faces = {"faces": record.faces[0]}
    if args.json:
        print(json.dumps(faces))
    else:
        for f in faces["faces"]:
            x1, y1, x2, y2 = f["box"]
            print(f"score {f['score']:.4f}  box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
        print(f"{len(faces['faces'])} face(s)")
    return ExitCode.OK


@subcommand("detect")
def register(sub: "argparse._SubParsersAction") -> None:
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
