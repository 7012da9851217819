"""HVPNeT's frozen CNN pyramid computed once per split: the same maps, the same training."""

from __future__ import annotations

import warnings

import pytest
import torch
from worlds import toy_cfg

import promu_lib.train.finetune as ft
from promu_lib.data.datasets import load_split, make_loader
from promu_lib.data.tokenizer import build_tokenizer
from promu_lib.data.toyworld import build_toy_world
from promu_lib.guards import image_has_effect
from promu_lib.train.frozen_features import WithPyramid, frozen_pyramid, pyramid_store


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frozen")
    cfg = toy_cfg(tmp, **{"finetune.epochs": 2, "hvpnet.freeze_backbone": True})
    build_toy_world(cfg, progress=False)
    return cfg


@pytest.mark.parametrize("layout", ["paper", "reference"])
def test_the_store_holds_what_the_cnn_computes_per_batch(world, layout):
    cfg = world.replace(**{"hvpnet.layout": layout})
    tok = build_tokenizer(cfg)
    net = ft.build_model(cfg, "re", "hvpnet", tok).eval()
    visual = frozen_pyramid(net)
    assert visual is not None
    ds = load_split(cfg, "mnre", "dev", tok, progress=False)
    loader = make_loader(ds, 2, shuffle=True, seed=3)
    store = pyramid_store(visual, ds, torch.device("cpu"), batch_size=4)
    wrapped = WithPyramid(loader, store)
    assert len(wrapped) == len(loader) and wrapped.dataset is ds
    for batch in wrapped:
        with torch.no_grad():
            direct, _ = visual.features(
                batch["image"], batch["objects"], batch["object_mask"], None
            )
            cached = net(batch)["logits"]
            computed = net(dict(batch, pyramid_features=None))["logits"]
        for got, want in zip(batch["pyramid_features"], direct):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached, computed, atol=1e-5, rtol=1e-5)
    # the guard that zeroes the images must not read the maps of the real ones
    assert image_has_effect(net, next(iter(wrapped)))


def test_training_with_the_store_equals_training_with_the_cnn(world, tmp_path):
    """The same training whether the maps come from the store or the CNN. Not bit-identical:
    the CNN's output moves in the 6th digit with the batch it runs in (another batch of images
    per step), so the losses agree to 1e-3."""
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two epochs: the collapse guard may warn
        for cached in (True, False):
            cfg = world.replace(**{"finetune.cache_frozen_features": cached})
            runs[cached] = ft.finetune(
                cfg, "mnre", "hvpnet", seed=0, out_dir=tmp_path / str(cached)
            )
    a, b = runs[True], runs[False]
    for ha, hb in zip(a["history"], b["history"]):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-3)
    assert len(a["history"]) == len(b["history"]) == 2
    assert frozen_pyramid(torch.nn.Linear(1, 1)) is None  # only HVPNeT with a frozen CNN
    tok = build_tokenizer(world)
    trained_cnn = world.replace(**{"hvpnet.freeze_backbone": False})  # the tiny profile
    assert frozen_pyramid(ft.build_model(trained_cnn, "re", "hvpnet", tok)) is None
