"""The pre-training corpus as tensors: caption-image pairs with their mined pseudo-labels.

Each item is one NewsCLIPpings-style pair (caption, image, matched) joined with the labels
the mining stage computed for that image: its object boxes with soft entity labels q_ent
(Eq. 6) and its image-level soft relation labels q_rel (Eq. 9). Captions are tokenised once
and images decoded once (kept as uint8), so epochs cost no JPEG decoding.

Images go through ``data.image_transform``, as in fine-tuning, and the mined boxes (normalised
in the original image) through the same transform; an object the centre crop cuts off loses
its COE label. Each item also names its image and caption (``image_id``: one per distinct
image file, ``caption_id``: one per distinct caption text), so that in-batch ITM negatives can
avoid true matches (a falsified pair reuses another pair's image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from promu_lib.config import Config
from promu_lib.data.datasets import normalize, to_pixels, transform_boxes
from promu_lib.data.formats import read_captions
from promu_lib.data.images import ImageLoader, safe_join
from promu_lib.data.layout import DataLayout
from promu_lib.data.pseudo_labels import PseudoLabels, harden
from promu_lib.progress import iterate


class CaptionDataset(Dataset):
    """Pairs of ``layout.captions()`` with their pseudo-labels.

    ``soft=False`` turns q_ent and q_rel into one-hot argmax labels (the hard-label ablation).
    """

    def __init__(
        self,
        cfg: Config,
        tokenizer: PreTrainedTokenizerBase,
        labels: PseudoLabels,
        soft: bool = True,
        progress: bool = True,
    ) -> None:
        layout = DataLayout.of(cfg)
        source = layout.captions()
        self.pairs = read_captions(source)
        self.pad_id = tokenizer.pad_token_id or 0
        enc = tokenizer(
            [p.caption for p in self.pairs], truncation=True, max_length=cfg.data.max_len
        )
        self.input_ids = [torch.tensor(ids) for ids in enc["input_ids"]]
        self.rows = torch.tensor([labels.row(p.image) for p in self.pairs])
        self.q_ent = labels.q_ent if soft else harden(labels.q_ent)
        self.q_rel = labels.q_rel if soft else harden(labels.q_rel)
        self.labels = labels
        captions = {c: i for i, c in enumerate(sorted({p.caption for p in self.pairs}))}
        self.caption_of = torch.tensor([captions[p.caption] for p in self.pairs])
        # one uint8 tensor per distinct image, made as fine-tuning makes its images
        size, transform = cfg.data.image_size, cfg.data.image_transform
        loader = ImageLoader(on_missing=cfg.data.on_missing_image)
        image_dir = layout.caption_image_dir()
        names = sorted({p.image for p in self.pairs})
        self.image_index = {name: i for i, name in enumerate(names)}
        self.boxes, self.ent_mask = labels.boxes.clone(), labels.ent_mask.clone()
        pixels = []
        for name in iterate(names, len(names), "caption images", lines=4) if progress else names:
            image = loader(safe_join(image_dir, name, source))
            pixels.append(to_pixels(image, size, transform))
            row = labels.row(name)
            boxes, keeps_area = transform_boxes(labels.boxes[row], *image.size, size, transform)
            self.boxes[row] = boxes
            self.ent_mask[row] &= keeps_area
        self.pixels = torch.stack(pixels)  # (N_images, 3, S, S) uint8
        self.image_of = torch.tensor([self.image_index[p.image] for p in self.pairs])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.rows[index])
        lab = self.labels
        return {
            "id": self.pairs[index].id,
            "input_ids": self.input_ids[index],
            "image": normalize(self.pixels[int(self.image_of[index])]),
            "matched": self.pairs[index].matched,
            "image_id": int(self.image_of[index]),
            "caption_id": int(self.caption_of[index]),
            "boxes": self.boxes[row],
            "ent_mask": self.ent_mask[row],
            "q_ent": self.q_ent[row],
            "q_rel": self.q_rel[row],
            "rel_mask": lab.rel_mask[row],
        }


def collate_captions(items: Sequence[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    ids = torch.nn.utils.rnn.pad_sequence(
        [it["input_ids"] for it in items], batch_first=True, padding_value=pad_id
    )
    lengths = torch.tensor([len(it["input_ids"]) for it in items])
    batch: dict[str, Any] = {
        "ids": [it["id"] for it in items],
        "input_ids": ids,
        "attention_mask": (torch.arange(ids.shape[1]) < lengths[:, None]).long(),
        "matched": torch.tensor([it["matched"] for it in items]),
        "image_id": torch.tensor([it["image_id"] for it in items]),
        "caption_id": torch.tensor([it["caption_id"] for it in items]),
    }
    for key in ("image", "boxes", "ent_mask", "q_ent", "q_rel", "rel_mask"):
        batch[key] = torch.stack([it[key] for it in items])
    return batch
