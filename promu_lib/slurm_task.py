"""What runs inside a Slurm job of the jobs pass: one job (``promu_lib.jobs``: a
``Pretrain`` or a ``Finetune``), in every task (process) of the job.

:class:`SlurmTask` is the callable that submitit pickles at submission and calls on the node
(``python -m submitit.core._submit``). It sets the torch threads to the job's CPUs per task
(one process per CPU budget, like the local workers' one thread each), and for a pre-training
with several tasks maps Slurm's environment onto the one ``torchrun`` sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT; submitit's ``TorchDistributedEnvironment``), so that
``promu_lib.train.distributed.init`` starts the same process group as under torchrun: the
code path is the same, and CIT gathers its negatives across every rank.

Preemption and time limits: Slurm signals the job (SIGUSR2, ``slurm.signal_delay_s`` before
its limit, or on preemption); submitit then calls :meth:`SlurmTask.checkpoint`, which asks to
run the same task again, and requeues the job. The training loops keep their own checkpoints
(``<run>/ckpt``, every ``pretrain.checkpoint_every`` steps, every fine-tuning epoch), so the
requeued job resumes there and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any

from promu_lib.config import Config


class SlurmTask:
    """Run ``job`` under ``cfg`` in a Slurm job (submitit's checkpointable callable)."""

    def __init__(self, job: Any, cfg: Config) -> None:
        self.job = job
        self.cfg = cfg

    def __call__(self) -> Any:
        import submitit
        import torch

        os.environ["PROMU_PROGRESS"] = "0"
        torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
        tasks = submitit.JobEnvironment().num_tasks
        if self.job.kind == "pretrain" and tasks > 1:
            # torchrun's variables first (CUDA_VISIBLE_DEVICES before anything touches CUDA),
            # decided from the config, not by asking CUDA
            gpus = self.cfg.slurm.pretrain.gpus_per_node > 0 and self.cfg.run.device != "cpu"
            export_torch_distributed_env(one_gpu_per_task=gpus)
            # then the labels, before the process group (whose barrier would time out while
            # one rank mines for hours): one task mines under the mining lock, the others
            # wait on it and then find the labels done
            from promu_lib.mining import mine_labels

            mine_labels(self.job.config(self.cfg), progress=False)
        return self.job.run(self.cfg)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or at the time limit: run again (the training resumes from its own last
        checkpoint); submitit requeues the job with this."""
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTask(self.job, self.cfg), *args, **kwargs)

    def __repr__(self) -> str:
        return f"SlurmTask({self.job!r})"


def export_torch_distributed_env(one_gpu_per_task: bool) -> dict[str, str]:
    """Set the variables torchrun sets, from Slurm's (``SLURM_PROCID``, ``SLURM_NTASKS``,
    ``SLURM_LOCALID``, the job's first node as the master); returns them.

    ``one_gpu_per_task``: ``CUDA_VISIBLE_DEVICES`` becomes the task's local rank, so each
    process sees its own GPU as ``cuda:0``."""
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(
        set_cuda_visible_devices=one_gpu_per_task, overwrite=True
    )
    return {
        "MASTER_ADDR": env.master_addr,
        "MASTER_PORT": str(env.master_port),
        "RANK": str(env.rank),
        "WORLD_SIZE": str(env.world_size),
        "LOCAL_RANK": str(env.local_rank),
    }
