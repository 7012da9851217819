"""Fine-tuning: one entry point for every model on MNER (Twitter-2015/2017) and MRE (MNRE).

``finetune(cfg, "twitter2015", "hvpnet", seed=0)`` trains with the model family's recipe
(``finetune.recipes``, ``config.recipe_for``): AdamW (encoder ``lr``, head ``head_lr`` for
MNER, ``re_head_lr`` for MRE) under a linear warm-up/decay schedule, evaluates on dev after
every epoch, keeps the best DEV-F1 weights, stops after ``patience`` epochs without a dev gain,
and reports dev and test at that checkpoint (test never selects anything). Outputs, written
atomically::

    <out>/metrics.json       dev + test P/R/F1 (per type / relation), history, timing, config
    <out>/predictions.jsonl  one test prediction per post
    <out>/model.safetensors  the best-dev weights
    <out>/DONE.json          written last; a rerun with the same config returns the cached run

``<out>/ckpt`` holds the last epoch's full training state: a killed run resumes there and ends
with the same numbers as an uninterrupted one (bitwise on CPU).

:func:`finetune` reads top to bottom as its steps: check the arguments and place the output
(``_check_run``), load the data (``_load_data``), build the model (``_build_net``,
``_with_frozen_features``), set up or restore the optimizer (``_start_or_resume``), run the
epochs (``_train``, ``_end_epoch`` after each), then test and write (``_test_and_report``).
The models come from :mod:`promu_lib.models.registry`; :func:`evaluate` asks the task model how
to turn its outputs into prediction rows and scores.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from promu_lib.cache import is_done, mark_done, stage_dir
from promu_lib.config import Config, FinetuneConfig, head_lr_of, recipe_for
from promu_lib.data.datasets import PostDataset, load_split, make_loader
from promu_lib.data.layout import SPLITS, DataLayout
from promu_lib.data.tokenizer import build_tokenizer
from promu_lib.errors import MissingAssetError
from promu_lib.guards import check_dev
from promu_lib.io import atomic_write_json, atomic_write_jsonl, sha256_file
from promu_lib.locks import dir_lock
from promu_lib.models.registry import MODELS as MODELS  # re-exported: name -> ModelSpec
from promu_lib.models.registry import check_objects, model_spec
from promu_lib.paths import resolve
from promu_lib.progress import Progress
from promu_lib.train.common import (
    EarlyStopping,
    build_optimizer,
    build_scheduler,
    check_finite,
    checkpoint_exists,
    load_checkpoint,
    load_weights,
    one_cpu_thread,
    pick_device,
    save_checkpoint,
    save_weights,
    seed_everything,
    to_device,
)
from promu_lib.train.frozen_features import WithPyramid, frozen_pyramid, pyramid_store

TASK_OF: dict[str, str] = {"twitter2015": "ner", "twitter2017": "ner", "mnre": "re"}
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
    """The cache directory of one fine-tuning run: the config slice of the recipe ``model``
    runs (``config.recipe_for``), the seed, the init file's hash and the image mode."""
    cfg = recipe_for(cfg, model, task_of(dataset))
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
    device: torch.device | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Decode every post of ``loader`` and score it: ``{"metrics", "predictions"}``.

    The task model turns each decoded post into a prediction row (``prediction_row``) and
    scores the rows (``score``): see ``promu_lib.models.task`` (MNER is scored on the full gold
    tag sequence of each post; words cut off by ``max_len`` count as predicted ``O``).
    ``predictions`` holds one dict per post (``id``, ``tokens``, ``gold``, ``pred``; MRE adds
    ``head``/``tail``), in loader order.
    """
    device = device or next(model.parameters()).device
    dataset = loader.dataset
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    with torch.inference_mode(), Progress(len(loader), "eval", show_progress, 50) as bar:
        for batch in loader:
            decoded = model.decode(to_device(batch, device))
            for k, index in enumerate(batch["index"].tolist()):
                post, gold = dataset.posts[index], dataset.gold(index)
                rows.append(model.prediction_row(post, gold, decoded[k], batch["ids"][k]))
            bar.update()
    model.train(was_training)
    metrics = model.score([r["gold"] for r in rows], [r["pred"] for r in rows])
    return {"metrics": metrics, "predictions": rows}


# =============================================================================================
# Training: finetune() and its steps, in the order it runs them
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
    from disk; an interrupted one resumes from its last epoch. One process per run directory
    (``promu_lib.locks``): a second one on the same run waits, then reads the first's result.
    The ``finetune`` section is the one of ``model``'s recipe (``config.recipe_for``).
    """
    cfg = recipe_for(cfg, model, task_of(dataset))
    run = _check_run(cfg, dataset, model, init, seed, out_dir, image_mode)
    if not is_done(run.out):
        with dir_lock(run.out, "fine-tuning"):
            if not is_done(run.out):
                with one_cpu_thread(cfg.run.device):
                    return _train_run(cfg, run)
    return json.loads((run.out / "metrics.json").read_text(encoding="utf-8"))


def _train_run(cfg: Config, run: _Run) -> dict[str, Any]:
    """What :func:`finetune` does under its lock, in order (see the module docstring); the
    run directory appears with its first file (a run stopped by bad data leaves nothing)."""
    clock = time.perf_counter()
    seed = run.seed
    seed_everything(seed, cfg.run.deterministic)
    device = pick_device(cfg.run.device)
    tokenizer, data, loaders = _load_data(cfg, run)
    seed_everything(seed, cfg.run.deterministic)  # model init independent of data loading
    net = _build_net(cfg, run, tokenizer, device)
    loaders = _with_frozen_features(net, data, loaders, device, cfg.finetune)
    training = _start_or_resume(net, loaders, cfg.finetune, run.task, run.out / "ckpt", clock)
    _train(cfg, run, training, loaders, device)
    return _test_and_report(cfg, run, training, data, loaders["test"], device)


@dataclass(frozen=True)
class _Run:
    """What one fine-tuning run is: its arguments, its task and its output directory."""

    dataset: str
    model: str
    task: str
    init: str | Path | None
    seed: int
    image_mode: str
    out: Path
    pixel_cache: Path | None = None  # with out_dir: under it (the run's files in one place)


def _check_run(
    cfg: Config,
    dataset: str,
    model: str,
    init: str | Path | None,
    seed: int,
    out_dir: str | Path | None,
    image_mode: str,
) -> _Run:
    """Validate the arguments (ValueError naming the bad one) and place the output."""
    task = task_of(dataset)
    check_objects(cfg, model_spec(model))  # ValueError for an unknown model, crops refused
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"unknown image_mode {image_mode!r}; expected one of {IMAGE_MODES}")
    if cfg.finetune.epochs < 1:
        raise ValueError(f"finetune.epochs must be >= 1, got {cfg.finetune.epochs}")
    if init is not None and not Path(init).is_file():
        raise MissingAssetError(
            f"the --init checkpoint {init}", [str(init)], "Give a pre-training checkpoint "
            "(encoder.safetensors of `promu pretrain`) or a fine-tuned model.safetensors.",
        )  # fmt: skip
    if out_dir is None:
        out = resolve(
            finetune_dir(cfg, dataset, model, init=init, seed=seed, image_mode=image_mode)
        )
        return _Run(dataset, model, task, init, seed, image_mode, out)
    out = resolve(out_dir)
    return _Run(dataset, model, task, init, seed, image_mode, out, out / "cache" / "pixels")


def _load_data(cfg: Config, run: _Run) -> tuple[Any, dict[str, PostDataset], dict[str, Any]]:
    """The tokenizer, the three splits (images only for a model that sees them; train cut to
    ``finetune.train_fraction``) and their loaders (train shuffled by the seed)."""
    f = cfg.finetune
    layout = DataLayout.of(cfg)
    tokenizer = build_tokenizer(cfg, layout)
    data = {
        split: load_split(
            cfg,
            run.dataset,
            split,
            tokenizer,
            layout=layout,
            with_images=model_spec(run.model).sees_image,
            image_mode=run.image_mode,
            seed=run.seed,
            fraction=f.train_fraction if split == "train" else 1.0,
            pixel_cache_dir=run.pixel_cache,
        )
        for split in SPLITS
    }
    loaders = {
        split: make_loader(
            ds,
            f.batch_size if split == "train" else f.eval_batch_size,
            split == "train",
            run.seed,
            f.num_workers,
        )
        for split, ds in data.items()
    }
    return tokenizer, data, loaders


def _build_net(cfg: Config, run: _Run, tokenizer: Any, device: torch.device) -> nn.Module:
    """The task model, its backbone from ``run.init`` when given, on ``device``."""
    net = build_model(cfg, run.task, run.model, tokenizer)
    if run.init is not None:
        load_backbone(net, run.init)
    return net.to(device)


def _with_frozen_features(
    net: nn.Module,
    data: dict[str, PostDataset],
    loaders: dict[str, Any],
    device: torch.device,
    f: FinetuneConfig,
) -> dict[str, Any]:
    """With a frozen CNN (HVPNeT) the same maps every epoch: computed once per split and
    carried by the batches (``promu_lib.train.frozen_features``); else ``loaders`` as given."""
    visual = frozen_pyramid(net) if f.cache_frozen_features else None
    if visual is None:
        return loaders
    return {
        split: WithPyramid(ld, pyramid_store(visual, data[split], device, f.eval_batch_size))
        for split, ld in loaders.items()
    }


@dataclass
class _Training:
    """The run's state between epochs. ``state`` (JSON-able: next epoch, history, best file
    and dev scores, seconds so far, early-stopping state) goes into every checkpoint; ``clock``
    is when the seconds not yet in ``state`` started."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    step: int
    state: dict[str, Any]
    stopper: EarlyStopping
    ckpt: Path
    clock: float


def _start_or_resume(
    net: nn.Module,
    loaders: dict[str, Any],
    f: FinetuneConfig,
    task: str,
    ckpt: Path,
    clock: float,
) -> _Training:
    """AdamW (encoder ``lr``; head: ``head_lr`` for MNER, ``re_head_lr`` or the encoder's
    ``lr`` for MRE: ``config.head_lr_of``) under ``f.schedule``; restored with the RNG
    states from ``ckpt`` when an earlier run left a checkpoint there."""
    groups = net.param_groups(f.lr, head_lr_of(f, task), f.weight_decay)
    optimizer = build_optimizer(groups, f.lr)
    steps_per_epoch = len(loaders["train"])
    scheduler = build_scheduler(
        optimizer,
        f.epochs * steps_per_epoch,
        f.warmup_ratio,
        f.schedule,
        warmup_steps=math.ceil(f.warmup_epochs * steps_per_epoch),
    )
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
    return _Training(net, optimizer, scheduler, steps_per_epoch, step, state, stopper, ckpt, clock)


def _train(
    cfg: Config, run: _Run, tr: _Training, loaders: dict[str, Any], device: torch.device
) -> None:
    """The epochs left: train, evaluate on dev, keep the best weights, checkpoint; stop after
    ``patience`` epochs without a dev gain."""
    f = cfg.finetune
    autocast = _autocast(device, f.bf16)
    total = f.epochs * tr.steps_per_epoch
    desc = f"{run.dataset}/{run.model}"
    with Progress(total, desc, cfg.run.progress, f.log_every, tr.step) as bar:
        for epoch in range(tr.state["epoch"], f.epochs):
            if tr.stopper.should_stop:
                break
            loss_sum = _train_epoch(
                tr.net,
                loaders["train"],
                tr.optimizer,
                tr.scheduler,
                autocast,
                device,
                f.grad_clip,
                epoch,
                tr.step,
                bar.update,
            )
            tr.step += tr.steps_per_epoch
            _end_epoch(run, tr, epoch, loss_sum / tr.steps_per_epoch, loaders["dev"], device, bar)


def _end_epoch(
    run: _Run,
    tr: _Training,
    epoch: int,
    train_loss: float,
    dev_loader: Any,
    device: torch.device,
    bar: Progress,
) -> None:
    """After one epoch: dev scores and collapse flags, the best weights so far, the history
    row, a log line, the checkpoint."""
    dev_out = evaluate(tr.net, dev_loader, device)
    dev = dev_out["metrics"]
    flags = check_dev(
        tr.net, dev_loader, dev_out["predictions"], run.task,
        epoch=epoch, step=tr.step, image_mode=run.image_mode, device=device,
    )  # fmt: skip
    state, stopper = tr.state, tr.stopper
    if stopper.update(dev["f1"], epoch):
        state["best_file"] = f"best-e{epoch}.safetensors"
        state["best_dev"] = dev
        save_weights(run.out / state["best_file"], tr.net)
    state["history"].append(
        {
            "epoch": epoch,
            "step": tr.step,
            "train_loss": train_loss,
            "dev_f1": dev["f1"],
            "flags": flags,  # promu_lib.guards: signs of collapse at this epoch
        }
    )
    bar.write(
        f"epoch {epoch}: train loss {train_loss:.4f}, dev F1 {dev['f1']:.2f}"
        f" (best {stopper.best:.2f} at epoch {stopper.best_epoch})"
    )
    state.update(
        epoch=epoch + 1,
        stopper=stopper.state_dict(),
        seconds=state["seconds"] + time.perf_counter() - tr.clock,
    )
    tr.clock = time.perf_counter()
    save_checkpoint(tr.ckpt, tr.net, tr.optimizer, tr.scheduler, tr.step, state)
    _remove_stale_best(run.out, state["best_file"])


def _test_and_report(
    cfg: Config,
    run: _Run,
    tr: _Training,
    data: dict[str, PostDataset],
    test_loader: Any,
    device: torch.device,
) -> dict[str, Any]:
    """The best-dev weights on test, then the outputs (predictions, weights, metrics, DONE
    last); the checkpoint, the best-epoch file and a pixel cache under ``out`` go."""
    state, out = tr.state, run.out
    load_weights(out / state["best_file"], tr.net)
    test = evaluate(tr.net, test_loader, device)
    seconds = state["seconds"] + time.perf_counter() - tr.clock
    metrics = {
        "dataset": run.dataset,
        "task": run.task,
        "model": run.model,
        "seed": run.seed,
        "init": str(run.init) if run.init else None,
        "init_sha256": sha256_file(run.init) if run.init else None,
        "image_mode": run.image_mode,
        "profile": cfg.profile,
        "dev": state["best_dev"],
        "test": test["metrics"],
        "best_epoch": tr.stopper.best_epoch,
        "epochs_run": len(state["history"]),
        # what ended the run: early stopping, or the last epoch (the cap) reached first
        "stopped_by": "patience" if tr.stopper.should_stop else "cap",
        "steps": tr.step,
        "seconds": seconds,
        "device": str(device),
        "history": state["history"],
        "data": {split: ds.stats for split, ds in data.items()},
        "config": {s: cfg.to_dict()[s] for s in SECTIONS},
    }
    atomic_write_jsonl(out / "predictions.jsonl", test["predictions"])
    save_weights(out / "model.safetensors", tr.net)
    atomic_write_json(out / "metrics.json", metrics)
    mark_done(out, {"dev_f1": state["best_dev"]["f1"], "test_f1": test["metrics"]["f1"]})
    (out / state["best_file"]).unlink(missing_ok=True)
    shutil.rmtree(tr.ckpt, ignore_errors=True)
    if run.pixel_cache is not None:  # under --out: it served a resume of this run only
        shutil.rmtree(run.pixel_cache.parent, ignore_errors=True)
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
