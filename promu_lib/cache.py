"""Stage caching by config hash.

A stage writes into ``<output root>/<stage>/<hash>/`` and, last of all, a ``DONE.json`` marker
holding the resolved config slice and timings. A rerun with the same config finds the marker
and skips the work; an interrupted stage has no marker and is redone (or resumed by the stage
itself from its own checkpoints).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from promu_lib.config import Config, config_hash
from promu_lib.io import atomic_write_json

DONE = "DONE.json"


def stage_dir(cfg: Config, stage: str, *sections: str, extra: Any = None) -> Path:
    """The directory of ``stage`` for the config slice ``sections`` (plus ``extra``)."""
    h = config_hash(cfg, *sections, extra=extra)
    return cfg.output_root() / stage / h


def is_done(directory: str | Path) -> bool:
    return (Path(directory) / DONE).is_file()


def read_done(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / DONE).read_text(encoding="utf-8"))


def mark_done(directory: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write the completion marker (atomically, after every other output of the stage)."""
    payload = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})}
    return atomic_write_json(Path(directory) / DONE, payload)
