"""`bench.py convert MODEL --to caffe --out DIR [--size WxH] [--batch N] [--upsample exact|bilinear]`.

Writes the model's graph as a Caffe deploy prototxt + caffemodel, the original project's
MXNet2Caffe step. The prototxt's input shape is a default: Caffe runtimes can reshape the net.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from retinabench.cli.common import check_writable_dir
from retinabench.cli.registry import subcommand
from retinabench.errors import BenchError
from retinabench.records import ExitCode

TARGETS = ("caffe",)
DEFAULT_SIZE = "1280x896"


@subcommand("convert")
def register(subparsers: "argparse._SubParsersAction") -> None:
    from retinabench.graph.caffe_export import UPSAMPLE_POLICIES
    p = subparsers.add_parser("convert", help="convert a model to another format (Caffe prototxt + caffemodel)",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("model", help="model directory or file (MXNet checkpoint, Caffe prototxt, ONNX)")
    p.add_argument("--to", choices=TARGETS, default="caffe", help="target format (default: caffe)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--size", default=DEFAULT_SIZE,
                   help=f"input WIDTHxHEIGHT written into the prototxt (default: {DEFAULT_SIZE})")
    p.add_argument("--batch", type=int, default=1, help="input batch size written into the prototxt (default: 1)")
    p.add_argument("--upsample", choices=UPSAMPLE_POLICIES, default="exact",
                   help="nearest UpSampling as Deconvolution: 'exact' (kernel 2, all ones; identical) or "
                        "'bilinear' (kernel 4, pad 1; the original project's, changes outputs)")
    p.add_argument("--family", default=None,
                   help="model family (default: insightface for MXNet and Caffe, recognised for ONNX)")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from retinabench.config import parse_size
    from retinabench.graph.caffe_export import convert_to_caffe
    from retinabench.model.source import open_model

    if args.to not in TARGETS:
        raise BenchError(f"--to {args.to!r}: expected one of {', '.join(TARGETS)}")
    width, height = parse_size(args.size, "--size")
    if args.batch < 1:
        raise BenchError(f"--batch {args.batch}: expected a positive batch size")
    model = open_model(Path(args.model), args.family)
    check_writable_dir(Path(args.out), "--out")  # one line, not a traceback from the writer
    prototxt, caffemodel = convert_to_caffe(model, Path(args.out), (args.batch, 3, height, width), args.upsample)
    print(f"wrote {prototxt} and {caffemodel} (input {args.batch}x3x{height}x{width}, upsample {args.upsample})")
    return ExitCode.OK
