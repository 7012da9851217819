"""Readers and writers of the real on-disk formats (see REFERENCE.md for the real files).

Readers validate as they read. Each problem raises one :class:`promu_lib.errors.DataError`
naming the file, the 1-based line (for the JSON boxes file: the line of the image key) and what
was expected. With ``on_bad="skip"`` a bad record is dropped instead, and counted: pass a
:class:`ReadReport` as ``report=`` to get the count and the first messages; a warning is logged
whenever something was skipped. A file with no record at all is always an error.

What is tolerated on purpose, because the real files hold it (counted in ``ReadReport.notes``):
- Twitter: ``I-X`` without a preceding ``B-X`` (186 times in Twitter-2015 train; seqeval's
  default mode reads it as the start of an entity), whitespace-only tokens (one ``\xa0``
  token in Twitter-2015 valid), a missing blank line at the end (the last post is kept),
  ``\r\n`` line ends, a UTF-8 byte-order mark.
- MNRE: unknown extra keys (later copies add ``caption`` and ``entity``), overlapping head and
  tail spans (59 train lines).
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from promu_lib.data.images import name_problem
from promu_lib.data.records import (
    ENTITY_TYPES,
    MNRE_REL2ID,
    MNRE_RELATIONS,
    NER_LABEL_ALIASES,
    NER_TAGS,
    Box,
    CaptionPair,
    NerPost,
    RePost,
    Span,
)
from promu_lib.errors import DataError
from promu_lib.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)

# -- writers ---------------------------------------------------------------------------------


def write_twitter(path: str | Path, posts: Iterable[NerPost], other_as: str = "MISC") -> Path:
    """Write posts in the Twitter-2015/2017 layout: ``IMGID:<id>``, ``token\\tlabel``, blank.

    ``other_as="OTHER"`` writes MISC as OTHER, like the original Twitter-2015 files.
    """
    with atomic_open(path) as fh:
        for post in posts:
            fh.write(f"IMGID:{post.img_id}\n")
            for tok, lab in zip(post.tokens, post.labels):
                if other_as != "MISC" and lab.endswith("-MISC"):
                    lab = lab[:-4] + other_as
                fh.write(f"{tok}\t{lab}\n")
            fh.write("\n")
    return Path(path)


def re_post_to_dict(post: RePost) -> dict:
    return {
        "token": list(post.tokens),
        "h": {"name": post.head.name, "pos": [post.head.start, post.head.end]},
        "t": {"name": post.tail.name, "pos": [post.tail.start, post.tail.end]},
        "img_id": post.img_id,
        "relation": post.relation,
    }


def write_mnre(path: str | Path, posts: Iterable[RePost], style: str = "python") -> Path:
    """One record per line; ``style="python"`` writes dict literals like the real files."""
    if style not in ("python", "json"):
        raise ValueError(f"style must be 'python' or 'json', got {style!r}")
    with atomic_open(path) as fh:
        for post in posts:
            d = re_post_to_dict(post)
            fh.write((repr(d) if style == "python" else json.dumps(d)) + "\n")
    return Path(path)


def write_rel2id(path: str | Path, relations: Sequence[str] = MNRE_RELATIONS) -> Path:
    """The one-line ``ours_rel2id.json`` (``None`` must be id 0)."""
    with atomic_open(path) as fh:
        fh.write(json.dumps({r: i for i, r in enumerate(relations)}))
    return Path(path)


def write_captions(path: str | Path, pairs: Iterable[CaptionPair]) -> Path:
    """Pre-training pairs as JSON lines: ``{"id", "caption", "image", "matched"}``."""
    with atomic_open(path) as fh:
        for p in pairs:
            row = {"id": p.id, "caption": p.caption, "image": p.image, "matched": p.matched}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def write_boxes(path: str | Path, boxes: Mapping[str, Sequence[Box]]) -> Path:
    """Per-image object boxes: ``{image id: [[x1, y1, x2, y2, score, class], ...]}``."""
    return atomic_write_json(path, {k: [b.as_list() for b in v] for k, v in boxes.items()}, None)
