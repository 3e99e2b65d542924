"""The command line: run a scenario, detect faces in one image, convert, report, compare, env.

    python bench.py --config configs/1280x896.yaml [--model M] [--image I] [--loops N] [--resume RUN]
    python bench.py run [--config X.yaml] --backends 'onnxruntime, openvino:bf16' [--reference NAME]
                        [--size WxH] [--device cpu|cuda|cuda:N] [--loops N] [--warmup N] [--out DIR]
    python bench.py detect IMAGE --model M --backend NAME [--threshold T] [--input fit --size WxH]
                        [--save faces.jpg] [--json]
    python bench.py convert MODEL --to caffe --out DIR [--size WxH] [--upsample exact|bilinear]
    python bench.py accuracy --config X.yaml --dataset dlib:test [--dataset dlib:test@0.5] [--max-ap-drop POINTS]
    python bench.py report RESULTS_DIR [--readme README.md] [--html [FILE]]
    python bench.py compare RUN_A RUN_B [--fail-if-slower PCT]
    python bench.py best RUN [--max-p99 MS] [--max-mib MIB] [--throughput]
    python bench.py env
    python bench.py --version

`retinabench` (the console command `pip install -e .` makes) is the same program.
One module per subcommand, each registering itself (retinabench.cli.registry). Every --help
shows each option's default; a mistyped subcommand is named as such, with the nearest known one.

Exit codes (retinabench.records.ExitCode): 0 every row passed or was unavailable; 2 a user error
(bad config or option, missing or corrupt model or image, unknown backend or subcommand, an output
folder that cannot be written: one line on stderr, no traceback);
3 a partial run (some row failed: a crash, an out-of-memory, a runtime error; the others
completed); 6 `compare --fail-if-slower`: a row is slower beyond its interval; 7 `accuracy
--max-ap-drop`: a row loses more AP than allowed; 130 interrupted (Ctrl-C or SIGTERM: finished rows are kept, run.json says
`incomplete`, --resume finishes the run).
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path
from typing import Any, List, NoReturn, Optional, Sequence

# Each module registers its subcommand on import.
from retinabench.cli import accuracy, best, compare, convert, detect, env, report, run  # noqa: F401
from retinabench.cli.registry import COMMANDS
from retinabench.errors import BenchError
from retinabench.records import ExitCode

ORDER = ("run", "detect", "accuracy", "convert", "report", "compare", "best", "env")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the text already says it; descriptions and
    examples (epilogs) keep their line breaks, so an example command is never wrapped mid-way.

    argparse's ArgumentDefaultsHelpFormatter appends "(default: None)" even where None means "the
    config's value"; here those options say what they default to in words, and the rest get the
    value appended. Flags (store_true, --help) and required options have no default worth a word.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or action.required
                or action.default is argparse.SUPPRESS or "default" in text.lower()):
            return text
        value = "none" if action.default is None else "%(default)s"
        return f"{text} (default: {value})" if text else f"default: {value}"


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line `error: ...` on stderr, exit 2.

    argparse prints its usage (several lines) above the error; the usage is one `--help` away, so
    the line names the command and says where to look. Subparsers are made of this class too
    (argparse uses the parent's class), so every subcommand behaves alike.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(ExitCode.USER_ERROR)


def package_version() -> str:
    """The installed distribution's version, else pyproject.toml's (a checkout never installed).

    `pip install -e .` records the version in the distribution's metadata; bench.py run from a
    checkout without that still has pyproject.toml beside the package.
    """
    from importlib import metadata
    try:
        return metadata.version("retinabench")
    except metadata.PackageNotFoundError:
        pass
    try:
        m = re.search(r'^version\s*=\s*"([^"]+)"', PYPROJECT.read_text(), re.MULTILINE)
    except OSError:
        m = None
    return m.group(1) if m else "unknown"


def command_names() -> List[str]:
    """Registered subcommands, in the order the help lists them."""
    return sorted(COMMANDS, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="bench.py", description="RetinaFace multi-backend benchmark harness",
               epilog="`bench.py --config X.yaml ...` (options first) is `bench.py run --config X.yaml ...`.")
    p.add_argument("--version", action="version", version=f"retinabench {package_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_names():
        COMMANDS[name](sub)
    return p


def unknown_command(word: str) -> str:
    """The one line for a mistyped subcommand, with the nearest known one when there is one."""
    known = command_names()
    close = difflib.get_close_matches(word, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    if word.endswith((".yaml", ".yml")):
        hint = f"; to run a scenario: bench.py run --config {word}"
    return f"unknown command {word!r} (known: {', '.join(known)}){hint}"


def _with_command(argv: List[str]) -> List[str]:
    """`bench.py --config X` (options first) means `bench.py run --config X`; a first word that is
    neither an option nor a subcommand is a mistyped subcommand, said as such (BenchError)."""
    if not argv or argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version"):
        return argv
    if argv[0].startswith("-"):
        return ["run"] + argv
    raise BenchError(unknown_command(argv[0]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _with_command(argv)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USER_ERROR
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return ExitCode.USER_ERROR
    args.argv = argv  # what was run, for hints that repeat the command (run's --resume line)
    try:
        return int(args.func(args))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
