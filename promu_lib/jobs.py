"""Jobs and their runner: what every study trains, cached on disk and run in worker processes.

A job is a small frozen dataclass (:class:`Pretrain`, :class:`Finetune`); its result is cached
on disk by the training functions (config hash + seed + init), so a study simply lists the jobs
it needs (``study.jobs(cfg)``), :func:`run_jobs` trains what is missing and returns every
result. Missing jobs run in a pool of worker processes with one torch thread each (2 workers on
a 2-core machine do about twice the work of one process with 2 threads on models this small).
Mining runs first, one config at a time (no two workers mine into the same directory); then
every job starts as soon as the job it starts from (a pre-training, or a fine-tuning for
cross-task transfer) has finished. With ``run.executor=slurm`` each missing job is a Slurm job
instead (``promu_lib.slurm``), and a pre-training mines its own labels.

The pre-training variants of PROMU's ablations (Eq. 11 with a loss switched off, or hard
labels) are :data:`PRETRAIN_VARIANTS`; which table row uses which job is the studies' business
(``promu_lib.studies``).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from promu_lib.config import Config

# -- pre-training variants ---------------------------------------------------------------------

PRETRAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "promu": {},
    "no-coe": {"pretrain.lambda_coe": 0.0},  # w/o entity-object alignment
    "no-cir": {"pretrain.lambda_cir": 0.0},  # w/o relation-image alignment
    "hard": {"pretrain.soft_labels": False},  # w/o soft pseudo-labels
    "align-only": {"pretrain.lambda_coe": 0.0, "pretrain.lambda_cir": 0.0},  # ITM + CIT
}


@dataclass(frozen=True)
class Pretrain:
    """One pre-training run: a variant of Eq. 11 and a prompt-template pair (Table 3)."""

    kind: ClassVar[str] = "pretrain"
    variant: str = "promu"
    entity_template: int = 0
    relation_template: int = 0
    seed: int = 0

    def prerequisite(self) -> None:
        """The job this one starts from: none."""
        return None

    def is_done(self, cfg: Config) -> bool:
        from promu_lib.cache import is_done

        return is_done(self.encoder_file(cfg).parent)

    def describe(self) -> str:
        """``pretrain promu seed 0`` (``(templates 1/0)`` when not the first pair)."""
        templates = (self.entity_template, self.relation_template)
        pair = f" (templates {templates[0]}/{templates[1]})" if any(templates) else ""
        return f"pretrain {self.variant}{pair} seed {self.seed}"

    def slug(self) -> str:
        """A short name (a Slurm job name): ``promu-pt-promu-s0``."""
        templates = f"-t{self.entity_template}{self.relation_template}"
        pair = templates if self.entity_template or self.relation_template else ""
        return f"promu-pt-{self.variant}{pair}-s{self.seed}"

    def config(self, cfg: Config) -> Config:
        if self.variant not in PRETRAIN_VARIANTS:
            raise ValueError(f"unknown pre-training variant {self.variant!r}")
        return cfg.replace(
            **PRETRAIN_VARIANTS[self.variant],
            **{
                "mining.entity_template": self.entity_template,
                "mining.relation_template": self.relation_template,
            },
        )

    def encoder_file(self, cfg: Config) -> Path:
        from promu_lib.train.pretrain import ENCODER_FILE, pretrain_dir

        return pretrain_dir(self.config(cfg), self.seed) / ENCODER_FILE

    def run(self, cfg: Config) -> Path:
        from promu_lib.train.pretrain import ENCODER_FILE, pretrain

        return pretrain(self.config(cfg), seed=self.seed, progress_bar=False) / ENCODER_FILE


@dataclass(frozen=True)
class Finetune:
    """One fine-tuning run. ``init``: a :class:`Pretrain` (its encoder), or a
    :class:`Finetune` (cross-task transfer of its backbone), or None (from scratch)."""

    kind: ClassVar[str] = "finetune"
    dataset: str
    model: str
    init: Pretrain | Finetune | None = None
    seed: int = 0
    image_mode: str = "true"
    train_fraction: float = 1.0

    def config(self, cfg: Config) -> Config:
        if self.train_fraction == 1.0:
            return cfg
        return cfg.replace(**{"finetune.train_fraction": self.train_fraction})

    def init_file(self, cfg: Config) -> Path | None:
        if self.init is None:
            return None
        if isinstance(self.init, Pretrain):
            return self.init.encoder_file(cfg)
        return self.init.out_dir(cfg) / "model.safetensors"

    def out_dir(self, cfg: Config) -> Path:
        from promu_lib.train.finetune import finetune_dir

        return finetune_dir(
            self.config(cfg),
            self.dataset,
            self.model,
            init=self.init_file(cfg),
            seed=self.seed,
            image_mode=self.image_mode,
        )

    def prerequisite(self) -> Pretrain | Finetune | None:
        """The job this one starts from (its ``init``)."""
        return self.init

    def is_done(self, cfg: Config) -> bool:
        """Finished (its cache key holds the hash of its init file: ask once that is done)."""
        from promu_lib.cache import is_done

        return is_done(self.out_dir(cfg))

    def describe(self) -> str:
        """``finetune mnre/promu seed 0 from [pretrain promu seed 0]``."""
        text = f"finetune {self.dataset}/{self.model} seed {self.seed}"
        if self.image_mode != "true":
            text += f" images {self.image_mode}"
        if self.train_fraction != 1.0:
            text += f" fraction {self.train_fraction:g}"
        return text + (f" from [{self.init.describe()}]" if self.init is not None else "")

    def slug(self) -> str:
        """A short name (a Slurm job name): ``promu-ft-mnre-promu-pt-s0``."""
        start = {None: "", "pretrain": "-pt", "finetune": "-ft"}[self.init and self.init.kind]
        return f"promu-ft-{self.dataset}-{self.model}{start}-s{self.seed}"

    def run(self, cfg: Config) -> dict[str, Any]:
        from promu_lib.train.finetune import finetune

        return finetune(
            self.config(cfg),
            self.dataset,
            self.model,
            init=self.init_file(cfg),
            seed=self.seed,
            image_mode=self.image_mode,
        )


# -- the runner --------------------------------------------------------------------------------


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["PROMU_PROGRESS"] = "0"


def _run_one(job: Pretrain | Finetune, cfg: Config) -> Any:
    return job.run(cfg)


def _pool(workers: int) -> cf.ProcessPoolExecutor:
    """Spawned worker processes with one torch thread each. (Not ``max_tasks_per_child``: on
    Python 3.11 a pool whose worker retires that way can hang, seen here.)"""
    ctx = mp.get_context("spawn")
    return cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)


def _mine_all(configs: list[Config]) -> None:
    from promu_lib.mining import mine_labels

    for c in configs:
        mine_labels(c, progress=False)


def map_in_workers(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None = None
) -> list[Any]:
    """``[fn(item) for item in items]``, spread over worker processes (one torch thread each)
    like the jobs; ``fn`` must be picklable (a module-level function or a partial of one)."""
    workers = workers or min(2, os.cpu_count() or 1)
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with _pool(workers) as pool:
        return list(pool.map(fn, items))


def _dependency(job: Pretrain | Finetune) -> Pretrain | Finetune | None:
    return job.prerequisite()


def _with_dependencies(jobs: Iterable[Pretrain | Finetune]) -> list[Pretrain | Finetune]:
    """The jobs and everything they start from, each after what it depends on."""
    order: list[Pretrain | Finetune] = []

    def visit(job: Pretrain | Finetune) -> None:
        dep = _dependency(job)
        if dep is not None:
            visit(dep)
        if job not in order:
            order.append(job)

    for job in jobs:
        visit(job)
    return order


def _is_cached(job: Pretrain | Finetune, cfg: Config) -> bool:
    return job.is_done(cfg)


def _check_objects(order: Sequence[Pretrain | Finetune], cfg: Config) -> None:
    """Each job's refusal of ``data.objects=crops`` (COE, models that read boxes), up front."""
    from promu_lib.models.registry import check_objects, model_spec
    from promu_lib.train.pretrain import check_objects as check_pretrain

    for job in order:
        if isinstance(job, Pretrain):
            check_pretrain(job.config(cfg))
        else:
            check_objects(job.config(cfg), model_spec(job.model))


def run_jobs(
    cfg: Config,
    jobs: Sequence[Pretrain | Finetune],
    workers: int | None = None,
    progress: bool = False,
) -> dict[Pretrain | Finetune, Any]:
    """Run (or read from cache) every job and what it depends on; returns job -> result
    (an encoder path for pre-training, the metrics dict for fine-tuning).

    A job starts as soon as the job it starts from has finished (no stage-wide barrier), and
    jobs that others wait for start first, so both workers stay busy until the end.
    ``progress``: a bar (a log line per job off a terminal) over the jobs.

    ``cfg.run.executor == "slurm"``: every missing job is a Slurm job instead, its prerequisite
    a Slurm dependency (``promu_lib.slurm``); ``workers`` does not apply.
    """
    from promu_lib.cache import is_done
    from promu_lib.mining import mining_dir
    from promu_lib.progress import Progress

    order = _with_dependencies(dict.fromkeys(jobs))
    _check_objects(order, cfg)  # before any mining or training: one line, at once
    if cfg.run.executor == "slurm":
        from promu_lib.slurm import run_on_slurm

        return run_on_slurm(cfg, order, progress=progress)
    workers = workers or min(2, os.cpu_count() or 1)
    # the pseudo-labels of each pre-training, one at a time before any job (two workers must
    # not mine the same labels at once), in a process of their own when there are workers:
    # spaCy and the teacher are not kept for the whole pass
    to_mine = {
        mining_dir(c): c
        for c in (job.config(cfg) for job in order if isinstance(job, Pretrain))
        if not is_done(mining_dir(c))
    }
    if to_mine and workers > 1:
        with _pool(1) as miner:
            miner.submit(_mine_all, list(to_mine.values())).result()
    elif to_mine:
        _mine_all(list(to_mine.values()))
    needed = {d for d in map(_dependency, order) if d is not None}
    results: dict[Pretrain | Finetune, Any] = {}
    waiting = sorted(order, key=lambda j: j not in needed)  # stable: prerequisites first
    pool = None
    running: dict[cf.Future, Pretrain | Finetune] = {}

    def ready(job: Pretrain | Finetune) -> bool:
        dep = _dependency(job)
        return dep is None or dep in results

    bar = Progress(len(order), "jobs", progress, log_every=1)
    trained = 0

    def finish(job: Pretrain | Finetune, result: Any, fresh: bool) -> None:
        nonlocal trained
        results[job] = result
        trained += fresh
        bar.update(trained=trained)

    try:
        while waiting or running:
            for job in [j for j in waiting if ready(j)]:
                waiting.remove(job)
                if _is_cached(job, cfg):  # a finished run is read here: no worker needed
                    finish(job, job.run(cfg), False)
                elif workers <= 1:
                    finish(job, job.run(cfg), True)
                else:
                    pool = pool or _pool(workers)
                    running[pool.submit(_run_one, job, cfg)] = job
            if running:
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    finish(running.pop(fut), fut.result(), True)
            elif waiting and not any(map(ready, waiting)):
                raise RuntimeError(f"jobs wait on jobs that never run: {waiting}")
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results
