"""Decoded pixels of a split, kept on disk between jobs.

Every fine-tuning job of a stage reads the same splits, and decoding, resizing and cropping a
split's JPEGs took 1-3 s per job on 2 cores (a quarter of a tiny fine-tuning run). The uint8
pixels of a split (image, object crops, object mask, boxes, present flag) are therefore written
once to ``<cache_dir>/<key>.safetensors``, and every later job with the same inputs reads them
in milliseconds. The key hashes everything the pixels depend on: the image settings, the
boxes file (or the crops index and each crop file), and each image file's name, size and
modification time, so replacing an image file gives a new key. Missing images and bad boxes
(when the config tolerates them) are recorded with the pixels, so their counts and warnings
stay the same on a cached read.

:class:`Visual` (one post's pixels) lives here, below ``promu_lib.data.datasets``, which makes
them from an ``ImageSource`` (this module reads only the attributes :class:`Source` names).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from promu_lib.io import atomic_open

VERSION = 1  # bump when the pixels of the same inputs change (transform, crop rules)
_TENSORS = ("image", "objects", "object_mask", "boxes", "present")


@dataclass
class Visual:
    """One post's image inputs before normalisation (uint8 pixels)."""

    image: torch.Tensor  # (3, S, S) uint8
    objects: torch.Tensor  # (m, 3, S, S) uint8
    object_mask: torch.Tensor  # (m,) bool
    boxes: torch.Tensor  # (m, 4) float in [0, 1]
    present: bool  # False = blank (normalises to zeros, no objects)

    @classmethod
    def blank(cls, size: int, m: int) -> Visual:
        return cls(
            torch.zeros(3, size, size, dtype=torch.uint8),
            torch.zeros(m, 3, size, size, dtype=torch.uint8),
            torch.zeros(m, dtype=torch.bool),
            torch.zeros(m, 4),
            False,
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """An item's image tensors, still uint8: ``datasets.collate`` normalises whole batches."""
        return {
            "image": self.image,
            "image_present": torch.tensor(self.present),
            "objects": self.objects,
            "object_mask": self.object_mask,
            "boxes": self.boxes,
        }


class Source(Protocol):
    """What the cache reads of a ``promu_lib.data.datasets.ImageSource``."""

    image_dir: Path
    size: int
    max_objects: int
    transform: str
    suffix: str
    on_missing: str
    on_bad_box: str
    boxes_path: Path | None
    crops: Any  # None, or {img_id: [crop file paths]} (data.objects="crops")
    crops_path: Path | None
    loader: Any  # ImageLoader: its ``blanks`` are saved and restored
    bad_boxes: int


def _stat(path: Path) -> list:
    try:
        st = path.stat()
        return [path.name, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path.name, None, None]  # missing: part of the key too


def cache_key(source: Source, img_ids: Sequence[str]) -> str:
    """A hash of what the pixels of these images depend on (cheap: no file is read)."""
    h = hashlib.sha256()
    settings = {
        "version": VERSION,
        "size": source.size,
        "max_objects": source.max_objects,
        "transform": source.transform,
        "on_missing": source.on_missing,
        "on_bad_box": source.on_bad_box,
        "image_dir": str(source.image_dir.resolve()),
        "boxes": _stat(source.boxes_path) if source.boxes_path and source.max_objects else None,
    }
    crops = source.crops if source.max_objects else None
    if crops is not None:  # only then: the keys of boxes runs stay as they were
        settings["crops"] = _stat(source.crops_path) if source.crops_path else True
    h.update(json.dumps(settings, sort_keys=True).encode())
    for img_id in img_ids:
        h.update(json.dumps(_stat(source.image_dir / (img_id + source.suffix))).encode())
        if crops is not None:
            files = list(crops.get(img_id, ()))[: source.max_objects]
            h.update(json.dumps([[str(p), *_stat(p)[1:]] for p in files]).encode())
    return h.hexdigest()[:20]


def save(path: Path, visuals: Sequence[Visual], source: Source) -> None:
    from safetensors.torch import save

    tensors = {
        "image": torch.stack([v.image for v in visuals]),
        "objects": torch.stack([v.objects for v in visuals]),
        "object_mask": torch.stack([v.object_mask for v in visuals]),
        "boxes": torch.stack([v.boxes for v in visuals]),
        "present": torch.tensor([v.present for v in visuals]),
    }
    meta = {"blanks": json.dumps(source.loader.blanks), "bad_boxes": str(source.bad_boxes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(save(tensors, metadata=meta))


def load(path: Path, source: Source) -> list[Visual] | None:
    """The cached visuals, or None when the file is missing or unreadable (then rebuilt)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in _TENSORS}
    except Exception:  # a truncated or foreign file is a cache miss, never an error
        return None
    source.loader.blanks.update(json.loads(meta.get("blanks", "{}")))
    source.bad_boxes += int(meta.get("bad_boxes", "0"))
    return [
        Visual(t["image"][i], t["objects"][i], t["object_mask"][i], t["boxes"][i], bool(p))
        for i, p in enumerate(t["present"].tolist())
    ]
