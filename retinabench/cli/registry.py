"""Subcommands register themselves here; retinabench.cli builds the parser from what registered."""
from __future__ import annotations

import argparse
from typing import Callable, Dict

# name -> a function that adds the subcommand's parser (with `func` set) to the subparsers
Register = Callable[["argparse._SubParsersAction"], None]
COMMANDS: Dict[str, Register] = {}


def subcommand(name: str) -> Callable[[Register], Register]:
    def add(register: Register) -> Register:
        if name in COMMANDS:
            raise RuntimeError(f"subcommand {name!r} registered twice")
        COMMANDS[name] = register
        return register
    return add
