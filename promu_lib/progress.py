"""Progress reporting: one policy for every loop (training, mining, notebooks, prediction).

The policy (:func:`bars_enabled`) decides between a tqdm bar and plain log lines:

1. ``PROMU_PROGRESS`` in the environment decides when set: ``1``/``on``/``true``/``yes``/``bar``
   draw bars, ``0``/``off``/``false``/``no``/``log`` print log lines instead (any other value
   counts as unset);
2. otherwise the caller's switch (``cfg.run.progress``, a ``show_progress`` argument): off means
   no bars;
3. otherwise bars when somebody watches: in a Jupyter kernel unless a batch executor started it
   (papermill, nbclient/nbconvert, pytest, ``promu run`` / ``./run_all.sh``: found from the
   kernel's parent process), in a plain process when stderr (where tqdm draws) is a terminal.

A bar in a kernel is a widget (``tqdm.auto``, with ipywidgets) so JupyterLab draws it; in a
terminal it is tqdm's text bar. Without bars, nothing carries a carriage return: logs and
executed notebooks hold whole lines only.

Without bars, :func:`iterate` prints a line every ~1/``lines`` of the loop and :class:`Progress`
one every ``log_every`` steps (on stdout in a kernel, so the notebook shows it as plain output,
not as a warning; on stderr elsewhere), so executed notebooks and logs stay short but still
show progress (papermill #765, #617: tqdm under papermill floods the output or never updates).
A :class:`Progress` whose ``enabled`` is false prints nothing at all.

No torch here: notebooks import this module before anything heavy.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV = "PROMU_PROGRESS"
BARS_ON: frozenset[str] = frozenset({"1", "on", "true", "yes", "bar"})
BARS_OFF: frozenset[str] = frozenset({"0", "off", "false", "no", "log"})
# Programs (the first arguments of a kernel's parent process) that run notebooks unattended.
BATCH_PARENTS: frozenset[str] = frozenset(
    {"papermill", "pytest", "py.test", "promu", "nbconvert", "jupyter-nbconvert", "jupyter-execute"}
    | {"promu_lib.pipeline", "promu_lib.cli"}  # `python -m ...`: what ./run_all.sh starts
)


# -- the policy --------------------------------------------------------------------------------


def _parent_argv() -> list[str]:
    """The arguments of the process that started this Jupyter kernel (empty if unknown)."""
    pid = os.environ.get("JPY_PARENT_PID")
    if not pid:
        return []
    try:
        raw = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return []
    return raw.decode(errors="replace").split("\0")


def _in_kernel() -> bool:
    return "ipykernel" in sys.modules and "JPY_PARENT_PID" in os.environ


def in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab's, papermill's, ...)."""
    return _in_kernel()


def under_batch_executor() -> bool:
    """True in a kernel run unattended (papermill, nbclient, pytest, ``promu run``)."""
    # program names only (python, script, "-m module"): never a directory that happens to be
    # called "promu"
    return any(Path(arg).name.lower() in BATCH_PARENTS for arg in _parent_argv()[:4])


def bars_enabled(allowed: bool = True) -> bool:
    """Whether to draw tqdm bars (the module docstring gives the policy); ``allowed`` is the
    caller's switch, overridden only by ``PROMU_PROGRESS``."""
    env = os.environ.get(ENV, "").strip().lower()
    if env in BARS_OFF:
        return False
    if env in BARS_ON:
        return True
    if not allowed:
        return False
    if _in_kernel():
        return not under_batch_executor()
    return sys.stderr.isatty()


def bar_class() -> Any:
    """The tqdm class to draw with: the widget bar in a Jupyter kernel when ipywidgets is
    installed (JupyterLab renders it), tqdm's text bar otherwise."""
    if _in_kernel() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm

        return tqdm
    from tqdm import tqdm

    return tqdm


def log_stream() -> Any:
    """Where log lines go: stdout in a kernel (plain output, not a warning), else stderr."""
    return sys.stdout if _in_kernel() else sys.stderr


def log_every(total: int, lines: int = 10) -> int:
    """Steps between two log lines so that ``total`` steps print about ``lines`` lines."""
    return max(1, -(-int(total) // max(1, lines)))


# -- an iterator -------------------------------------------------------------------------------


def iterate(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    bars: bool | None = None,
    lines: int = 10,
) -> Iterator[T]:
    """``iterable`` with a tqdm bar (``bars``; default :func:`bars_enabled`), else a line on
    stdout every ``total / lines`` items (every 100 when the length is unknown)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if bars_enabled() if bars is None else bars:
        yield from bar_class()(iterable, total=total, desc=desc, mininterval=0.5)
        return
    every = log_every(total, lines) if total else 100
    t0 = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        if i % every == 0 or i == total:
            of = f"/{total}" if total else ""
            print(f"[promu] {desc} {i}{of} ({time.perf_counter() - t0:.1f} s)", flush=True)


# -- a bar for training loops ------------------------------------------------------------------


class Progress:
    """Steps of a training loop: a tqdm bar (:func:`bars_enabled`), else one line every
    ``log_every`` steps (:func:`log_stream`); nothing at all when ``enabled`` is false. A context
    manager (closes the bar on exit); ``initial`` is the step a resumed run starts from."""

    def __init__(
        self, total: int, desc: str, enabled: bool, log_every: int, initial: int = 0
    ) -> None:
        self.total, self.desc, self.log_every = total, desc, max(1, log_every)
        self.n, self.start = initial, time.perf_counter()
        self.bar: Any = None
        if enabled and bars_enabled():
            self.bar = bar_class()(total=total, initial=initial, desc=desc, dynamic_ncols=True)
        self.log = enabled and self.bar is None

    def update(self, **postfix: float) -> None:
        """One step done; ``postfix`` (loss, lr, ...) is shown beside the bar or in the line."""
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif self.log and (self.n % self.log_every == 0 or self.n == self.total):
            self.write(
                f"{self.desc} step {self.n}/{self.total} "
                + " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
                + f" ({time.perf_counter() - self.start:.0f}s)"
            )

    def write(self, line: str) -> None:
        """A message that does not break the bar (:func:`log_stream`; nothing when disabled)."""
        if self.bar is not None:
            self.bar.write(line)
        elif self.log:
            print(line, file=log_stream(), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
