"""Mined pseudo-labels as the pre-training data reads them (written by :mod:`promu_lib.mining`).

A finished mining stage directory holds ``labels.safetensors`` (the tensors of
:class:`PseudoLabels`), ``meta.json`` (keys, nouns, relation labels, prompts, settings) and
``DONE.json``; :func:`load_pseudo_labels` reads it back. :func:`harden` gives the one-hot labels
of the hard-label ablation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from promu_lib.cache import is_done
from promu_lib.errors import MissingAssetError

# the tensors of labels.safetensors, in the order the mining stage writes them
TENSORS: tuple[str, ...] = (
    "boxes",
    "object_mask",
    "q_ent",
    "ent_mask",
    "q_rel",
    "rel_mask",
    "image_size",
)
# the lists of meta.json that become fields of PseudoLabels
LISTS: tuple[str, ...] = (
    "keys",
    "nouns",
    "relation_labels",
    "relation_phrases",
    "entity_prompts",
    "relation_prompts",
)


def harden(q: Tensor) -> Tensor:
    """The hard pseudo-label: a one-hot of argmax q (same shape and dtype)."""
    return torch.nn.functional.one_hot(q.argmax(dim=-1), q.shape[-1]).to(q.dtype)


@dataclass
class PseudoLabels:
    """Mined labels, one row per caption image (``keys[i]``, the captions file's image path).

    boxes (N, m, 4) normalised x1, y1, x2, y2 in [0, 1]; object_mask (N, m) real objects;
    q_ent (N, m, M) Eq. 6; ent_mask (N, m) real AND confident; q_rel (N, R) Eq. 9;
    rel_mask (N,) confident; image_size (N, 2) width, height in pixels.
    """

    keys: list[str]
    boxes: Tensor
    object_mask: Tensor
    q_ent: Tensor
    ent_mask: Tensor
    q_rel: Tensor
    rel_mask: Tensor
    image_size: Tensor
    nouns: list[str]
    relation_labels: list[str]
    relation_phrases: list[str]
    entity_prompts: list[str]
    relation_prompts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._row = {k: i for i, k in enumerate(self.keys)}

    def row(self, key: str) -> int:
        """The row of an image key; KeyError names the key."""
        try:
            return self._row[key]
        except KeyError:
            raise KeyError(f"no mined labels for image {key!r}") from None


def load_pseudo_labels(directory: str | Path) -> PseudoLabels:
    """Read a finished mining stage directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not is_done(directory):
        raise MissingAssetError(
            "mined pseudo-labels", str(directory), "Run the mining stage (mine_labels) first."
        )
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    t = load_file(str(directory / "labels.safetensors"))
    return PseudoLabels(
        **{k: t[k] for k in TENSORS},
        **{k: meta.pop(k) for k in LISTS},
        meta=meta,
    )
