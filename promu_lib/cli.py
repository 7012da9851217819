"""The ``promu`` command. Each subcommand lives beside the code it drives and registers itself
through a ``register(subparsers)`` function in one of the modules listed in ``COMMAND_MODULES``."""

from __future__ import annotations

import argparse
import importlib
import sys

from promu_lib.errors import PromuError

COMMAND_MODULES: tuple[str, ...] = (
    "promu_lib.pipeline",
    "promu_lib.data.cli",
    "promu_lib.train.cli",
    "promu_lib.train.pretrain",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    try:
        return int(args.func(args) or 0)
    except PromuError as e:
        print(f"promu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
