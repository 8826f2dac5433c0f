"""The ``evsoftmax`` command line (also ``python -m evsoftmax``).

Each subcommand lives in its own module, listed in ``_SUBCOMMANDS``, which
defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Subcommand modules import heavy frameworks only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

__all__ = ["main"]

_SUBCOMMANDS = ("._cli_demo", "._cli_info", "._cli_bench", "._cli_reproduce")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="evsoftmax",
        description="Evidential softmax on every array library: demo, info, bench, reproduce.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules: dict[str, object] = {}
    for name in _SUBCOMMANDS:
        module = importlib.import_module(name, __package__)
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        modules[module.NAME] = module
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser, modules = _parser()
    args = parser.parse_args(argv)
    status: int = modules[args.command].run(args)  # type: ignore[attr-defined]
    return status
