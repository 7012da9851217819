"""Shared fixtures."""

from __future__ import annotations

import pytest
from slurm_cluster import SlurmCluster, missing_programs

from promu_lib.data import datasets


@pytest.fixture(autouse=True)
def _fresh_once_warnings():
    """Warnings said once per process (truncated posts) are said again in each test."""
    datasets._warned.clear()
    yield


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node Slurm (``tests/slurm_cluster.py``) for the session, its daemons
    stopped at the end; ``SLURM_CONF`` points the clients (and submitit) at it. Skipped, with
    the reason, where Slurm is not installed (``.ci/run`` installs it)."""
    missing = missing_programs()
    if missing:
        pytest.skip(
            f"Slurm is not installed here (no {', '.join(missing)}): the Slurm tests need "
            "slurm-wlm's daemons and clients (.ci/run installs them; README, 'On a Slurm "
            "cluster')"
        )
    root = tmp_path_factory.mktemp("slurm", numbered=True)
    cluster = SlurmCluster(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
