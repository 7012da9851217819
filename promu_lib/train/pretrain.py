"""PROMU pre-training (paper Sec. 4): the fusion encoder trained with Eq. 11 on caption pairs.

``pretrain(cfg, seed=0)`` mines pseudo-labels (cached stage), then runs ``cfg.pretrain.steps``
AdamW steps with linear warm-up/decay, gradient accumulation and grad-norm clipping; each
loss of Eq. 11 has its weight ``cfg.pretrain.lambda_*`` (0 switches it off) and
``cfg.pretrain.soft_labels=False`` trains on hard (argmax) pseudo-labels instead. Outputs::

    <out>/encoder.safetensors  the fusion encoder, keys prefixed "encoder." (fine-tuning --init)
    <out>/metrics.jsonl        one row per logged step: the four losses, total, lr
    <out>/ckpt/                the full training state every ``checkpoint_every`` steps
    <out>/DONE.json            written last

A killed run resumes from ``ckpt`` and ends with the same weights as an uninterrupted one (on
CPU). Under ``torchrun --nproc_per_node=N`` the same function runs DDP (see
``promu_lib.train.distributed``); rank 0 writes. CIT's negatives are gathered from all ranks
(N x ``batch_size`` pairs per contrast); ``grad_accum`` enlarges the optimiser batch only, not
the contrastive one. The temperature is clamped to its bounds after every optimiser step.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from promu_lib import losses
from promu_lib.cache import is_done, mark_done, stage_dir
from promu_lib.config import Config, ConfigError
from promu_lib.data.captions import CaptionDataset, collate_captions
from promu_lib.data.pseudo_labels import load_pseudo_labels
from promu_lib.data.tokenizer import build_tokenizer
from promu_lib.io import atomic_write_jsonl
from promu_lib.locks import dir_lock
from promu_lib.mining import mine_labels
from promu_lib.models.builders import build_fusion_encoder
from promu_lib.models.pretraining import LOSS_NAMES, PromuPretrainer
from promu_lib.progress import Progress
from promu_lib.train import distributed
from promu_lib.train.common import (
    build_optimizer,
    build_scheduler,
    check_finite,
    checkpoint_exists,
    load_checkpoint,
    one_cpu_thread,
    pick_device,
    save_checkpoint,
    save_weights,
    seed_everything,
    to_device,
)

ENCODER_FILE = "encoder.safetensors"
# config sections a pre-training result depends on (its cache key)
SECTIONS: tuple[str, ...] = ("data", "text", "vision", "fusion", "mining", "pretrain")


def pretrain_dir(cfg: Config, seed: int) -> Path:
    return stage_dir(cfg, "pretrain", *SECTIONS, extra={"seed": seed})


def loss_weights(cfg: Config) -> dict[str, float]:
    p = cfg.pretrain
    return {"itm": p.lambda_itm, "cit": p.lambda_cit, "coe": p.lambda_coe, "cir": p.lambda_cir}


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _micro_seed(seed: int, step: int, micro: int) -> int:
    """The seed of one micro-batch (global index ``micro`` within optimiser step ``step``).

    Dropout and hard-negative sampling draw from RNGs seeded with it, so they depend only on
    (seed, step, micro-batch): a resumed run, N DDP ranks and one process with N-step gradient
    accumulation all see the same random numbers.
    """
    return (seed * 1_000_003 + step) * 1_009 + micro


def pretrain(
    cfg: Config, seed: int = 0, out_dir: Path | None = None, progress_bar: bool | None = None
) -> Path:
    """Run (or resume, or return the cached) pre-training; returns the output directory.

    One process per output directory (``promu_lib.locks``): a second one waits, then finds
    the first's result. Under torchrun the ranks share their run and take no lock."""
    check_objects(cfg)
    out = Path(out_dir) if out_dir is not None else pretrain_dir(cfg, seed)
    if not is_done(out):
        alone = int(os.environ.get("WORLD_SIZE", "1")) <= 1
        with dir_lock(out, "pre-training", enabled=alone):
            if not is_done(out):
                with one_cpu_thread(cfg.run.device):
                    _pretrain(cfg, seed, out, progress_bar)
    return out


def check_objects(cfg: Config) -> None:
    """ConfigError (one line) for ``data.objects=crops`` when COE is on: Eq. 7 averages the
    patches inside each object's box, and crop files carry no box."""
    if cfg.data.objects == "crops" and loss_weights(cfg)["coe"] != 0:
        raise ConfigError(
            "data.objects=crops: PROMU's COE (pretrain.lambda_coe="
            f"{cfg.pretrain.lambda_coe:g}) needs each object's box in the image (Eq. 7) and "
            "crop files carry none; expected data.objects=boxes (boxes from `promu data "
            "detect`) or pretrain.lambda_coe=0"
        )


def _pretrain(cfg: Config, seed: int, out: Path, progress_bar: bool | None) -> Path:
    """The run itself (under the lock of :func:`pretrain`)."""
    show = cfg.run.progress if progress_bar is None else progress_bar
    device = pick_device(cfg.run.device)
    d = distributed.init(device)
    seed_everything(seed, cfg.run.deterministic)

    if d.main:  # one process mines (cached); the others wait and read its labels
        mine_labels(cfg, progress=show)
    distributed.barrier(d)
    labels = load_pseudo_labels(mine_labels(cfg, progress=False))
    tokenizer = build_tokenizer(cfg)
    data = CaptionDataset(cfg, tokenizer, labels, soft=cfg.pretrain.soft_labels, progress=show)
    p = cfg.pretrain
    per_epoch = distributed.steps_per_epoch(len(data), p.batch_size, p.grad_accum, d)
    if per_epoch == 0:
        raise ValueError(
            f"pre-training batch {p.batch_size} x accum {p.grad_accum} x {d.world} process(es) "
            f"exceeds the {len(data)} caption pairs"
        )

    seed_everything(seed, cfg.run.deterministic)  # the model's init does not depend on the data
    encoder = build_fusion_encoder(cfg, tokenizer)
    model = PromuPretrainer(
        encoder, len(labels.nouns), len(labels.relation_labels), p.itm_hard_negatives
    ).to(device)
    weights = loss_weights(cfg)
    active = tuple(k for k in LOSS_NAMES if weights[k] != 0)
    decay = [q for q in model.parameters() if q.ndim > 1]
    flat = [q for q in model.parameters() if q.ndim <= 1]
    optimizer = build_optimizer(
        [
            {"params": decay, "weight_decay": p.weight_decay},
            {"params": flat, "weight_decay": 0.0},
        ],
        lr=p.lr,
        betas=tuple(p.betas),
    )
    scheduler = build_scheduler(optimizer, p.steps, p.warmup_ratio)
    history: list[dict] = []
    step = 0
    ckpt = out / "ckpt"
    if checkpoint_exists(ckpt):
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        step, history = state["step"], state["extra"]["history"]
        if d.main:  # in a Slurm job's log: where a requeued or rerun job picked up
            print(
                f"[promu] pre-training resumes at step {step} of {p.steps} from {ckpt}", flush=True
            )
    ddp = (
        DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(active) < len(LOSS_NAMES),  # ablations leave heads idle
        )
        if d.enabled
        else model
    )
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if (p.bf16 and device.type == "cuda")
        else contextlib.nullcontext
    )

    model.train()
    t0 = time.perf_counter()
    with Progress(p.steps, "pre-train", show and d.main, p.log_every, initial=step) as bar:
        while step < p.steps:
            epoch, in_epoch = divmod(step, per_epoch)
            order = _epoch_order(len(data), seed, epoch)
            micro = list(
                distributed.step_micro_batches(order, in_epoch, p.batch_size, p.grad_accum, d)
            )
            sums = dict.fromkeys(active, 0.0)
            for a, indices in enumerate(micro):
                batch = to_device(collate_captions([data[i] for i in indices], data.pad_id), device)
                last = a == len(micro) - 1
                sync = contextlib.nullcontext() if (last or not d.enabled) else ddp.no_sync()
                micro_seed = _micro_seed(seed, step, a * d.world + d.rank)
                torch.manual_seed(micro_seed)  # dropout
                negatives = torch.Generator().manual_seed(micro_seed)
                with sync, autocast():
                    named = ddp(batch, active, negatives)
                    loss = losses.total_loss(named, weights) / len(micro)
                check_finite(loss, step, batch["ids"])
                loss.backward()
                for k, v in named.items():
                    sums[k] += float(v.detach()) / len(micro)
            torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            optimizer.step()
            model.encoder.clamp_temperature_()  # tau stays in bounds, its gradient alive
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            logged = {
                k: float(distributed.mean_over_ranks(torch.tensor(v), d)) for k, v in sums.items()
            }
            logged["total"] = sum(weights[k] * v for k, v in logged.items())
            bar.update(**logged)
            if step % p.log_every == 0 or step == p.steps:
                history.append(
                    {
                        "step": step,
                        "lr": scheduler.get_last_lr()[0],
                        **logged,
                        "seconds": time.perf_counter() - t0,
                    }
                )
            if d.main and (step % p.checkpoint_every == 0 or step == p.steps):
                save_checkpoint(ckpt, model, optimizer, scheduler, step, {"history": history})
                atomic_write_jsonl(out / "metrics.jsonl", history)
    if d.main:
        save_weights(out / ENCODER_FILE, torch.nn.ModuleDict({"encoder": model.encoder}))
        mark_done(
            out,
            {
                "seed": seed,
                "steps": step,
                "losses": list(active),
                "soft_labels": p.soft_labels,
                "itm_hard_negatives": p.itm_hard_negatives,
                "seconds_this_process": time.perf_counter() - t0,
                "world_size": d.world,
                "labels": str(labels.meta.get("stage_dir", "")),
            },
        )
    distributed.finish(d)
    return out


def register(sub) -> None:
    """``promu pretrain``."""
    from promu_lib.config import add_config_arguments, config_from_args

    p = sub.add_parser(
        "pretrain",
        help="PROMU pre-training (mines pseudo-labels first); runs under torchrun unchanged",
    )
    add_config_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output directory (default: the cache by config hash)")

    def run(args) -> int:
        out = pretrain(config_from_args(args), seed=args.seed, out_dir=args.out)
        print(out / ENCODER_FILE)
        return 0

    p.set_defaults(func=run)
