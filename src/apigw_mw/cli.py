"""The ``apigw-mw`` command.

Subcommands live in :mod:`apigw_mw.commands`, one module each, exposing
``register(subparsers)`` which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._version import __version__

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("demo", "keys", "check")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apigw-mw",
        description="AWS API Gateway's request policies for any Python web app.",
    )
    parser.add_argument("--version", action="version", version=f"apigw-mw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"apigw_mw.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"apigw_mw.commands.{name}":
                raise  # a command's own import failed: say so rather than hide the command
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``apigw-mw`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
