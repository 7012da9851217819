"""The job runner: dependencies first, in worker processes, then read from the cache."""

from __future__ import annotations

import warnings

import pytest
from worlds import toy_cfg

from promu_lib.data.toyworld import build_toy_world
from promu_lib.jobs import Finetune, run_jobs

pytestmark = pytest.mark.slow  # spawns two worker processes (~15 s on 2 busy cores)


def test_run_jobs_in_workers_runs_dependencies_first_then_reads_the_cache(tmp_path):
    cfg = toy_cfg(tmp_path, **{"finetune.epochs": 1})
    build_toy_world(cfg, progress=False)
    source = Finetune("mnre", "bert")
    jobs = [Finetune("twitter2015", "bert"), Finetune("twitter2017", "bert", init=source)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch: the collapse guard may warn
        first = run_jobs(cfg, jobs, workers=2)
        again = run_jobs(cfg, jobs, workers=2)
    assert set(first) == {*jobs, source}  # the transfer's source ran too
    assert first[jobs[1]]["init_sha256"] is not None
    for job in jobs:
        assert again[job] == first[job]


def test_pretraining_jobs_mine_their_labels_first_in_a_process_of_their_own(tmp_path):
    from promu_lib.cache import is_done
    from promu_lib.jobs import Pretrain
    from promu_lib.mining import mining_dir

    cfg = toy_cfg(
        tmp_path, **{"pretrain.steps": 2, "pretrain.batch_size": 4, "mining.teacher_steps": 2}
    )
    build_toy_world(cfg, progress=False)
    jobs = [Pretrain("promu"), Pretrain("promu", entity_template=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_jobs(cfg, jobs, workers=2)
    for job in jobs:
        assert is_done(mining_dir(job.config(cfg)))
        assert results[job] == job.encoder_file(cfg) and results[job].is_file()
    assert mining_dir(jobs[0].config(cfg)) != mining_dir(jobs[1].config(cfg))
