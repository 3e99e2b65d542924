"""`bench.py detect IMAGE --backend NAME`: the faces one backend finds in one image (a sanity check).

It says first what ran (backend, variant, device, input and the model's path and sha256), so a
result can be matched to its model; `--save out.jpg` draws the faces onto the image.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, TextIO

from retinabench.cli.common import check_writable_dir, resolve_images, resolve_model
from retinabench.cli.registry import subcommand
from retinabench.errors import BenchError
from retinabench.records import BackendSpec, ExitCode, InputSpec

# BGR colours of the five landmarks, in the families' order (as insightface draws them):
# left eye red, right eye yellow, nose magenta, left mouth corner green, right mouth corner blue
LANDMARK_COLOURS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))
BOX_COLOUR = (0, 255, 0)


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
    save = save_target(args.save) if args.save else None  # before the worker: a bad path costs nothing
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
    faces: List[Dict[str, Any]] = record.faces[0]
    # with --json, stdout holds the JSON alone; what ran and where the image went go to stderr
    notes: TextIO = sys.stderr if args.json else sys.stdout
    print(ran_line(spec, size, record.model or {"path": str(model)}), file=notes)
    if args.json:
        print(json.dumps({"faces": faces}))
    else:
        for f in faces:
            x1, y1, x2, y2 = f["box"]
            print(f"score {f['score']:.4f}  box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
        print(f"{len(faces)} face(s)")
    if save is not None:
        write_annotated(images[0], faces, save)
        print(f"wrote {save}: {len(faces)} face(s) drawn (box, score, 5 landmarks)", file=notes)
    return ExitCode.OK


def ran_line(spec: BackendSpec, size: InputSpec, model: Dict[str, str]) -> str:
    """What ran, in one line: backend, variant, device, input, and the model the worker loaded
    (its path, format, family and sha256 prefix, as the worker described it)."""
    parts = [model[k] for k in ("format", "family") if model.get(k)]
    if model.get("sha256"):
        parts.append(f"model_sha256 {model['sha256'][:12]}")  # as run.json names the model
    about = ", ".join(parts)
    return (f"detect: backend {spec.name}, variant {spec.variant}, device {spec.device}, input {size.label}; "
            f"model {model.get('path', '?')}" + (f" ({about})" if about else ""))


def save_target(text: str) -> Path:
    """--save's path, checked before anything runs: a format OpenCV writes, in a folder we can write in."""
    import cv2

    target = Path(os.path.expanduser(text))
    if target.is_dir():
        raise BenchError(f"--save {target}: is a folder; expected an image file name such as faces.jpg")
    if not cv2.haveImageWriter(str(target)):
        raise BenchError(f"--save {target}: OpenCV cannot write {target.suffix or 'a file without an extension'}; "
                         "use .jpg or .png")
    check_writable_dir(target.parent, f"--save {target}")
    return target


def draw_faces(image: Any, faces: List[Dict[str, Any]]) -> Any:
    """A copy of `image` (BGR) with each face's box, score and five landmarks drawn.

    The faces are the worker's records (retinabench.model.detections.Faces.to_json): boxes and
    landmarks in the original image's pixels, whatever the input mode, so they land where drawn.
    Lines and text scale with the image, so they stay visible on a large photo."""
    import cv2

    out = image.copy()
    width = max(1, round(max(image.shape[:2]) / 640))
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, width)
        text_y = y1 - 4 * width if y1 - 4 * width > 10 * width else y2 + 12 * width  # above, else below
        cv2.putText(out, f"{f['score']:.4f}", (x1, text_y), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * width, BOX_COLOUR,
                    width, cv2.LINE_AA)
        for (x, y), colour in zip(f["landmarks"], LANDMARK_COLOURS):
            cv2.circle(out, (int(round(x)), int(round(y))), width + 1, colour, -1)
    return out


def write_annotated(image_path: Path, faces: List[Dict[str, Any]], target: Path) -> None:
    """Draw `faces` onto the image and write it to `target` (whole or not at all: atomic_write)."""
    import cv2

    from retinabench.model.images import load_image
    from retinabench.store import atomic_write

    ok, data = cv2.imencode(target.suffix, draw_faces(load_image(image_path), faces))
    if not ok:
        raise BenchError(f"--save {target}: OpenCV could not encode the image as {target.suffix}")
    try:
        atomic_write(target, data.tobytes())
    except OSError as e:
        raise BenchError(f"--save {target}: cannot write ({e.strerror or e})") from None


@subcommand("detect")
def register(sub: "argparse._SubParsersAction") -> None:
    det = sub.add_parser("detect", help="detect faces in one image with one backend",
                         description="Detect faces in one image with one backend: prints what ran (backend, "
                                     "variant, device,\nmodel and its sha256), then each face's score and box.",
                         epilog="example:\n  bench.py detect default --backend onnxruntime --save faces.jpg")
    det.add_argument("image", help="image path, or 'default' (the PyPI-shipped group photo)")
    det.add_argument("--model", help="model path or 'default' (default: RETINABENCH_MODEL, else 'default', the "
                                     "PyPI-shipped MobileNet-0.25)")
    det.add_argument("--backend", default="onnxruntime", help="runtime to run the model with")
    det.add_argument("--variant", default="default", help="the backend's variant, e.g. bf16 for openvino")
    det.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    det.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's own choice)")
    det.add_argument("--family", choices=("insightface", "biubug6"),
                     help="override the model's family (default: insightface for MXNet and Caffe, recognised for ONNX)")
    det.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="backend option, repeatable (default: the backend's defaults)")
    det.add_argument("--threshold", type=float, default=0.8, help="minimum face score")
    det.add_argument("--input", choices=("native", "fit"), default="native",
                     help="'native': the image at its own size; 'fit': resized into --size, keeping its aspect, padded")
    det.add_argument("--size", metavar="WxH", help="WIDTHxHEIGHT for --input fit, multiples of 32 (default: none; "
                                                   "required with --input fit)")
    det.add_argument("--save", metavar="OUT.jpg",
                     help="write the image with each face's box, score and 5 landmarks drawn (default: not written)")
    det.add_argument("--json", action="store_true", help="print {'faces': [...]} as JSON (what ran: on stderr)")
    det.set_defaults(func=cmd_detect)
