"""Every training job of a run, by stage: what each stage notebook asks ``run_jobs`` for when it
runs with its default parameters (the profile's scope and seeds).

The pipeline trains the jobs of all the stages it is about to execute in one pass of
:func:`promu_lib.experiments.run_jobs` before the first of them (both workers busy from the first
pre-training to the last fine-tuning; no stage waits for another's last job, and the worker
pool starts once), so the notebooks read their jobs from the cache. A notebook run on its own,
or with other parameters, still trains whatever it misses itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from promu_lib import tables
from promu_lib.config import Config
from promu_lib.experiments import (
    HVPNET_VARIANT_ROWS,
    TABLE1_ROWS,
    TABLE2_ROWS,
    Finetune,
    Pretrain,
)

Job = Pretrain | Finetune

# stage 02's pre-trainings (its ``variants`` parameter): those of Table 1's rows
PRETRAIN_STAGE_VARIANTS: tuple[str, ...] = ("promu", "no-coe", "no-cir", "hard", "align-only")


def stage_jobs(cfg: Config) -> dict[str, list[Job]]:
    """{stage name: its jobs}; stages that train nothing are absent."""
    from promu_lib.robustness import multimodal_rows

    seeds, scope = list(cfg.run.seeds), cfg.scope
    table1 = tables.row_jobs(TABLE1_ROWS, scope.datasets, seeds)
    first = seeds[0]
    return {
        "pretrain": [Pretrain(v) for v in PRETRAIN_STAGE_VARIANTS],
        "finetune": table1,
        "table1": table1,
        "table2": tables.row_jobs(TABLE2_ROWS, scope.datasets, seeds),
        "table3": tables.template_jobs(scope.table3_datasets, seeds),
        "fig3": [
            job(d, first)
            for job in (tables.scratch_job, tables.promu_job)
            for d in ("twitter2015", "mnre")
        ],  # fmt: skip
        "fig4": tables.scratch_vs_promu_jobs(scope.datasets, seeds),
        "fig5": [tables.scratch_job("twitter2015", first), tables.promu_job("twitter2015", first)],
        "hvpnet": [
            *tables.row_jobs(HVPNET_VARIANT_ROWS, scope.hvpnet_datasets, seeds),
            *tables.low_resource_jobs(
                scope.low_resource_datasets, seeds, scope.low_resource_fractions
            ),
            *tables.cross_task_jobs(seeds),
            *(Finetune(d, "hvpnet", seed=first) for d in scope.hvpnet_datasets),
        ],
        "robustness": [
            r.job(d, s) for r in multimodal_rows() for d in scope.datasets for s in seeds
        ],  # fmt: skip
    }


def jobs_of(cfg: Config, stages: Iterable[str]) -> list[Job]:
    """The jobs of ``stages``, each once, in stage order."""
    per_stage = stage_jobs(cfg)
    return list(dict.fromkeys(job for s in stages for job in per_stage.get(s, [])))
