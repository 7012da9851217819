"""A toy world copied into HVPNeT's data release layout, object crops included.

``hvpnet_release(cfg, dest)`` writes, from the toy world of ``cfg`` (already built)::

    dest/NER_data/twitter2015/{train,valid,test}.txt
    dest/NER_data/twitter2015/twitter2015_{train,val,test}_dict.pth    {"<id>.jpg": [crop names]}
    dest/NER_data/twitter2015_images/<id>.jpg
    dest/NER_data/twitter2015_aux_images/{train,val,test}/crops/<id>_pred_yolo_crop_<n>.png
    (the same for twitter2017)
    dest/RE_data/txt/ours_{train,val,test}.txt
    dest/RE_data/txt/mre_{train,dev,test}_dict.pth      {line index: [crop names]}
    dest/RE_data/img_org/{train,val,test}/<img_id>
    dest/RE_data/img_vg/{train,val,test}/crops/<line>_pred_yolo_crop_<n>.png
    dest/RE_data/ours_rel2id.json

as HVPNeT's ``run.py`` and ``processor/dataset.py`` read them (dicts saved with ``torch.save``,
as the release ships them). The crops are the generator's true objects cut out of the image,
every second post followed by two whole-image crops (more than HVPNeT's 3 are listed); the
first post of each split gets no entry (a post without crops).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from PIL import Image

from promu_lib.config import Config
from promu_lib.data.layout import DataLayout

NER = ("twitter2015", "twitter2017")
HV_SPLIT = {"train": "train", "dev": "val", "test": "test"}  # ours -> HVPNeT's directories
MRE_DICT = {"train": "train", "dev": "dev", "test": "test"}  # mre_<x>_dict.pth
NER_FILE = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}


def _crops(image: Path, objects: list[dict], out_dir: Path, stem: str, extra: bool) -> list[str]:
    """The true objects cut out of ``image``; ``extra``: then the whole image twice (the
    second mirrored), so that more crops are listed than HVPNeT uses."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with Image.open(image) as im:
        im = im.convert("RGB")
    crops = [
        im.crop((int(x1), int(y1), max(int(x2), int(x1) + 1), max(int(y2), int(y1) + 1)))
        for x1, y1, x2, y2 in (o["box"] for o in objects)
    ]
    if extra:
        crops += [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    names = []
    for n, crop in enumerate(crops):
        names.append(f"{stem}_pred_yolo_crop_{n}.png")
        crop.save(out_dir / names[-1])
    return names


def _truth(layout: DataLayout, dataset: str, split: str) -> list[dict]:
    path = layout.truth(dataset, split)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def hvpnet_release(cfg: Config, dest: Path) -> Path:
    """Write the release layout (module docstring) under ``dest``; returns ``dest``."""
    src = DataLayout.of(cfg)
    for dataset in NER:
        text_dir = dest / "NER_data" / dataset
        images = dest / "NER_data" / f"{dataset}_images"
        text_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src.twitter_image_dir(dataset), images, dirs_exist_ok=True)
        for split, hv in HV_SPLIT.items():
            shutil.copy(src.split_file(dataset, split), text_dir / NER_FILE[split])
            crops_dir = dest / "NER_data" / f"{dataset}_aux_images" / hv / "crops"
            crops_dir.mkdir(parents=True, exist_ok=True)
            mapping = {}
            for k, t in enumerate(_truth(src, dataset, split)):
                if k == 0 or f"{t['img_id']}.jpg" in mapping:
                    continue
                image = images / f"{t['img_id']}.jpg"
                mapping[f"{t['img_id']}.jpg"] = _crops(
                    image, t["objects"], crops_dir, t["img_id"], extra=k % 2 == 1
                )
            torch.save(mapping, text_dir / f"{dataset}_{hv}_dict.pth")
    txt = dest / "RE_data" / "txt"
    txt.mkdir(parents=True, exist_ok=True)
    shutil.copy(src.rel2id(), dest / "RE_data" / "ours_rel2id.json")
    for split, hv in HV_SPLIT.items():
        shutil.copy(src.split_file("mnre", split), txt / f"ours_{hv}.txt")
        shutil.copytree(src.mnre_image_dir(split), dest / "RE_data" / "img_org" / hv)
        crops_dir = dest / "RE_data" / "img_vg" / hv / "crops"
        crops_dir.mkdir(parents=True, exist_ok=True)
        mapping = {}
        for i, t in enumerate(_truth(src, "mnre", split)):  # key: 0-based line index
            if i == 0:
                continue
            image = dest / "RE_data" / "img_org" / hv / t["img_id"]
            mapping[i] = _crops(image, t["objects"], crops_dir, str(i), extra=i % 2 == 1)
        torch.save(mapping, txt / f"mre_{MRE_DICT[split]}_dict.pth")
    return dest


def release_config_values(dest: Path) -> dict[str, str]:
    """The data keys of the README's ``mydata.yaml`` for this layout."""
    return {
        "data.root": str(dest),
        "data.twitter2015_dir": "NER_data/twitter2015",
        "data.twitter2015_images": "NER_data/twitter2015_images",
        "data.twitter2017_dir": "NER_data/twitter2017",
        "data.twitter2017_images": "NER_data/twitter2017_images",
        "data.mnre_dir": "RE_data/txt",
        "data.mnre_images": "RE_data/img_org",
    }
