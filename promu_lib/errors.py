"""Errors a user can act on: each names the file, the line and what was expected."""

from __future__ import annotations

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


class CheckpointError(PromuError):
    """A checkpoint is unreadable, truncated, or belongs to another model shape or task."""
