"""The ``promu`` command. Each subcommand lives beside the code it drives and registers itself
through a ``register(subparsers)`` function in one of the modules listed in ``COMMAND_MODULES``."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from promu_lib.errors import PromuError

COMMAND_MODULES: tuple[str, ...] = (
    "promu_lib.pipeline",
    "promu_lib.data.cli",
    "promu_lib.train.cli",
    "promu_lib.train.pretrain",
    "promu_lib.predict",
)


# the output location's fault, not a bug: full disk, read-only, or a file where a directory goes
_STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
}


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
    except OSError as e:
        if e.errno not in _STORAGE_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(
            f"promu: error: {e.strerror}{where} (is the output location a writable directory "
            "with free space?)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("promu: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
