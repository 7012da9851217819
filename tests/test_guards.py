"""Collapsed runs fail loudly (promu_lib.guards), and the same seed gives the same run."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from worlds import toy_cfg

from promu_lib.data.toyworld import build_toy_world
from promu_lib.guards import CollapsedRunError, CollapseWarning, check_dev, one_class
from promu_lib.train.finetune import finetune

torch.set_num_threads(1)


def micro_cfg(tmp, **extra):
    return toy_cfg(tmp, **{"finetune.epochs": 1, **extra})


# -- one class ----------------------------------------------------------------------------------


def _ner(pred, gold):
    return [{"id": f"p{i}", "pred": p, "gold": g} for i, (p, g) in enumerate(zip(pred, gold))]


def test_one_class_names_the_collapse():
    gold = [["B-PER", "O"], ["B-LOC", "I-LOC"]]
    assert "every word is tagged O" in one_class(_ner([["O", "O"]] * 2, gold), "ner")
    assert "every predicted entity is ORG (gold has 2 types)" in one_class(
        _ner([["B-ORG", "O"], ["O", "B-ORG"]], gold), "ner"
    )
    assert one_class(_ner([["B-PER", "O"], ["O", "B-LOC"]], gold), "ner") is None
    assert one_class(_ner([["O", "O"]] * 2, [["O", "O"]] * 2), "ner") is None  # nothing to find
    re_rows = [{"id": "a", "pred": "None", "gold": "None"}, {"id": "b", "pred": "None",
               "gold": "/per/per/couple"}]  # fmt: skip
    assert "every relation predicted is 'None'" in one_class(re_rows, "re")
    re_rows[1]["pred"] = "/per/per/couple"
    assert one_class(re_rows, "re") is None


class Toy(nn.Module):
    """Logits from the text ids and the image mean; ``image_weight=0`` = a dead image path."""

    def __init__(self, image_weight: float) -> None:
        super().__init__()
        self.text = nn.Linear(1, 3)
        self.image = nn.Linear(1, 3)
        nn.init.constant_(self.image.weight, image_weight)
        nn.init.zeros_(self.image.bias)

    def forward(self, batch):
        x = self.text(batch["input_ids"].float().mean(1, keepdim=True))
        return {"logits": x + self.image(batch["image"].mean((1, 2, 3))[:, None])}


def _batch(image_value: float):
    return {
        "input_ids": torch.tensor([[1, 2], [3, 4]]),
        "image": torch.full((2, 3, 4, 4), image_value),
        "objects": torch.zeros(2, 1, 3, 4, 4),
        "ids": ["a@L1", "b@L5"],
    }


HEALTHY = [{"id": "a@L1", "pred": "x", "gold": "x"}, {"id": "b@L5", "pred": "y", "gold": "y"}]


def test_dead_image_path_is_flagged_with_epoch_step_and_posts():
    with pytest.warns(CollapseWarning, match=r"epoch 2 \(step 40\): the images change nothing"):
        flags = check_dev(Toy(0.0), [_batch(0.5)], HEALTHY, "re", epoch=2, step=40)
    assert len(flags) == 1 and "a@L1, b@L5" in flags[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_dev(Toy(1.0), [_batch(0.5)], HEALTHY, "re", epoch=2, step=40) == []
        # a blank-image run is meant to have no image: nothing to flag
        assert check_dev(Toy(0.0), [_batch(0.0)], HEALTHY, "re", epoch=0, step=1,
                         image_mode="blank") == []  # fmt: skip


def test_one_blank_batch_is_flagged_all_blank_stops():
    loader = [_batch(0.5), _batch(0.0)]
    with pytest.warns(CollapseWarning, match="a dev batch has all-zero images"):
        check_dev(Toy(1.0), loader, HEALTHY, "re", epoch=0, step=3)
    with pytest.raises(CollapsedRunError, match=r"epoch 0 \(step 3\): every dev image"):
        check_dev(Toy(1.0), [_batch(0.0)], HEALTHY, "re", epoch=0, step=3)


def test_finetune_stops_when_no_image_was_loaded(tmp_path):
    cfg = micro_cfg(tmp_path, **{"data.on_missing_image": "blank"})
    root = build_toy_world(cfg, progress=False)
    for image in (root / "twitter2015_images").glob("toy_twitter2015_dev_*.jpg"):
        image.unlink()  # "the images were never copied": blanks, counted, but every one of them
    with pytest.raises(CollapsedRunError, match=r"toy_twitter2015_dev_000000@L1.*not loaded"):
        finetune(cfg, "twitter2015", "hvpnet", out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "DONE.json").exists()


# -- determinism --------------------------------------------------------------------------------


def test_same_seed_same_run(tmp_path):
    cfg = micro_cfg(tmp_path, **{"finetune.epochs": 2, "finetune.batch_size": 4})
    build_toy_world(cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)
        runs = [finetune(cfg, "mnre", "hvpnet", seed=3, out_dir=tmp_path / d) for d in "ab"]
        other = finetune(cfg, "mnre", "hvpnet", seed=4, out_dir=tmp_path / "c")
    a, b = ({k: v for k, v in r.items() if k != "seconds"} for r in runs)
    assert a == b and all("flags" in h for h in a["history"])
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in "abc"]
    assert weights[0] == weights[1] and weights[0] != weights[2]
    assert other["history"][0]["train_loss"] != a["history"][0]["train_loss"]
    preds = [(tmp_path / d / "predictions.jsonl").read_text() for d in "ab"]
    assert preds[0] == preds[1]
