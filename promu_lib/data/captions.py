"""The pre-training corpus as tensors: caption-image pairs with their mined pseudo-labels.

Each item is one NewsCLIPpings-style pair (caption, image, matched) joined with the labels
the mining stage computed for that image: its object boxes with soft entity labels q_ent
(Eq. 6) and its image-level soft relation labels q_rel (Eq. 9). Captions are tokenised once
and images decoded once (kept as uint8), so epochs cost no JPEG decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from promu_lib.config import Config
from promu_lib.data.datasets import normalize, to_pixels
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
        # one uint8 tensor per distinct image
        loader = ImageLoader(on_missing=cfg.data.on_missing_image)
        image_dir = layout.caption_image_dir()
        names = sorted({p.image for p in self.pairs})
        self.image_index = {name: i for i, name in enumerate(names)}
        pixels = [
            to_pixels(loader(safe_join(image_dir, name, source)), cfg.data.image_size)
            for name in (
                iterate(names, len(names), "caption images", lines=4) if progress else names
            )
        ]
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
            "boxes": lab.boxes[row],
            "ent_mask": lab.ent_mask[row],
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
    }
    for key in ("image", "boxes", "ent_mask", "q_ent", "q_rel", "rel_mask"):
        batch[key] = torch.stack([it[key] for it in items])
    return batch
