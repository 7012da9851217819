"""What every stage notebook calls: set-up, output locations, progress policy, final checks,
and the checks of the committed notebooks themselves.

A stage notebook reads::

    # parameters (tagged cell; plain literals only: papermill replaces them)
    profile = "tiny"
    config_file = None
    force = False

    cfg = notebook.setup(profile, config_file)   # config, seeds, matplotlib, notes as output
    figures = notebook.figures_dir(cfg)
    results = run_jobs(cfg, table1.jobs(cfg))    # its study (promu_lib.studies.table1)
    out = table1.run(cfg, results, figures)
    out.show()
    notebook.expect_outputs(studies.products(table1, figures))  # every promised product

Progress policy: one reading of ``PROMU_PROGRESS`` for the whole project, in
:mod:`promu_lib.progress` (:func:`progress_enabled` and :func:`progress` here are its notebook
face). Bars when someone watches (JupyterLab, a terminal), a line every ~10% otherwise (a
kernel run by papermill, nbclient, pytest or ``promu run``), so executed notebooks and logs
stay short but still show progress (papermill #765, #617).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from promu_lib import paths
from promu_lib.config import Config, load_config
from promu_lib.io import atomic_write_text
from promu_lib.progress import BATCH_PARENTS as BATCH_PARENTS  # re-exported
from promu_lib.progress import bars_enabled, iterate
from promu_lib.progress import log_every as log_every  # re-exported
from promu_lib.progress import under_batch_executor as under_batch_executor  # re-exported

if TYPE_CHECKING:
    pass

T = TypeVar("T")

KERNEL_NAME = "python3"
PARAMETERS_TAG = "parameters"

# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------


def matplotlib_defaults() -> None:
    """Readable figures: larger fonts, no top/right spines, 150 dpi when saved."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )


def setup(profile: str = "tiny", config_file: str | None = None, seed: int | None = None) -> Config:
    """Load the config (``config_file`` when given, else ``profile``), seed everything with
    ``seed`` (default: the config's first seed), set matplotlib defaults; return the config."""
    from promu_lib.train.common import seed_everything  # on first use: torch is heavy

    cfg = load_config(profile, file=config_file) if config_file else load_config(profile)
    seed = cfg.run.seeds[0] if seed is None else seed
    seed_everything(seed, cfg.run.deterministic)
    matplotlib_defaults()
    notes_as_output()
    source = config_file or f"profile {cfg.profile!r}"
    bars = "bars" if progress_enabled(cfg) else "a line every ~10% (PROMU_PROGRESS=1 for bars)"
    print(f"[promu] profile {cfg.profile}, seed {seed}, config from {source}; progress: {bars}")
    print(f"[promu] data {paths.resolve(cfg.data_root())}, figures {figures_dir(cfg)}")
    return cfg


def notes_as_output() -> None:
    """The library's logged notes (posts truncated at ``data.max_len``, workers capped at the
    cores) as plain ``[promu]`` lines of the cell's output instead of a warning block: each says
    what happened and which setting changes it. Python warnings (a collapsing run) still show
    as warnings. Only in a Jupyter kernel (elsewhere logging is the caller's to set up)."""
    import logging
    import sys

    from promu_lib.progress import in_kernel

    log = logging.getLogger("promu_lib")
    if in_kernel() and not any(getattr(h, "promu_notes", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.promu_notes = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("[promu] note: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def figures_dir(cfg: Config) -> Path:
    """Where figures and tables of ``cfg`` go (created), resolved from the project root."""
    d = paths.resolve(cfg.run.figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d


def expect_outputs(paths_: Iterable[str | Path]) -> None:
    """Raise ``AssertionError`` naming every promised product that is missing or empty (a file
    of 0 bytes, or a directory with no file); print what was checked."""
    checked, problems = [], []
    for p in map(Path, paths_):
        checked.append(p)
        if p.is_dir():
            if not any(q.is_file() for q in p.rglob("*")):
                problems.append(f"{p}: directory holds no file")
        elif not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size == 0:
            problems.append(f"{p}: empty (0 bytes)")
    if not checked:
        raise AssertionError("expect_outputs got no path: a stage must promise some output")
    if problems:
        raise AssertionError("promised outputs are missing or empty:\n  " + "\n  ".join(problems))
    print(f"[promu] all {len(checked)} promised outputs exist and are non-empty:")
    for p in checked:
        print(f"  {p}")


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


# The policy and its helpers live in promu_lib.progress (``BATCH_PARENTS``, ``log_every`` and
# ``under_batch_executor`` are re-exported from there); these two read a config.


def progress_enabled(cfg: Config | None = None) -> bool:
    """Whether to draw progress bars: ``promu_lib.progress.bars_enabled`` with
    ``cfg.run.progress`` as the caller's switch (see the module docstring for the policy)."""
    return bars_enabled(cfg is None or cfg.run.progress)


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    cfg: Config | None = None,
    lines: int = 10,
) -> Iterator[T]:
    """A tqdm bar when :func:`progress_enabled`, else a line every ``total / lines`` steps."""
    return iterate(iterable, total, desc, progress_enabled(cfg), lines)


# ---------------------------------------------------------------------------------------------
# Writing and checking the committed notebooks
# ---------------------------------------------------------------------------------------------


def strip_outputs(path: str | Path) -> bool:
    """Remove outputs, execution counts, execution metadata and papermill's injected
    parameters cell in place; True if the file changed."""
    import nbformat

    path = Path(path)
    before = path.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata["language_info"] = {"name": "python"}  # no python version: no diff per machine
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        for key in ("papermill", "execution", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    after = nbformat.writes(nb) + "\n"
    if after != before:
        atomic_write_text(path, after)
    return after != before


def parameter_problems(source: str) -> list[str]:
    """Why a ``parameters`` cell is not plain literal assignments (empty list when it is)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return [f"syntax error: {e}"]
    problems = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            problems.append(f"line {node.lineno}: not a single assignment")
        elif not isinstance(node.targets[0], ast.Name):
            problems.append(f"line {node.lineno}: target is not a plain name")
        else:
            try:
                ast.literal_eval(node.value)
            except ValueError:
                problems.append(f"line {node.lineno}: {node.targets[0].id} is not a plain literal")
    return problems


def notebook_problems(path: str | Path) -> list[str]:
    """Everything that keeps a committed notebook from being clean and papermill-ready."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    problems = []
    if nb.metadata.get("kernelspec", {}).get("name") != KERNEL_NAME:
        problems.append(f"kernelspec name is not {KERNEL_NAME!r}")
    params = [c for c in nb.cells if PARAMETERS_TAG in c.metadata.get("tags", [])]
    if len(params) != 1:
        problems.append(f"{len(params)} cells tagged {PARAMETERS_TAG!r}; expected exactly 1")
    for cell in params:
        if cell.cell_type != "code":
            problems.append("the parameters cell is not a code cell")
        problems += [f"parameters cell: {p}" for p in parameter_problems(cell.source)]
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i} has outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i} has an execution count")
    return problems


def notebook_parameters(path: str | Path) -> dict[str, Any]:
    """The literal values of a notebook's ``parameters`` cell."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if PARAMETERS_TAG in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body}  # type: ignore[attr-defined]
    return {}
