"""One process at a time per output directory: an exclusive ``fcntl.flock`` on a lock file.

Every command that writes a run directory (fine-tuning, pre-training, mining, export, the stage
runner) holds :func:`dir_lock` while it works. A second process on the same directory prints
one line saying who holds it, waits, and then finds the finished result (the caller checks its
DONE marker again once it holds the lock). The kernel drops a flock when its holder dies, so a
``kill -9`` never leaves a stale lock behind.

The lock file of a run directory sits beside it (``<parent>/.<name>.lock``) and is removed on
release, so a finished run directory holds only the run's files, and a run that failed before
writing anything leaves nothing. (Removing a lock file is safe here: a waiter that wakes up on a
file already removed opens the new one and locks that instead.) The stage runner keeps its own
``<dir>/.run.lock`` in place (:func:`promu_lib.pipeline.run_lock`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def lock_file_of(directory: str | Path) -> Path:
    """Where the lock of ``directory`` lives: beside it, hidden."""
    directory = Path(directory)
    return directory.parent / f".{directory.name}.lock"


def _holder(fh: IO[str]) -> str:
    fh.seek(0)
    pid = fh.read().strip()
    return f" (pid {pid})" if pid.isdigit() else ""


def _is_current(fh: IO[str], path: Path) -> bool:
    """``fh`` is still the file at ``path`` (not one its last holder removed)."""
    try:
        return os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def hold(lock_path: Path, what: str, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) until the block ends.

    When another process holds it, say so once (``another <what> holds <path> (pid N);
    waiting for it to finish``) and wait. ``remove``: delete the lock file on release.
    """
    if lock_path.parent.exists() and not lock_path.parent.is_dir():  # mkdir says "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(lock_path.parent))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    said = False
    while True:
        fh = open(lock_path, "a+")  # noqa: SIM115 (held open across the yield)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                print(
                    f"[promu] another {what} holds {lock_path}{_holder(fh)}; waiting for it to "
                    "finish",
                    flush=True,
                )
                said = True
            fcntl.flock(fh, fcntl.LOCK_EX)
        if not remove or _is_current(fh, lock_path):
            break
        fh.close()  # its holder removed that file while we waited: lock the current one
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)  # before the unlock: a waiter then sees it is gone
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def dir_lock(directory: str | Path, what: str, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of the run directory ``directory`` (see the module docstring).

    ``enabled=False``: no lock (the ranks of one torchrun job share their run).
    """
    if not enabled:
        yield
        return
    with hold(lock_file_of(directory), what, remove=True):
        yield


def pid_alive(pid: int) -> bool:
    """A process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
