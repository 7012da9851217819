"""One place that decides where things live (never the notebook's working directory)."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout root: ``$PROMU_ROOT``, else the directory holding pyproject.toml above this
    package (editable install), else the current directory."""
    env = os.environ.get("PROMU_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file():
        return here
    return Path.cwd().resolve()


def resolve(path: str | Path) -> Path:
    """A path relative to the project root (absolute paths pass through)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p
