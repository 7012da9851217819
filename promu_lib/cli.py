"""The ``promu`` command. Each subcommand lives beside the code it drives and registers itself
through a ``register(subparsers)`` function in one of the modules listed in ``COMMAND_MODULES``.

One rule for every command (:func:`promu_lib.errors.run_command`): a bad input ends in one line
``promu: error: <file>[:<line>]: <problem>; expected <what>`` and exit status 1, a bad command
line in exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from promu_lib.errors import run_command

COMMAND_MODULES: tuple[str, ...] = (
    "promu_lib.pipeline",
    "promu_lib.data.cli",
    "promu_lib.detect_command",  # `promu data detect`: after promu_lib.data.cli
    "promu_lib.train.cli",
    "promu_lib.train.pretrain",
    "promu_lib.predict",
)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error (exit status 2, as argparse's own)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"promu: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="promu",
        description="PROMU and HVPNeT for multimodal NER and RE: data, pre-training, "
        "fine-tuning, tables and figures.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
