"""Training utilities (checkpoints, resume, guards, schedule) and the fine-tuning entry point.

The fine-tuning loop is exercised with a tiny model that follows the task-model contract
(``forward``/``decode``/``param_groups``, and ``prediction_row``/``score`` from the task's
outputs class), and with the real ``bert`` model when it exists.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import promu_lib.train.finetune as ft
from promu_lib.config import profile_config
from promu_lib.data.formats import write_boxes, write_mnre, write_rel2id, write_twitter
from promu_lib.data.records import MNRE_RELATIONS, NER_TAGS, Box, NerPost, RePost, Span
from promu_lib.errors import CheckpointError
from promu_lib.train.common import (
    EarlyStopping,
    NonFiniteLossError,
    build_optimizer,
    build_scheduler,
    check_finite,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)

torch.set_num_threads(1)

# =============================================================================================
# A tiny contract model
# =============================================================================================


class TinyTaskModel(nn.Module):
    """Embedding -> BiGRU (+ image mean) -> CRF tagger or marker classifier."""

    def __init__(self, task: str, vocab: int, dim: int = 32) -> None:
        super().__init__()
        from promu_lib.models.heads import CrfTagger, MarkerClassifier
        from promu_lib.models.task import NerOutputs, ReOutputs

        self.task = task
        self.outputs = NerOutputs() if task == "ner" else ReOutputs()
        self.backbone = nn.ModuleDict(
            {
                "emb": nn.Embedding(vocab, dim),
                "rnn": nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True),
                "img": nn.Linear(3, dim),
            }
        )
        self.drop = nn.Dropout(0.1)
        self.head = (
            CrfTagger(dim, len(NER_TAGS), 0.0)
            if task == "ner"
            else MarkerClassifier(dim, len(MNRE_RELATIONS), 0.0)
        )

    def states(self, batch):
        x = self.drop(self.backbone["emb"](batch["input_ids"]))
        if "image" in batch:
            x = x + self.backbone["img"](batch["image"].mean((2, 3)))[:, None]
        return self.backbone["rnn"](x)[0]

    def forward(self, batch):
        h = self.states(batch)
        if self.task == "ner":
            logits = self.head.emissions(h, batch["word_starts"])
            return {
                "loss": self.head.loss(logits, batch["tags"], batch["word_mask"]),
                "logits": logits,
            }
        logits = self.head(h, batch["head_start"], batch["tail_start"])
        return {"loss": self.head.loss(logits, batch["label"]), "logits": logits}

    def decode(self, batch):
        h = self.states(batch)
        if self.task == "ner":
            return self.head.decode(
                self.head.emissions(h, batch["word_starts"]), batch["word_mask"]
            )
        return self.head(h, batch["head_start"], batch["tail_start"]).argmax(-1)

    def prediction_row(self, post, gold, decoded, post_id):
        return self.outputs.prediction_row(post, gold, decoded, post_id)

    def score(self, golds, preds):
        return self.outputs.score(golds, preds)

    def param_groups(self, lr, head_lr, weight_decay):
        return [
            {"params": list(self.backbone.parameters()), "lr": lr, "weight_decay": weight_decay},
            {"params": list(self.head.parameters()), "lr": head_lr, "weight_decay": 0.0},
        ]


@pytest.fixture
def tiny_model(monkeypatch):
    monkeypatch.setattr(
        ft, "build_model", lambda cfg, task, model, tok: TinyTaskModel(task, len(tok))
    )


# =============================================================================================
# Tiny data directory in the real formats
# =============================================================================================

ENTITIES = [("alice", "B-PER"), ("paris", "B-LOC"), ("acme", "B-ORG"), ("worldcup", "B-MISC")]
FILLER = ["we", "saw", "today", "at", "the", "rt", "with", "love"]


def _ner_posts(n: int, rng: random.Random) -> list[NerPost]:
    posts = []
    for i in range(n):
        words, labels = [], []
        for _ in range(rng.randint(3, 7)):
            if rng.random() < 0.35:
                name, tag = rng.choice(ENTITIES)
                words.append(name.title())
                labels.append(tag)
                if tag == "B-LOC" and rng.random() < 0.5:  # two-word entity
                    words.append("City")
                    labels.append("I-LOC")
            else:
                words.append(rng.choice(FILLER))
                labels.append("O")
        posts.append(NerPost(f"t{i}", tuple(words), tuple(labels)))
    return posts


RELS = {
    "alice": "/per/per/peer",
    "paris": "/per/loc/place_of_residence",
    "acme": "/per/org/member_of",
}


def _re_posts(n: int, rng: random.Random) -> list[RePost]:
    posts = []
    for i in range(n):
        tail = rng.choice([*RELS, "bob"])
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 3))] + ["bob"]
        h = len(words) - 1
        words += [rng.choice(FILLER) for _ in range(rng.randint(0, 2))] + [tail]
        t = len(words) - 1  # an entity at the last token
        posts.append(
            RePost(
                tuple(words),
                Span("bob", h, h + 1),
                Span(tail, t, t + 1),
                f"m{i}.jpg",
                RELS.get(tail, "None"),
            )
        )
    return posts


def make_data(root, n_ner=32, n_re=32, seed=0):
    rng = random.Random(seed)
    ner, re_posts = _ner_posts(n_ner, rng), _re_posts(n_re, rng)
    boxes = {}
    for ds in ("twitter2015",):
        for split in ("train.txt", "valid.txt", "test.txt"):  # the same posts: train F1 = dev F1
            write_twitter(root / ds / split, ner)
    (root / "twitter2015_images").mkdir(parents=True, exist_ok=True)
    for p in ner:
        colour = (rng.randrange(256), 40, 90)
        Image.new("RGB", (12, 10), colour).save(root / "twitter2015_images" / f"{p.img_id}.jpg")
        boxes[p.img_id] = [Box(0, 0, 6, 5, 0.9, "person")]
    write_boxes(root / "boxes" / "twitter2015.json", boxes)
    for split, name in (
        ("train", "ours_train.txt"),
        ("val", "ours_val.txt"),
        ("test", "ours_test.txt"),
    ):
        write_mnre(root / "mnre" / name, re_posts)
        (root / "mnre_images" / split).mkdir(parents=True, exist_ok=True)
        for p in re_posts:
            Image.new("RGB", (10, 10), (10, 200, 30)).save(root / "mnre_images" / split / p.img_id)
    write_rel2id(root / "mnre" / "ours_rel2id.json")
    write_boxes(root / "boxes" / "mnre.json", {})


def tiny_cfg(tmp_path, **over):
    values = {
        "data.root": str(tmp_path / "data"),
        "run.output_dir": str(tmp_path / "runs"),
        "run.progress": False,
        "data.image_size": 8,
        "data.max_objects": 1,
        "finetune.epochs": 12,
        "finetune.batch_size": 8,
        "finetune.lr": 1e-2,
        "finetune.head_lr": 5e-2,
        "finetune.warmup_ratio": 0.0,
        "finetune.patience": 100,
    }
    values.update(over)
    return profile_config("tiny").replace(**values)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftdata")
    make_data(root / "data")
    return root


# =============================================================================================
# common.py
# =============================================================================================


def _toy_setup(seed=0):
    seed_everything(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.ReLU(), nn.Linear(8, 1))
    opt = build_optimizer(model.parameters(), 1e-2)
    sched = build_scheduler(opt, total_steps=20, warmup_ratio=0.2)
    return model, opt, sched


def _steps(model, opt, sched, n):
    for _ in range(n):
        x = torch.randn(5, 4)
        y = torch.from_numpy(np.random.randn(5, 1).astype("float32")) + random.random()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_checkpoint_resume_is_bitwise_equal(tmp_path):
    straight = _toy_setup()
    _steps(*straight, 7)

    first = _toy_setup()
    _steps(*first, 3)
    save_checkpoint(tmp_path / "ckpt", *first, step=3, extra={"epoch": 1})
    save_checkpoint(tmp_path / "ckpt", *first, step=3, extra={"epoch": 1})  # replaces atomically
    random.random(), np.random.rand(), torch.rand(3)  # disturb every RNG
    resumed = _toy_setup(seed=99)
    info = load_checkpoint(tmp_path / "ckpt", *resumed)
    assert info == {"step": 3, "extra": {"epoch": 1}}
    _steps(*resumed, 4)
    for a, b in zip(straight[0].state_dict().values(), resumed[0].state_dict().values()):
        assert torch.equal(a, b)
    assert resumed[2].get_last_lr() == straight[2].get_last_lr()
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "trainer.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind


def test_checkpoint_errors(tmp_path):
    model, opt, sched = _toy_setup()
    save_checkpoint(tmp_path / "c", model, opt, sched)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / "c", nn.Linear(4, 1))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "nothing", model)


def test_schedule_warms_up_then_decays():
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], 1.0)
    sched = build_scheduler(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:3] == [0.0, 0.5, 1.0] and lrs[-1] == pytest.approx(0.125)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))


def test_non_finite_guard_names_step_and_posts():
    check_finite(torch.tensor(1.5), 3, ["a"])
    with pytest.raises(
        NonFiniteLossError, match=r"nan at step 12 on the batch of posts p1@L3, p2@L9"
    ):
        check_finite(torch.tensor(float("nan")), 12, ["p1@L3", "p2@L9"])


def test_early_stopping_patience_and_state():
    stop = EarlyStopping(patience=2)
    assert stop.update(50.0, 0) and not stop.update(50.0, 1) and not stop.should_stop
    assert not stop.update(40.0, 2) and stop.should_stop and stop.best_epoch == 0
    again = EarlyStopping.from_state(json.loads(json.dumps(stop.state_dict())))
    assert again == stop
    assert EarlyStopping.from_state(EarlyStopping(3).state_dict()).best == float("-inf")
    slow = EarlyStopping(patience=2)  # dev F1 0 until it takes off: not a plateau
    for epoch in range(6):
        slow.update(0.0, epoch)
    assert not slow.should_stop and slow.best_epoch == 0
    assert slow.update(12.0, 6) and not slow.update(0.0, 7) and not slow.update(11.0, 8)
    assert slow.should_stop and slow.best_epoch == 6


def test_constant_schedule_warms_up_then_holds_the_peak_whatever_the_cap():
    """The stop rule's schedule: the lr after warm-up does not depend on the cap (total
    steps), so a run's curve up to epoch e is the same under any cap >= e."""
    lrs = {}
    for total in (20, 200):
        opt = build_optimizer(nn.Linear(2, 2).parameters(), 1e-2)
        sched = build_scheduler(opt, total, 0.5, "constant", warmup_steps=4)
        lrs[total] = []
        for _ in range(12):
            lrs[total].append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
    assert lrs[20] == lrs[200]
    assert lrs[20][:5] == pytest.approx([0.0, 2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert lrs[20][4:] == pytest.approx([1e-2] * 8)
    opt = build_optimizer(nn.Linear(2, 2).parameters(), 1e-2)
    with pytest.raises(ValueError, match="linear, constant"):
        build_scheduler(opt, 10, 0.1, "cosine")


# =============================================================================================
# finetune.py
# =============================================================================================


@pytest.mark.slow
def test_finetune_records_what_stopped_it(data_root, tmp_path, tiny_model):
    """patience < cap on posts it learns at once: early stopping ends the run before the cap
    ("patience"); patience >= cap: every epoch runs ("cap")."""
    cfg = tiny_cfg(data_root, **{"finetune.schedule": "constant", "finetune.warmup_epochs": 0.5})
    early = ft.finetune(cfg.replace(**{"finetune.patience": 2}), "mnre", "bert", seed=0,
                        out_dir=tmp_path / "early")  # fmt: skip
    assert early["stopped_by"] == "patience"
    assert early["epochs_run"] == early["best_epoch"] + 3 < 12, early["history"]
    full = ft.finetune(cfg.replace(**{"finetune.epochs": 3}), "mnre", "bert", seed=0,
                       out_dir=tmp_path / "full")  # fmt: skip
    assert full["stopped_by"] == "cap" and full["epochs_run"] == 3
    # the same curve up to epoch 3 under either cap: the constant schedule ignores the cap
    assert [h["dev_f1"] for h in full["history"]] == [h["dev_f1"] for h in early["history"][:3]]


@pytest.mark.slow
def test_finetune_overfits_tiny_ner_and_caches(data_root, tmp_path, tiny_model):
    cfg = tiny_cfg(data_root)
    out = tmp_path / "run"
    metrics = ft.finetune(cfg, "twitter2015", "hvpnet", seed=0, out_dir=out)
    assert metrics["dev"]["f1"] >= 95.0, metrics["history"]  # dev = train posts here
    assert metrics["test"]["f1"] == pytest.approx(metrics["dev"]["f1"])
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert set(metrics["test"]["per_type"]) >= {"PER", "LOC", "ORG", "MISC"}
    names = sorted(p.name for p in out.iterdir())
    assert names == ["DONE.json", "metrics.json", "model.safetensors", "predictions.jsonl"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and {"id", "tokens", "gold", "pred"} <= set(rows[0])
    assert all(len(r["pred"]) == len(r["gold"]) for r in rows)
    assert metrics["data"]["train"]["posts"] == 32 and metrics["steps"] == 12 * 4
    # done: a rerun returns the cached result without training
    ft_calls = []
    orig = ft._train_epoch
    ft._train_epoch = lambda *a, **k: ft_calls.append(1) or orig(*a, **k)
    try:
        assert ft.finetune(cfg, "twitter2015", "hvpnet", seed=0, out_dir=out) == metrics
    finally:
        ft._train_epoch = orig
    assert not ft_calls


@pytest.mark.slow
def test_killed_finetune_resumes_to_the_same_result(data_root, tmp_path, tiny_model, monkeypatch):
    cfg = tiny_cfg(
        data_root,
        **{"finetune.epochs": 4, "finetune.warmup_ratio": 0.3, "finetune.train_fraction": 0.75},
    )
    straight = ft.finetune(cfg, "twitter2015", "hvpnet", seed=1, out_dir=tmp_path / "a")

    orig = ft._train_epoch

    def killed_at_epoch_2(*args, **kwargs):
        if args[7] == 2:
            raise KeyboardInterrupt
        return orig(*args, **kwargs)

    monkeypatch.setattr(ft, "_train_epoch", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(cfg, "twitter2015", "hvpnet", seed=1, out_dir=tmp_path / "b")
    assert (tmp_path / "b" / "ckpt").is_dir() and not (tmp_path / "b" / "DONE.json").exists()
    monkeypatch.setattr(ft, "_train_epoch", orig)
    resumed = ft.finetune(cfg, "twitter2015", "hvpnet", seed=1, out_dir=tmp_path / "b")
    for key in ("dev", "test", "history", "steps", "best_epoch", "data"):
        assert resumed[key] == straight[key], key
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert not (tmp_path / "b" / "ckpt").exists()


def test_finetune_re_with_default_cache_dir_and_blank_images(data_root, tiny_model):
    cfg = tiny_cfg(data_root, **{"finetune.epochs": 2})
    metrics = ft.finetune(cfg, "mnre", "hvpnet", seed=0, image_mode="blank")
    out = ft.finetune_dir(cfg, "mnre", "hvpnet", init=None, seed=0, image_mode="blank")
    assert (
        out / "DONE.json"
    ).is_file() and out.parent.parent == data_root / "runs" / "finetune" / "mnre"
    assert {"precision", "recall", "f1", "per_relation"} <= set(metrics["test"])
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["pred"] in MNRE_RELATIONS and "head" in rows[0]
    other = ft.finetune_dir(cfg, "mnre", "hvpnet", init=None, seed=1, image_mode="blank")
    assert other != out


def test_finetune_stops_on_non_finite_loss(data_root, tmp_path, monkeypatch):
    class Broken(TinyTaskModel):
        def forward(self, batch):
            out = super().forward(batch)
            return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(ft, "build_model", lambda cfg, task, model, tok: Broken(task, len(tok)))
    with pytest.raises(NonFiniteLossError, match=r"at step 0 on the batch of posts t\d+@L\d+"):
        ft.finetune(tiny_cfg(data_root), "twitter2015", "bert", out_dir=tmp_path / "x")


def test_task_outputs_make_the_rows_and_scores_evaluate_writes():
    from promu_lib.models.task import NerOutputs, ReOutputs

    post = NerPost("t0", ("Alice", "in", "Paris"), ("B-PER", "O", "B-LOC"))
    gold = list(post.labels)
    row = NerOutputs().prediction_row(post, gold, [NER_TAGS.index("B-PER")], "t0@L1")
    assert row == {
        "id": "t0@L1",
        "tokens": ["Alice", "in", "Paris"],
        "gold": gold,
        "pred": ["B-PER", "O", "O"],  # words cut off by max_len count as O
    }
    with pytest.raises(ValueError, match="t0@L1: 4 tags for 3 words"):
        NerOutputs().prediction_row(post, gold, [0, 0, 0, 0], "t0@L1")
    assert NerOutputs().score([gold], [row["pred"]])["recall"] == pytest.approx(50.0)

    rel = "/per/per/peer"
    re_post = RePost(("bob", "met", "alice"), Span("bob", 0, 1), Span("alice", 2, 3), "m.jpg", rel)
    decoded = torch.tensor(MNRE_RELATIONS.index(rel))
    row = ReOutputs().prediction_row(re_post, rel, decoded, "m0")
    assert list(row) == ["id", "tokens", "head", "tail", "gold", "pred"]
    assert row["head"] == [0, 1] and row["tail"] == [2, 3] and row["pred"] == rel
    assert ReOutputs().score([rel, "None"], [rel, rel])["precision"] == pytest.approx(50.0)


def test_finetune_rejects_unknown_names_before_any_work(data_root, tmp_path):
    cfg = tiny_cfg(data_root)
    with pytest.raises(ValueError, match=r"unknown model 'gpt'; expected one of bert, hvpnet"):
        ft.finetune(cfg, "twitter2015", "gpt", out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="unknown dataset"):
        ft.finetune(cfg, "twitter2019", "bert", out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="unknown image_mode"):
        ft.finetune(cfg, "mnre", "bert", out_dir=tmp_path / "x", image_mode="noisy")
    assert not (tmp_path / "x").exists()


def test_cli_parses_finetune():
    import argparse

    from promu_lib.train.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "finetune",
            "--dataset",
            "mnre",
            "--model",
            "hvpnet-1v3",
            "--set",
            "finetune.lr=1e-4",
            "--seed",
            "3",
            "--seed",
            "4",
        ]
    )
    assert args.dataset == "mnre" and args.seed == [3, 4] and args.overrides == ["finetune.lr=1e-4"]
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--dataset", "twitter2019", "--model", "bert"])


@pytest.mark.slow
def test_finetune_real_bert_model(data_root, tmp_path):
    models = pytest.importorskip("promu_lib.models")
    if not hasattr(models, "build_task_model"):
        pytest.skip("promu_lib.models.build_task_model is not there yet")
    cfg = tiny_cfg(data_root, **{"finetune.epochs": 2, "finetune.lr": 1e-3})
    metrics = ft.finetune(cfg, "twitter2015", "bert", out_dir=tmp_path / "bert")
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
