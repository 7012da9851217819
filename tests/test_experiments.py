"""The job runner: dependencies first, in worker processes, then read from the cache."""

from __future__ import annotations

import warnings

import pytest
from worlds import toy_cfg

from promu_lib.data.toyworld import build_toy_world
from promu_lib.experiments import Finetune, run_jobs

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
