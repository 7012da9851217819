"""Where each file of a data directory lives.

The default layout mirrors the reference repositories (HVPNeT's ``data/``), renamed only where
their names were accidents::

    <root>/twitter2015/{train,valid,test}.txt      <root>/twitter2015_images/<img_id>.jpg
    <root>/twitter2017/{train,valid,test}.txt      <root>/twitter2017_images/<img_id>.jpg
    <root>/mnre/ours_{train,val,test}.txt          <root>/mnre_images/{train,val,test}/<img_id>
    <root>/mnre/ours_rel2id.json
    <root>/pretrain/captions.jsonl                 <root>/pretrain/images/<image>
    <root>/boxes/<dataset>.json                    {img_id: [[x1, y1, x2, y2, score, class], ...]}
    <root>/<dataset>_<split>_crops.json            optional: {img_id: [crop image paths]}
    <root>/truth/<dataset>_<split>.jsonl           toy world only: what the generator knows

Every directory name comes from :class:`promu_lib.config.DataConfig`, so a real download in
another layout is pointed to by config, never by moving files. ``DataLayout.of(cfg)`` is the
layout of a config's data directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promu_lib.config import Config, ConfigError, DataConfig

NER_DATASETS: tuple[str, ...] = ("twitter2015", "twitter2017")
DATASETS: tuple[str, ...] = (*NER_DATASETS, "mnre")
SPLITS: tuple[str, ...] = ("train", "dev", "test")

# split name -> file stem, per dataset family
_TWITTER_SPLIT_FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}
_MNRE_SPLIT_FILES = {"train": "ours_train.txt", "dev": "ours_val.txt", "test": "ours_test.txt"}
# the original MNRE release names (one has a space before the dot)
MNRE_ORIGINAL_SPLIT_FILES = {
    "train": "mnre_train.txt",
    "dev": "mnre_val .txt",
    "test": "mnre_test.txt",
}
_MNRE_IMAGE_SPLIT_DIRS = {"train": "train", "dev": "val", "test": "test"}


@dataclass(frozen=True)
class DataLayout:
    root: Path
    data: DataConfig

    @classmethod
    def of(cls, cfg: Config) -> DataLayout:
        """The layout of ``cfg``'s data directory (resolved against the project root)."""
        return cls(root=cfg.data_root(), data=cfg.data)

    # -- MNER ---------------------------------------------------------------------------------
    def twitter_split(self, dataset: str, split: str) -> Path:
        return self.root / getattr(self.data, f"{dataset}_dir") / _TWITTER_SPLIT_FILES[split]

    def twitter_image_dir(self, dataset: str) -> Path:
        return self.root / getattr(self.data, f"{dataset}_images")

    # -- MRE ----------------------------------------------------------------------------------
    def mnre_split(self, split: str) -> Path:
        """``ours_<split>.txt``, or the original release name when only that one exists."""
        ours = self.root / self.data.mnre_dir / _MNRE_SPLIT_FILES[split]
        original = self.root / self.data.mnre_dir / MNRE_ORIGINAL_SPLIT_FILES[split]
        return original if (not ours.exists() and original.exists()) else ours

    def mnre_image_dir(self, split: str) -> Path:
        return self.root / self.data.mnre_images / _MNRE_IMAGE_SPLIT_DIRS[split]

    def rel2id(self) -> Path:
        return self.root / self.data.mnre_dir / "ours_rel2id.json"

    # -- any dataset --------------------------------------------------------------------------
    def split_file(self, dataset: str, split: str) -> Path:
        return self.mnre_split(split) if dataset == "mnre" else self.twitter_split(dataset, split)

    def image_dir(self, dataset: str, split: str) -> Path:
        if dataset == "mnre":
            return self.mnre_image_dir(split)
        return self.twitter_image_dir(dataset)

    def image_name(self, dataset: str, img_id: str) -> str:
        """Twitter ids carry no extension (``<id>.jpg``); MNRE ids are file names."""
        return img_id if dataset == "mnre" else f"{img_id}.jpg"

    # -- pre-training and mining --------------------------------------------------------------
    def captions(self) -> Path:
        return self.root / self.data.captions_file

    def caption_image_dir(self) -> Path:
        return self.root / self.data.captions_images

    def boxes(self, dataset: str) -> Path:
        """Object boxes of one dataset (``pretrain`` for the caption corpus), keyed by image id."""
        return self.root / self.data.boxes_dir / f"{dataset}.json"

    def crops_index(self, dataset: str, split: str) -> Path:
        """The crops index of one split (``data.crops_index``; ``promu data convert-crops``
        writes it): ``{img_id: [crop paths relative to the index's directory]}``."""
        try:
            name = self.data.crops_index.format(dataset=dataset, split=split)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"data.crops_index: {self.data.crops_index!r} is not a path template ({e}); "
                "expected a path with {dataset} and {split}, e.g. '{dataset}_{split}_crops.json'"
            ) from None
        return self.root / name

    def truth(self, dataset: str, split: str) -> Path:
        return self.root / "truth" / f"{dataset}_{split}.jsonl"
