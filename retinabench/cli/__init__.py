"""The command line: run a scenario, detect faces in one image, convert, report, compare, env.

    python bench.py --config configs/1280x896.yaml [--model M] [--image I] [--loops N] [--resume RUN]
    python bench.py detect IMAGE --model M --backend NAME [--threshold T] [--input fit --size WxH] --json
    python bench.py convert MODEL --to caffe --out DIR [--size WxH] [--upsample exact|bilinear]
    python bench.py report RESULTS_DIR [--readme README.md]
    python bench.py compare RUN_A RUN_B
    python bench.py env

`retinabench` (the console command `pip install -e .` makes) is the same program.
One module per subcommand, each registering itself (retinabench.cli.registry).

Exit codes (retinabench.records.ExitCode): 0 every row passed or was unavailable; 2 a user error
(bad config, missing or corrupt model or image, unknown backend: one line on stderr, no traceback);
3 a partial run (some row failed: a crash, an out-of-memory, a runtime error; the others
completed); 130 interrupted (Ctrl-C or SIGTERM: finished rows are kept, run.json says
`incomplete`, --resume finishes the run).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

# Each module registers its subcommand on import.
from retinabench.cli import compare, convert, detect, env, report, run  # noqa: F401
from retinabench.cli.registry import COMMANDS
from retinabench.errors import BenchError
from retinabench.records import ExitCode

ORDER = ("run", "detect", "convert", "report", "compare", "env")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py", description="RetinaFace multi-backend benchmark harness")
    sub = p.add_subparsers(dest="command")
    for name in sorted(COMMANDS, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        COMMANDS[name](sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run"] + argv  # `bench.py --config X` is `bench.py run --config X`
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitCode.USER_ERROR
    try:
        return int(args.func(args))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
