"""Toy worlds for the tests: their sizes as config overrides, and configs rooted in a temp dir.

``toy_cfg(tmp, world(...), **extra)`` is the tiny profile with the data under ``tmp/data``,
runs under ``tmp/runs`` and no progress bars; ``world`` sizes the splits (train, dev, test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promu_lib.config import Config, load_config


def world(
    twitter2015: tuple[int, int, int] = (8, 3, 3),
    twitter2017: tuple[int, int, int] = (5, 2, 2),
    mnre: tuple[int, int, int] = (10, 3, 3),
    mnre_min_per_relation: tuple[int, int, int] = (0, 0, 0),
    captions: int = 8,
    names: int = 12,
) -> dict[str, Any]:
    """Toy-world size overrides (the default: a few dozen images, built in about a second)."""
    return {
        "data.toy.twitter2015_sizes": list(twitter2015),
        "data.toy.twitter2017_sizes": list(twitter2017),
        "data.toy.mnre_sizes": list(mnre),
        "data.toy.mnre_min_per_relation": list(mnre_min_per_relation),
        "data.toy.n_captions": captions,
        "data.toy.n_names": names,
    }


MICRO = world()


def toy_cfg(tmp: Path, sizes: dict[str, Any] | None = None, **extra: Any) -> Config:
    over = {
        "data.root": str(Path(tmp) / "data"),
        "run.output_dir": str(Path(tmp) / "runs"),
        "run.progress": False,
        "run.seeds": [0],  # the mechanics need one seed (the tiny profile has three)
        **(MICRO if sizes is None else sizes),
        **extra,
    }
    return load_config("tiny", overrides=over)
