"""Fine-tuning: one entry point for every model on MNER (Twitter-2015/2017) and MRE (MNRE).

``finetune(cfg, "twitter2015", "hvpnet", seed=0)`` trains with AdamW (encoder ``lr``, head
``head_lr``) under a linear warm-up/decay schedule, evaluates on dev after every epoch, keeps
the best DEV-F1 weights, stops after ``patience`` epochs without a dev gain, and reports dev and
test at that checkpoint (test never selects anything). Outputs, written atomically::

    <out>/metrics.json       dev + test P/R/F1 (per type / relation), history, timing, config
    <out>/predictions.jsonl  one test prediction per post
    <out>/model.safetensors  the best-dev weights
    <out>/DONE.json          written last; a rerun with the same config returns the cached run

``<out>/ckpt`` holds the last epoch's full training state: a killed run resumes there and ends
with the same numbers as an uninterrupted one (bitwise on CPU).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from promu_lib.cache import is_done, mark_done, stage_dir
from promu_lib.config import Config
from promu_lib.data.datasets import load_split, make_loader
from promu_lib.data.layout import SPLITS, DataLayout
from promu_lib.data.records import MNRE_RELATIONS, NER_TAGS
from promu_lib.data.tokenizer import build_tokenizer
from promu_lib.experiments import TEXT_ONLY
from promu_lib.guards import check_dev
from promu_lib.io import atomic_write_json, atomic_write_jsonl, sha256_file
from promu_lib.metrics import ner_scores, re_scores
from promu_lib.paths import resolve
from promu_lib.train.common import (
    EarlyStopping,
    build_optimizer,
    build_scheduler,
    check_finite,
    checkpoint_exists,
    load_checkpoint,
    load_weights,
    pick_device,
    progress,
    save_checkpoint,
    save_weights,
    seed_everything,
    to_device,
)
from promu_lib.train.frozen_features import WithPyramid, frozen_pyramid, pyramid_store

TASK_OF: dict[str, str] = {"twitter2015": "ner", "twitter2017": "ner", "mnre": "re"}
MODELS: tuple[str, ...] = (
    "bert",
    "hvpnet",
    "hvpnet-single",
    "hvpnet-flat",
    "hvpnet-1v3",
    "hvpnet-onlyobj",
    "promu",
)
IMAGE_MODES: tuple[str, ...] = ("true", "blank", "shuffled")
# config sections a fine-tuning result depends on (its cache key)
SECTIONS: tuple[str, ...] = ("data", "text", "vision", "fusion", "hvpnet", "finetune")


def task_of(dataset: str) -> str:
    if dataset not in TASK_OF:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(TASK_OF)}")
    return TASK_OF[dataset]


def build_model(cfg: Config, task: str, model: str, tokenizer: Any) -> nn.Module:
    """The task model (``promu_lib.models.build_task_model``); a seam for tests."""
    from promu_lib.models import build_task_model

    return build_task_model(cfg, task, model, tokenizer)


def load_backbone(model: nn.Module, init: str | Path) -> None:
    from promu_lib.models import load_pretrained_backbone

    load_pretrained_backbone(model, init)


def finetune_dir(
    cfg: Config, dataset: str, model: str, *, init: str | Path | None, seed: int, image_mode: str
) -> Path:
    """The cache directory of one fine-tuning run."""
    extra = {
        "seed": seed,
        "init": sha256_file(init) if init else None,
        "image_mode": image_mode,
    }
    return stage_dir(cfg, f"finetune/{dataset}/{model}", *SECTIONS, extra=extra)


# =============================================================================================
# Evaluation
# =============================================================================================


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    task: str,
    device: torch.device | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Decode every post of ``loader`` and score it: ``{"metrics", "predictions"}``.

    MNER is scored on the full gold tag sequence of each post; words cut off by ``max_len``
    count as predicted ``O``. ``predictions`` holds one dict per post (``id``, ``tokens``,
    ``gold``, ``pred``; MRE adds ``head``/``tail``), in loader order.
    """
    device = device or next(model.parameters()).device
    dataset = loader.dataset
    was_training = model.training
    model.eval()
    golds: list[Any] = []
    preds: list[Any] = []
    rows: list[dict[str, Any]] = []
    with torch.inference_mode(), progress(len(loader), "eval", show_progress, 50) as bar:
        for batch in loader:
            decoded = model.decode(to_device(batch, device))
            for k, index in enumerate(batch["index"].tolist()):
                post = dataset.posts[index]
                gold = dataset.gold(index)
                if task == "ner":
                    tags = [NER_TAGS[t] for t in decoded[k]]
                    if len(tags) > len(gold):
                        raise ValueError(
                            f"{batch['ids'][k]}: {len(tags)} tags for {len(gold)} words"
                        )
                    pred: Any = tags + ["O"] * (len(gold) - len(tags))
                    row = {
                        "id": batch["ids"][k],
                        "tokens": list(post.tokens),
                        "gold": gold,
                        "pred": pred,
                    }
                else:
                    pred = MNRE_RELATIONS[int(decoded[k])]
                    row = {
                        "id": batch["ids"][k],
                        "tokens": list(post.tokens),
                        "head": [post.head.start, post.head.end],
                        "tail": [post.tail.start, post.tail.end],
                        "gold": gold,
                        "pred": pred,
                    }
                golds.append(gold)
                preds.append(pred)
                rows.append(row)
            bar.update()
    model.train(was_training)
    metrics = ner_scores(golds, preds) if task == "ner" else re_scores(golds, preds, "None")
    return {"metrics": metrics, "predictions": rows}


# =============================================================================================
# Training
# =============================================================================================


def finetune(
    cfg: Config,
    dataset: str,
    model: str,
    *,
    init: str | Path | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    image_mode: str = "true",
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``dataset`` and return the contents of ``metrics.json``.

    ``init``: a pre-training checkpoint for the backbone (safetensors, ``encoder.`` keys).
    ``image_mode``: ``true``/``blank``/``shuffled`` images for every split (robustness study).
    Cached: a finished run with the same config slice, seed, init and image mode is returned
    from disk; an interrupted one resumes from its last epoch.
    """
    task = task_of(dataset)
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"unknown image_mode {image_mode!r}; expected one of {IMAGE_MODES}")
    f = cfg.finetune
    if f.epochs < 1:
        raise ValueError(f"finetune.epochs must be >= 1, got {f.epochs}")
    out = (
        resolve(out_dir)
        if out_dir is not None
        else resolve(finetune_dir(cfg, dataset, model, init=init, seed=seed, image_mode=image_mode))
    )
    if is_done(out):
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    seed_everything(seed, cfg.run.deterministic)
    device = pick_device(cfg.run.device)
    layout = DataLayout(root=resolve(cfg.data_root()), data=cfg.data)
    tokenizer = build_tokenizer(cfg, layout)
    data = {
        split: load_split(
            cfg,
            dataset,
            split,
            tokenizer,
            layout=layout,
            with_images=model not in TEXT_ONLY,
            image_mode=image_mode,
            seed=seed,
            fraction=f.train_fraction if split == "train" else 1.0,
        )
        for split in SPLITS
    }
    loaders = {
        split: make_loader(
            ds,
            f.batch_size if split == "train" else f.eval_batch_size,
            split == "train",
            seed,
            f.num_workers,
        )
        for split, ds in data.items()
    }

    seed_everything(seed, cfg.run.deterministic)  # model init independent of data loading
    net = build_model(cfg, task, model, tokenizer)
    if init is not None:
        load_backbone(net, init)
    net.to(device)
    visual = frozen_pyramid(net) if f.cache_frozen_features else None
    if visual is not None:  # the same maps every epoch: computed once (frozen_features)
        loaders = {
            split: WithPyramid(ld, pyramid_store(visual, data[split], device, f.eval_batch_size))
            for split, ld in loaders.items()
        }
    optimizer = build_optimizer(net.param_groups(f.lr, f.head_lr, f.weight_decay), f.lr)
    steps_per_epoch = len(loaders["train"])
    scheduler = build_scheduler(optimizer, f.epochs * steps_per_epoch, f.warmup_ratio)

    ckpt = out / "ckpt"
    state: dict[str, Any] = {
        "epoch": 0,
        "history": [],
        "best_file": None,
        "best_dev": None,
        "seconds": 0.0,
        "stopper": EarlyStopping(f.patience).state_dict(),
    }
    step = 0
    if checkpoint_exists(ckpt):
        restored = load_checkpoint(ckpt, net, optimizer, scheduler)
        step, state = restored["step"], restored["extra"]
    stopper = EarlyStopping.from_state(state["stopper"])
    autocast = _autocast(device, f.bf16)

    with progress(
        f.epochs * steps_per_epoch, f"{dataset}/{model}", cfg.run.progress, f.log_every, step
    ) as bar:
        for epoch in range(state["epoch"], f.epochs):
            if stopper.should_stop:
                break
            loss_sum = _train_epoch(
                net,
                loaders["train"],
                optimizer,
                scheduler,
                autocast,
                device,
                f.grad_clip,
                epoch,
                step,
                bar.update,
            )
            step += steps_per_epoch
            dev_out = evaluate(net, loaders["dev"], task, device)
            dev = dev_out["metrics"]
            flags = check_dev(
                net, loaders["dev"], dev_out["predictions"], task,
                epoch=epoch, step=step, image_mode=image_mode, device=device,
            )  # fmt: skip
            if stopper.update(dev["f1"], epoch):
                state["best_file"] = f"best-e{epoch}.safetensors"
                state["best_dev"] = dev
                save_weights(out / state["best_file"], net)
            state["history"].append(
                {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": loss_sum / steps_per_epoch,
                    "dev_f1": dev["f1"],
                    "flags": flags,  # promu_lib.guards: signs of collapse at this epoch
                }
            )
            bar.write(
                f"epoch {epoch}: train loss {loss_sum / steps_per_epoch:.4f}, dev F1 {dev['f1']:.2f}"
                f" (best {stopper.best:.2f} at epoch {stopper.best_epoch})"
            )
            state.update(
                epoch=epoch + 1,
                stopper=stopper.state_dict(),
                seconds=state["seconds"] + time.perf_counter() - t0,
            )
            t0 = time.perf_counter()
            save_checkpoint(ckpt, net, optimizer, scheduler, step, state)
            _remove_stale_best(out, state["best_file"])

    load_weights(out / state["best_file"], net)
    test = evaluate(net, loaders["test"], task, device)
    seconds = state["seconds"] + time.perf_counter() - t0
    metrics = {
        "dataset": dataset,
        "task": task,
        "model": model,
        "seed": seed,
        "init": str(init) if init else None,
        "init_sha256": sha256_file(init) if init else None,
        "image_mode": image_mode,
        "profile": cfg.profile,
        "dev": state["best_dev"],
        "test": test["metrics"],
        "best_epoch": stopper.best_epoch,
        "epochs_run": len(state["history"]),
        "steps": step,
        "seconds": seconds,
        "device": str(device),
        "history": state["history"],
        "data": {split: ds.stats for split, ds in data.items()},
        "config": {s: cfg.to_dict()[s] for s in SECTIONS},
    }
    atomic_write_jsonl(out / "predictions.jsonl", test["predictions"])
    save_weights(out / "model.safetensors", net)
    atomic_write_json(out / "metrics.json", metrics)
    mark_done(out, {"dev_f1": state["best_dev"]["f1"], "test_f1": test["metrics"]["f1"]})
    (out / state["best_file"]).unlink(missing_ok=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    return metrics


def _train_epoch(
    net: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    autocast: Callable[[], Any],
    device: torch.device,
    grad_clip: float,
    epoch: int,
    step: int,
    tick: Callable[..., None],
) -> float:
    """One pass over ``loader``; returns the summed loss."""
    net.train()
    loader.sampler.set_epoch(epoch)
    total = 0.0
    for batch in loader:
        with autocast():
            loss = net(to_device(batch, device))["loss"]
        check_finite(loss, step, batch["ids"])
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        total += loss.item()
        tick(loss=loss.item(), lr=scheduler.get_last_lr()[0])
    return total


def _autocast(device: torch.device, bf16: bool) -> Callable[[], Any]:
    """bf16 autocast on CUDA when asked; a no-op context otherwise."""
    enabled = bf16 and device.type == "cuda"
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _remove_stale_best(out: Path, keep: str | None) -> None:
    for p in out.glob("best-e*.safetensors"):
        if p.name != keep:
            p.unlink(missing_ok=True)


def summarize(metrics: dict[str, Any]) -> str:
    """One line: dataset, model, seed, dev and test F1."""
    dev, test = metrics["dev"], metrics["test"]
    f1 = "nan" if dev is None else f"{dev['f1']:.2f}"
    return (
        f"{metrics['dataset']} {metrics['model']} seed={metrics['seed']} "
        f"image={metrics['image_mode']}: dev F1 {f1}, test P/R/F1 "
        f"{test['precision']:.2f}/{test['recall']:.2f}/{test['f1']:.2f} "
        f"({metrics['epochs_run']} epochs, {metrics['seconds']:.0f}s)"
    )
