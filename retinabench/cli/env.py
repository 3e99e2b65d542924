"""`bench.py env`: the environment fingerprint, and which backends are available here and why not."""
from __future__ import annotations

import argparse
import json

from retinabench.cli.registry import subcommand
from retinabench.errors import BenchError
from retinabench.records import ExitCode


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
    return ExitCode.OK


@subcommand("env")
def register(sub: "argparse._SubParsersAction") -> None:
    envp = sub.add_parser("env", help="print the environment fingerprint and which backends are available")
    envp.set_defaults(func=cmd_env)
