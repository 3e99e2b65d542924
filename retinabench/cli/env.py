"""`bench.py env`: the environment fingerprint, which backends are available here and why not, and
where the caches are."""
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
    print(caches_line())
    return ExitCode.OK


def caches_line() -> str:
    """Where the caches are, so a user can find (or clear) them: they live outside the project."""
    from retinabench.defaults import cache_dir
    from retinabench.graph.cache import cache_root
    from retinabench.harness.process import worker_env

    inductor = worker_env().get("TORCHINDUCTOR_CACHE_DIR", "")
    return (f"caches: default model and image {cache_dir()}, converted models {cache_root()}, "
            f"torch.compile kernels {inductor}")


@subcommand("env")
def register(sub: "argparse._SubParsersAction") -> None:
    envp = sub.add_parser("env", help="print the environment fingerprint, which backends are available, and "
                                      "where the caches are")
    envp.set_defaults(func=cmd_env)
