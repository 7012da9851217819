"""One module per artifact of the papers and of this companion: its rows, its jobs, its table or
figure, its claims, and the model-inspection helpers only it uses.

A study module defines::

    NOTEBOOK = "04_table1.ipynb"   # its notebook (in notebooks/, or an absolute path)
    TITLE = "Table 1: ..."          # one line for the index page
    READER = True                   # needs only trained jobs: may run beside another reader
    TABLES = ("table1",)            # what run() writes: <name>.csv/.md/.config.json
    FIGURES = ("table1_f1",)        #                    <name>.png/.pdf
    CLAIMS_TABLE = "table1_claims"  #                    <name>.csv/.md (optional)

    def jobs(cfg, **params) -> list[Job]            # what it trains (optional)
    def run(cfg, results, out_dir, **params) -> Outputs

The stage name is the module's last name (``table1``). ``jobs`` and ``run`` take the notebook's
parameters as keywords with the same defaults (``None``: the profile's scope), so the
pipeline's training plan (``{study: study.jobs(cfg)}``) is exactly what the notebook asks
for. The notebook calls ``results = run_jobs(cfg, study.jobs(cfg, ...))`` and
``study.run(cfg, results, figures, ...)``, and shows what it returns.

Adding a study ("Table 4") is one module here plus one notebook. Studies outside this package
are picked up from ``$PROMU_STUDIES`` (comma-separated importable module names). The pipeline
runs the studies in the order of their notebooks' file names.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from promu_lib import paths

ENV_EXTRA = "PROMU_STUDIES"


@dataclass(frozen=True)
class Study:
    """A study module as the pipeline sees it."""

    name: str
    module: ModuleType

    @property
    def notebook(self) -> Path:
        return paths.resolve("notebooks") / self.module.NOTEBOOK

    @property
    def title(self) -> str:
        return self.module.TITLE

    @property
    def reader(self) -> bool:
        return bool(getattr(self.module, "READER", False))

    @property
    def source(self) -> Path:
        return Path(self.module.__file__)

    def jobs(self, cfg: Any) -> list[Any]:
        """The jobs of the study's notebook at its default parameters (none if it trains none)."""
        fn = getattr(self.module, "jobs", None)
        return list(fn(cfg)) if fn is not None else []

    def products(self, out_dir: str | Path) -> list[Path]:
        return products(self.module, out_dir)


def products(module: ModuleType, out_dir: str | Path) -> list[Path]:
    """Every file a study's ``run`` promises under ``out_dir``."""
    d = Path(out_dir)
    tables = [d / f"{t}{ext}" for t in module.TABLES for ext in (".csv", ".md", ".config.json")]
    claims = getattr(module, "CLAIMS_TABLE", None)
    tables += [d / f"{claims}{ext}" for ext in (".csv", ".md")] if claims else []
    return tables + [d / f"{f}{ext}" for f in module.FIGURES for ext in (".png", ".pdf")]


def _is_study(module: ModuleType) -> bool:
    return all(hasattr(module, a) for a in ("NOTEBOOK", "TITLE", "run"))


def discover() -> list[Study]:
    """Every study: the modules of this package that define one, then those named in
    ``$PROMU_STUDIES``; ordered by notebook file name."""
    names = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)]
    names += [n.strip() for n in os.environ.get(ENV_EXTRA, "").split(",") if n.strip()]
    found = []
    for name in names:
        module = importlib.import_module(name)
        if _is_study(module):
            found.append(Study(name.rsplit(".", 1)[-1], module))
    return sorted(found, key=lambda s: Path(s.module.NOTEBOOK).name)
