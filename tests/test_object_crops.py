"""``data.objects=crops``: HVPNeT's released crop images as a post's objects, as they are.

A toy world is copied into HVPNeT's release layout (``hvpnet_release``: crop PNGs named
``<img>_pred_yolo_crop_<n>.png``, dicts saved with ``torch.save``, MRE keyed by line index),
converted by the README's ``convert-crops`` calls, and fine-tuned with HVPNeT on it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hvpnet_release import HV_SPLIT, NER, hvpnet_release, release_config_values
from PIL import Image, ImageOps
from worlds import toy_cfg

import promu_lib.train.finetune as ft
from promu_lib.cli import main
from promu_lib.config import ConfigError
from promu_lib.data.check import check_data
from promu_lib.data.crops import read_crops
from promu_lib.data.datasets import collate, load_split, to_pixels
from promu_lib.data.images import load_image
from promu_lib.data.layout import DataLayout
from promu_lib.data.tokenizer import build_tokenizer
from promu_lib.data.toyworld import build_toy_world
from promu_lib.jobs import Finetune, Pretrain, run_jobs
from promu_lib.models.registry import MODELS, ModelSpec, hvpnet_backbone, register

torch.set_num_threads(1)


def convert_all(dest) -> None:
    """The README's recipe: for each split, one NER call per Twitter set and one MRE call."""
    for ours, hv in HV_SPLIT.items():
        for t in NER:
            argv = ["data", "convert-crops",
                    "--pth", f"{dest}/NER_data/{t}/{t}_{hv}_dict.pth",
                    "--crops-dir", f"{dest}/NER_data/{t}_aux_images/{hv}/crops",
                    "--out", f"{dest}/{t}_{ours}_crops.json"]  # fmt: skip
            assert main(argv) == 0
        mre = "dev" if ours == "dev" else ours
        argv = ["data", "convert-crops", "--task", "re",
                "--pth", f"{dest}/RE_data/txt/mre_{mre}_dict.pth",
                "--crops-dir", f"{dest}/RE_data/img_vg/{hv}/crops",
                "--split-file", f"{dest}/RE_data/txt/ours_{hv}.txt",
                "--out", f"{dest}/mnre_{ours}_crops.json"]  # fmt: skip
        assert main(argv) == 0


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crops")
    toy = toy_cfg(tmp / "toy")
    build_toy_world(toy, progress=False)
    dest = hvpnet_release(toy, tmp / "HVPNeT" / "data")
    (dest / "RE_data" / "txt" / "ours_rel2id.json").symlink_to("../ours_rel2id.json")
    convert_all(dest)
    values = {**release_config_values(dest), "data.objects": "crops", "finetune.epochs": 1,
              "run.output_dir": str(tmp / "runs")}  # fmt: skip
    return toy_cfg(tmp / "toy", **values)


@pytest.mark.parametrize("dataset", ["twitter2015", "mnre"])
def test_each_post_gets_its_crops_in_index_order_and_padded_slots(release, dataset):
    cfg = release.replace(**{"data.cache_images": False})
    ds = load_split(cfg, dataset, "train", build_tokenizer(cfg), progress=False)
    index = read_crops(DataLayout.of(cfg).crops_index(dataset, "train"))
    m, size = cfg.data.max_objects, cfg.data.image_size
    seen = {0: 0, m: 0}
    for i, post in enumerate(ds.posts):
        v = ds.visual(i)
        files = index.get(post.img_id, [])[:m]
        assert v.object_mask.tolist() == [k < len(files) for k in range(m)]
        for k, path in enumerate(files):  # the crop file itself, with the image's transform
            assert torch.equal(v.objects[k], to_pixels(load_image(path), size, "resize"))
        assert not v.objects[len(files) :].any() and not v.boxes.any()  # no positions
        if len(files) in seen:
            seen[len(files)] += 1
    assert seen[0] >= 1 and seen[m] >= 1  # a post without crops; one with more than m listed
    assert any(len(v) > m for v in index.values())


def test_hvpnet_finetunes_on_the_release_layout_and_its_crops_reach_the_logits(release, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch: the collapse guard may warn
        metrics = ft.finetune(release, "twitter2015", "hvpnet", seed=0, out_dir=tmp_path / "run")
    assert len(metrics["history"]) == 1
    cfg = release  # data.cache_images: the pixel cache must see the crop change too
    tok = build_tokenizer(cfg)
    net = ft.build_model(cfg, "ner", "hvpnet", tok).eval()

    def logits():
        ds = load_split(cfg, "twitter2015", "dev", tok, progress=False, pixel_cache_dir=tmp_path)
        batch = collate([ds[i] for i in range(len(ds))], ds.pad_id)
        with torch.no_grad():
            return ds, batch, net(batch)["logits"]

    ds, batch, before = logits()
    index = read_crops(DataLayout.of(cfg).crops_index("twitter2015", "dev"))
    j = next(i for i, p in enumerate(ds.posts) if index.get(p.img_id))
    empty = [i for i, p in enumerate(ds.posts) if not index.get(p.img_id)]
    assert empty and not batch["object_mask"][empty].any()  # padded slots only
    assert not batch["objects"][empty].any()
    path = index[ds.posts[j].img_id][0]
    with Image.open(path) as im:  # perturb the first crop of post j
        ImageOps.invert(im.convert("RGB")).save(path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    _, _, after = logits()
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # a new key, not the stale pixels
    changed = (before - after).abs().flatten(1).amax(1) > 1e-6
    assert changed[j] and changed.sum() == 1  # that post, and only that post


def test_models_that_read_boxes_refuse_crops_at_once(release, tmp_path):
    spec = register(ModelSpec(name="boxy", sees_image=True, variant=None, reads_boxes=True,
                              build_backbone=hvpnet_backbone, summary="reads boxes"))  # fmt: skip
    try:
        with pytest.raises(ConfigError, match="model 'boxy' reads the objects' boxes"):
            ft.finetune(release, "twitter2015", spec.name, out_dir=tmp_path / "boxy")
    finally:
        del MODELS[spec.name]
    assert not (tmp_path / "boxy").exists()
    with pytest.raises(ConfigError, match="PROMU's COE"):  # before any mining or training
        run_jobs(release, [Finetune("twitter2015", "promu", init=Pretrain())], workers=1)
    assert not (release.output_root()).exists()
    no_coe = release.replace(**{"pretrain.lambda_coe": 0.0})
    from promu_lib.train.pretrain import check_objects

    check_objects(no_coe)  # without COE, nothing needs a position
    assert not any(s.reads_boxes for s in MODELS.values())  # every built-in model takes crops


def test_data_check_reports_each_crops_index(release, tmp_path):
    layout = DataLayout.of(release)
    report = check_data(layout, ("mnre",), captions=False)
    crops = [f for f in report.files if f.kind == "crops"]
    assert report.ok and [f.name for f in crops] == ["mnre/train", "mnre/dev", "mnre/test"]
    assert all(f.summary["crops"] > 0 and f.summary["missing_files"] == 0 for f in crops)
    assert "mnre_dev_crops.json  images" in str(report)
    index = layout.crops_index("mnre", "test")
    moved = tmp_path / "index.json"
    index.rename(moved)
    try:
        missing = check_data(layout, ("mnre",), captions=False)
    finally:
        moved.rename(index)
    assert not missing.ok and f"{index} not found (data.objects=crops)" in missing.problems[0]
    boxes_only = DataLayout(layout.root, release.replace(**{"data.objects": "boxes"}).data)
    assert check_data(boxes_only, ("mnre",), captions=False).ok  # present: reported, optional
