"""Per-model fine-tuning recipes (``finetune.recipes``) and the RE head's learning rate.

The ``paper`` profile gives HVPNeT (and the text-only BERT) the official HVPNeT scripts'
recipe and PROMU its own (PROMU Sec. 5.1); the recipe a job runs is part of its cache key and
of every table caption. The MRE classifier trains at ``finetune.re_head_lr`` (None: the
encoder's lr), not at the CRF's ``head_lr``.
"""

from __future__ import annotations

import pytest
import torch

from promu_lib.config import (
    ConfigError,
    head_lr_of,
    load_config,
    paper,
    recipe_for,
    recipe_of,
    tiny,
)
from promu_lib.models import MODELS, build_task_model
from promu_lib.train.finetune import _start_or_resume, finetune_dir

torch.set_num_threads(1)


def test_paper_profile_gives_hvpnet_its_official_scripts_recipe():
    cfg = paper()
    for model in ("hvpnet", "hvpnet-single", "hvpnet-onlyobj", "bert"):
        ner, re = (recipe_for(cfg, model, t).finetune for t in ("ner", "re"))
        assert (ner.lr, ner.batch_size, ner.epochs, ner.warmup_ratio) == (3e-5, 8, 30, 0.01)
        assert (re.lr, re.batch_size, re.epochs, re.warmup_ratio) == (3e-5, 16, 15, 0.06)
        assert ner.weight_decay == re.weight_decay == 0.01
        assert ner.grad_clip == re.grad_clip == 0.0  # its trainer clips nothing
        assert ner.patience >= ner.epochs and re.patience >= re.epochs  # no early stop
        assert head_lr_of(ner, "ner") == 5e-2  # CRF + fc at 5e-2, NER only
        assert head_lr_of(re, "re") == 3e-5  # the RE classifier at the encoder's lr
    promu = recipe_for(cfg, "promu", "re").finetune  # PROMU Sec. 5.1: lr 1e-4, wd 1e-3, batch 16
    assert (promu.lr, promu.weight_decay, promu.batch_size) == (1e-4, 1e-3, 16)
    assert recipe_for(cfg, "hvpnet", "ner").finetune.recipes == {}  # what ran, nothing else


def test_tiny_keeps_one_shared_recipe():
    cfg = tiny()
    assert cfg.finetune.recipes == {}
    for model in MODELS:
        for task in ("ner", "re"):
            assert recipe_for(cfg, model, task).finetune == cfg.finetune


def test_recipe_is_part_of_the_cache_key_and_only_of_its_own_jobs():
    cfg = paper()
    key = {(d, m): finetune_dir(cfg, d, m, init=None, seed=0, image_mode="true")
           for d in ("twitter2015", "mnre") for m in ("hvpnet", "promu")}  # fmt: skip
    changed = cfg.replace(**{"finetune.recipes.hvpnet/re.lr": 1e-5})
    assert recipe_for(changed, "hvpnet", "re").finetune.lr == 1e-5
    again = {k: finetune_dir(changed, *k, init=None, seed=0, image_mode="true") for k in key}
    assert again[("mnre", "hvpnet")] != key[("mnre", "hvpnet")]
    for k in (("twitter2015", "hvpnet"), ("mnre", "promu"), ("twitter2015", "promu")):
        assert again[k] == key[k], k  # another model's or task's recipe is not in its key
    # the key is the recipe that runs: resolving first changes nothing (idempotent)
    resolved = recipe_for(cfg, "hvpnet", "re")
    assert (
        finetune_dir(resolved, "mnre", "hvpnet", init=None, seed=0, image_mode="true")
        == key[("mnre", "hvpnet")]
    )


def test_recipes_are_validated_and_coerced_like_the_section(tmp_path):
    cfg = paper()
    with pytest.raises(ConfigError, match=r"finetune\.recipes\.hvpnet: unknown config key.*lrr"):
        cfg.replace(**{"finetune.recipes.hvpnet.lrr": 1e-5})
    with pytest.raises(ConfigError, match=r"finetune\.recipes\.hvpnet/xx: expected a model"):
        cfg.replace(**{"finetune.recipes.hvpnet/xx.lr": 1e-5})
    with pytest.raises(ConfigError, match=r"finetune.*batch_size: expected an integer"):
        cfg.replace(**{"finetune.recipes.hvpnet/re.batch_size": 0})
    with pytest.raises(ConfigError, match=r"finetune\.recipes\.promu: .*expected true/false"):
        cfg.replace(**{"finetune.recipes.promu.bf16": "yes"})
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  recipes:\n    promu/re:\n      lr: 3e-5\n", encoding="utf-8")
    loaded = load_config("paper", file=path)  # YAML 1.1 reads 3e-5 as text: coerced on use
    assert recipe_for(loaded, "promu", "re").finetune.lr == 3e-5
    assert recipe_for(loaded, "promu", "ner").finetune.lr == 1e-4


def test_recipe_of_says_what_ran_per_task():
    text = recipe_of(paper(), "hvpnet")
    assert text.startswith("lr 3e-05, head lr 0.05 (NER) / 3e-05 (RE), batch 8 (NER) / 16 (RE)")
    assert "epochs 30 (NER) / 15 (RE)" in text and "early stop none" in text
    assert "lr 0.0001" in recipe_of(paper(), "promu") and "batch 16," in recipe_of(paper(), "promu")
    assert recipe_of(tiny(), "hvpnet") == recipe_of(tiny(), "promu")


def test_table_captions_name_each_models_recipe():
    from promu_lib.studies import hvpnet, table1, table2

    cfg = paper()
    caption = table1.table(cfg, {}, ["mnre"]).caption
    assert f"of bert, hvpnet: {recipe_of(cfg, 'hvpnet')};" in caption
    assert f"of promu: {recipe_of(cfg, 'promu')}." in caption
    assert recipe_of(cfg, "hvpnet") in table2.table(cfg, {}, ["mnre"]).caption
    assert recipe_of(cfg, "hvpnet") in hvpnet.cross_task_table(cfg, {}).caption
    small = table1.table(tiny(), {}, ["mnre"]).caption
    assert f"Fine-tuning recipe of every model: {recipe_of(tiny(), 'hvpnet')}." in small


# -- the task head's learning rate -------------------------------------------------------------


class Tok:
    pad_token_id = 0

    def __len__(self) -> int:
        return 40


def _head_lrs(tmp_path, task: str, **finetune) -> set[float]:
    cfg = tiny()
    cfg.text.hidden_size, cfg.text.intermediate_size, cfg.hvpnet.mid_dim = 16, 32, 8
    f = cfg.replace(**{f"finetune.{k}": v for k, v in finetune.items()}).finetune
    net = build_task_model(cfg, task, "hvpnet", Tok())
    tr = _start_or_resume(net, {"train": [None] * 4}, f, task, tmp_path / "ckpt", 0.0)
    return {g["initial_lr"] for g in tr.optimizer.param_groups if g["name"].startswith("head")}


def test_re_classifier_trains_at_the_encoders_lr_unless_re_head_lr_is_set(tmp_path):
    # tiny: lr 1e-3, head_lr 5e-3. Old code: the RE classifier at head_lr (5e-3) too.
    assert _head_lrs(tmp_path, "re") == {1e-3}
    assert _head_lrs(tmp_path, "re", re_head_lr=2e-4) == {2e-4}
    assert _head_lrs(tmp_path, "ner") == {5e-3}
    assert _head_lrs(tmp_path, "ner", re_head_lr=2e-4) == {5e-3}  # the MRE head's only


def test_finetune_trains_with_the_models_recipe(tmp_path, monkeypatch):
    """What ``finetune`` hands to training is the recipe's section (old code: the shared one)."""
    from promu_lib.train import finetune as ft

    seen = {}

    def fake_train_run(cfg, run):
        seen[run.model] = cfg.finetune
        return {}

    monkeypatch.setattr(ft, "_train_run", fake_train_run)
    cfg = tiny().replace(**{"finetune.recipes.hvpnet/re.lr": 3e-5})
    ft.finetune(cfg, "mnre", "hvpnet", out_dir=tmp_path / "a")
    ft.finetune(cfg, "mnre", "promu", out_dir=tmp_path / "b")
    assert seen["hvpnet"].lr == 3e-5 and seen["promu"].lr == tiny().finetune.lr
