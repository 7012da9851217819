"""Errors a user can act on: each names the file, the line and what was expected."""

from __future__ import annotations

import errno
import reprlib
import sys
from collections.abc import Callable
from pathlib import Path


class PromuError(Exception):
    """Base class of every error the project raises on purpose (the CLI prints these cleanly)."""


class DataError(PromuError):
    """A data file does not hold what its format promises.

    ``str(err)`` reads ``<file>:<line>: <problem>; expected <what>``.
    """

    def __init__(
        self,
        path: str | Path,
        problem: str,
        expected: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        self.expected = expected
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        msg = f"{where}: {problem}"
        if expected:
            msg += f"; expected {expected}"
        super().__init__(msg)

    def __reduce__(self) -> tuple:  # a job's error travels back from its worker process
        return type(self), (self.path, self.problem, self.expected, self.line)


class MissingAssetError(PromuError):
    """Weights, a data set or a package that a configuration needs is not there.

    The message says what is missing, where it looked and how to provide it.
    """

    def __init__(self, what: str, looked: list[str] | str, how: str) -> None:
        looked_list = [looked] if isinstance(looked, str) else list(looked)
        self.what, self.looked, self.how = what, looked_list, how
        super().__init__(
            f"{what} is missing. Looked in: {', '.join(looked_list) or '(nowhere)'}. {how}"
        )

    def __reduce__(self) -> tuple:  # a job's error travels back from its worker process
        return type(self), (self.what, self.looked, self.how)


class CheckpointError(PromuError):
    """A checkpoint is unreadable, truncated, or belongs to another model shape or task."""


class UsageError(PromuError):
    """The command line asks for something impossible (exit status 2, as argparse's errors)."""


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 60, 60, 3
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` in at most ``limit`` characters, in bounded time whatever its size or
    nesting: errors echo what they were given, never a giant value."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# the output location's fault, not a bug: full disk, read-only, or a file where a directory goes
STORAGE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
    }
)
MAX_MESSAGE = 2000  # characters of one error line


def _say(message: str) -> None:
    """One line on stderr: cut to MAX_MESSAGE characters, control characters (a terminal
    escape echoed from an input) written as escapes."""
    line = " ".join(message.split("\n"))
    if len(line) > MAX_MESSAGE:
        line = f"{line[:MAX_MESSAGE]}... ({len(line)} characters)"
    line = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line)
    print(f"promu: error: {line}", file=sys.stderr)


def run_command(command: Callable[[], int | None]) -> int:
    """Run one ``promu`` command: whatever its inputs can raise becomes ONE line ``promu: error:
    <file>[:<line>]: <problem>; expected <what>`` on stderr and exit status 1 (2 for a usage
    error), never a traceback. Anything else is a bug and keeps its traceback."""
    try:
        return int(command() or 0)
    except UsageError as e:
        _say(str(e))
        return 2
    except PromuError as e:
        _say(str(e))
        return 1
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        _say(f"{e.strerror}{where} (is the output location a writable directory with free space?)")
        return 1
    except KeyboardInterrupt:
        print("promu: interrupted", file=sys.stderr)
        return 130
