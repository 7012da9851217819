"""What every stage notebook calls: set-up, output locations, progress policy, final checks,
and the tools that write and check the committed notebooks themselves.

A stage notebook reads::

    # parameters (tagged cell; plain literals only)
    profile = "tiny"
    config_file = None
    force = False

    cfg = notebook.setup(profile, config_file)   # config, seeds, matplotlib defaults
    ...                                          # a few promu_lib calls, a figure
    notebook.expect_outputs([...])               # last cell: every promised product exists

Progress policy (:func:`progress_enabled`): ``PROMU_PROGRESS=0|1`` in the environment decides
when set. Otherwise bars are off when ``cfg.run.progress`` is false, and off when nobody watches:
in a kernel started by a batch executor (papermill, nbclient/nbconvert, pytest, ``promu run``:
found from the kernel's parent process) and in a plain process whose stderr (where tqdm
draws) is not a terminal.
In JupyterLab and in a terminal they are on. With bars off, :func:`progress` prints a line
every ~10% instead, so executed notebooks and logs stay short but still show progress
(papermill #765, #617: tqdm under papermill floods the output or never updates).
"""

from __future__ import annotations

import ast
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from promu_lib import paths
from promu_lib.config import Config, load_config
from promu_lib.data.layout import DataLayout
from promu_lib.errors import DataError
from promu_lib.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from promu_lib.data.check import DataCheck

T = TypeVar("T")

KERNEL_NAME = "python3"
PARAMETERS_TAG = "parameters"
# Programs (the first arguments of a kernel's parent process) that run notebooks unattended.
BATCH_PARENTS: frozenset[str] = frozenset(
    {"papermill", "pytest", "py.test", "promu", "nbconvert", "jupyter-nbconvert", "jupyter-execute"}
)

# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with ``deterministic`` ask torch for deterministic kernels
    (warn-only, so an op without one still runs on GPU)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


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
    cfg = load_config(profile, file=config_file) if config_file else load_config(profile)
    seed = cfg.run.seeds[0] if seed is None else seed
    seed_everything(seed, cfg.run.deterministic)
    matplotlib_defaults()
    source = config_file or f"profile {cfg.profile!r}"
    bars = "bars" if progress_enabled(cfg) else "a line every ~10% (PROMU_PROGRESS=1 for bars)"
    print(f"[promu] profile {cfg.profile}, seed {seed}, config from {source}; progress: {bars}")
    print(f"[promu] data {paths.resolve(cfg.data_root())}, figures {figures_dir(cfg)}")
    return cfg


def figures_dir(cfg: Config) -> Path:
    """Where figures and tables of ``cfg`` go (created), resolved from the project root."""
    d = paths.resolve(cfg.run.figures_dir)
    d.mkdir(parents=True, exist_ok=True)
    return d


def data_layout(cfg: Config) -> DataLayout:
    """The data directory of ``cfg``, resolved from the project root."""
    return DataLayout(root=paths.resolve(cfg.data_root()), data=cfg.data)


def prepare_data(cfg: Config) -> DataCheck:
    """Build the toy world of a toy profile (kept when already built for this config), then
    check the data directory; print the check and raise ``DataError`` when it fails."""
    from promu_lib.data.check import check_data

    layout = data_layout(cfg)
    if cfg.data.toy is not None:
        from promu_lib.data.toyworld import build_toy_world

        build_toy_world(cfg, progress=progress_enabled(cfg))
    check = check_data(layout)
    print(check)
    if not check.ok:
        raise DataError(layout.root, "; ".join(check.problems), "a complete data directory")
    return check


def write_provenance(cfg: Config, stage: str) -> Path:
    """``<figures>/<stage>.provenance.json``: config, versions, commit and data checksums."""
    from promu_lib.report import provenance

    return atomic_write_json(figures_dir(cfg) / f"{stage}.provenance.json", provenance(cfg))


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


def under_batch_executor() -> bool:
    """True in a kernel run unattended (papermill, nbclient, pytest, ``promu run``)."""
    # program names only (python, script, "-m module"): never a directory that happens to be
    # called "promu"
    return any(Path(arg).name.lower() in BATCH_PARENTS for arg in _parent_argv()[:4])


def progress_enabled(cfg: Config | None = None) -> bool:
    """Whether to draw progress bars (see the module docstring for the policy)."""
    env = os.environ.get("PROMU_PROGRESS", "").strip().lower()
    if env in ("0", "off", "false", "no"):
        return False
    if env in ("1", "on", "true", "yes"):
        return True
    if cfg is not None and not cfg.run.progress:
        return False
    if _in_kernel():
        return not under_batch_executor()
    return sys.stderr.isatty()


def log_every(total: int, lines: int = 10) -> int:
    """Steps between two log lines so that ``total`` steps print about ``lines`` lines."""
    return max(1, -(-int(total) // max(1, lines)))


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    cfg: Config | None = None,
    lines: int = 10,
) -> Iterator[T]:
    """A tqdm bar when :func:`progress_enabled`, else a line every ``total / lines`` steps."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if progress_enabled(cfg):
        from tqdm import tqdm  # the text bar: tqdm.auto needs ipywidgets in a notebook

        yield from tqdm(iterable, total=total, desc=desc, mininterval=0.5)
        return
    every = log_every(total, lines) if total else 100
    t0 = time.perf_counter()
    i = 0
    for i, item in enumerate(iterable, 1):
        yield item
        if i % every == 0 or i == total:
            of = f"/{total}" if total else ""
            print(f"[promu] {desc} {i}{of} ({time.perf_counter() - t0:.1f} s)", flush=True)


# ---------------------------------------------------------------------------------------------
# Writing and checking the committed notebooks
# ---------------------------------------------------------------------------------------------


def write_notebook(path: str | Path, cells: Sequence[tuple[str, str]]) -> Path:
    """Write a clean notebook from ``(kind, source)`` pairs, kind one of ``"markdown"``,
    ``"code"`` or ``"parameters"`` (a code cell tagged ``parameters``); kernelspec ``python3``."""
    import nbformat
    from nbformat import v4

    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        source = source.strip("\n")
        if kind == "markdown":
            nb.cells.append(v4.new_markdown_cell(source))
        elif kind in ("code", PARAMETERS_TAG):
            cell = v4.new_code_cell(source)
            if kind == PARAMETERS_TAG:
                cell.metadata["tags"] = [PARAMETERS_TAG]
            nb.cells.append(cell)
        else:
            raise ValueError(f"cell kind {kind!r}: expected markdown, code or parameters")
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same file
        cell["id"] = f"cell-{i:02d}"
    nbformat.validate(nb)
    return atomic_write_text(path, nbformat.writes(nb) + "\n")


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
