"""The jobs pass on a Slurm cluster (``run.executor=slurm``): each missing job becomes one
Slurm job, submitted through submitit, with the ``slurm`` section's resources.

:func:`run_on_slurm` submits the jobs in dependency order. A fine-tuning that starts from a
pre-training (or from another fine-tuning) is submitted at once with
``--dependency=afterok:<that job's id>`` (and ``--kill-on-invalid-dep=yes``): Slurm holds it
until its prerequisite has finished, and cancels it if that one failed. So the whole pass
sits in the queue from the start (queue waits overlap the pre-trainings), and the order holds
even if this process is interrupted. The runner then only watches: one line per submitted
job (its id), a progress line while waiting, and each job's result read back from submitit's
result pickle. The state of a job comes from ``squeue`` (no accounting database needed).

A job already done (its DONE marker in the cache) is never submitted; the jobs write the same
cache directories and take the same locks as local ones, on the filesystem the nodes share.
A job of an earlier pass still in the queue is waited for, not submitted again (its id is kept
in ``<slurm.folder>/queued/``). A failed job's error names its Slurm log and the line where
its traceback starts. :func:`dry_run` writes and prints the sbatch scripts without submitting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promu_lib.config import Config, SlurmJobConfig
from promu_lib.errors import MissingAssetError, PromuError
from promu_lib.io import atomic_write_json, atomic_write_text

# squeue states of a job that will still run (or is running)
ACTIVE = frozenset(
    "PENDING RUNNING CONFIGURING COMPLETING REQUEUED REQUEUE_FED REQUEUE_HOLD RESIZING "
    "SUSPENDED SIGNALING STAGE_OUT STOPPED".split()
)


class SlurmJobFailed(PromuError):
    """One or more Slurm jobs of the pass failed; the message names each one's log line."""


@dataclass
class Submitted:
    """A job of the pass in the queue: its Slurm id and how many tasks it runs."""

    job: Any
    job_id: str
    tasks: int
    after: str | None = None  # the id of the job it waits for
    terminal_seen: int = 0  # consecutive polls that saw it ended without its results
    state: str = "PENDING"
    failed: str | None = None
    result: Any = None
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# -- naming and resources ---------------------------------------------------------------------


def tasks_per_node(r: SlurmJobConfig) -> int:
    """Processes per node: ``tasks_per_node``, or one per GPU (one without GPUs)."""
    return r.tasks_per_node or max(1, r.gpus_per_node)


def sbatch_parameters(cfg: Config, job: Any, after: str | None = None) -> dict[str, Any]:
    """submitit's ``SlurmExecutor`` parameters for ``job`` (its sbatch options); ``after``:
    the job id it waits for (``afterok``)."""
    r: SlurmJobConfig = getattr(cfg.slurm, job.kind)
    params: dict[str, Any] = {
        "job_name": job.slug(),
        "time": r.time,
        "nodes": r.nodes,
        "ntasks_per_node": tasks_per_node(r),
        "cpus_per_task": r.cpus_per_task,
        "signal_delay_s": cfg.slurm.signal_delay_s,
        "stderr_to_stdout": True,  # one log per task: the traceback beside the progress lines
    }
    for name in ("partition", "account", "qos"):
        if getattr(r, name) is not None:
            params[name] = getattr(r, name)
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    extra: dict[str, Any] = {"requeue": True}  # preemption and time limits requeue the job
    if r.mem_gb is not None:
        extra["mem"] = f"{r.mem_gb}G"
    if after is not None:
        params["dependency"] = f"afterok:{after}"
        extra["kill-on-invalid-dep"] = "yes"  # its prerequisite failed: Slurm cancels it
    extra.update({k: v for k, v in r.sbatch.items() if v is not False})
    params["additional_parameters"] = extra
    return params


def folder_of(cfg: Config) -> Path:
    from promu_lib.paths import resolve

    return resolve(cfg.slurm.folder.format(profile=cfg.profile))


def sbatch_script(cfg: Config, job: Any, after: str | None = None) -> str:
    """The sbatch script submitit writes for ``job`` (the same function renders it)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = folder_of(cfg)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", str(folder)])
    return _make_sbatch_string(command=command, folder=folder, **sbatch_parameters(cfg, job, after))


# -- planning ---------------------------------------------------------------------------------


def plan(cfg: Config, order: Sequence[Any]) -> tuple[list[tuple[Any, Any]], dict[Any, Any]]:
    """(jobs to submit, each with the job it waits for or None; the done jobs, read from the
    cache), the prerequisites first. ``order``: dependencies first. A job whose prerequisite is submitted too is not
    done either (its cache key holds the hash of what that prerequisite writes)."""
    needed = {j.prerequisite() for j in order} - {None}
    submit: list[tuple[Any, Any]] = []
    cached: dict[Any, Any] = {}
    planned: set[Any] = set()
    for job in sorted(order, key=lambda j: j not in needed):  # stable: prerequisites first
        dep = job.prerequisite()
        if dep in planned:
            submit.append((job, dep))
            planned.add(job)
        elif job.is_done(cfg):
            cached[job] = None
        else:
            submit.append((job, None))
            planned.add(job)
    return submit, cached


def dry_run(cfg: Config, order: Sequence[Any], out: Any = None) -> list[Path]:
    """Write and print the sbatch script of every job the pass would submit (nothing is
    submitted); returns the files (``<slurm.folder>/dry-run/NNN_<job name>.sh``)."""
    out = out or sys.stdout
    submit, cached = plan(cfg, order)
    number = {job: i + 1 for i, (job, _) in enumerate(submit)}
    target = folder_of(cfg) / "dry-run"
    for old in target.glob("*.sh"):  # an earlier dry run's scripts: this plan replaces them
        old.unlink()
    files = []
    for job, dep in submit:
        after = f"<id of job {number[dep]}>" if dep is not None else None
        script = sbatch_script(cfg, job, after)
        path = atomic_write_text(target / f"{number[job]:03d}_{job.slug()}.sh", script)
        files.append(path)
        print(f"# ===== job {number[job]} of {len(submit)}: {job.describe()} -> {path}", file=out)
        print(script, file=out)
    r_pt, r_ft = cfg.slurm.pretrain, cfg.slurm.finetune
    n_pt = sum(j.kind == "pretrain" for j, _ in submit)
    print(
        f"# dry run: {len(submit)} job(s) would be submitted ({n_pt} pre-training(s) of "
        f"{r_pt.nodes} node(s) x {r_pt.gpus_per_node} GPU(s), {len(submit) - n_pt} "
        f"fine-tuning(s) of {r_ft.gpus_per_node} GPU(s), "
        f"{sum(d is not None for _, d in submit)} with an afterok dependency); "
        f"{len(cached)} already done; scripts in {target}",
        file=out,
    )
    return files


# -- the queue --------------------------------------------------------------------------------


def require_slurm() -> None:
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise MissingAssetError(
            "Slurm's sbatch and squeue (run.executor=slurm)",
            ["PATH"],
            "Run on a node that submits to the cluster, or set run.executor=local.",
        )


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: its state} for the ids squeue still knows (finished ones for MinJobAge)."""
    if not job_ids:
        return {}
    proc = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i|%T", f"--jobs={','.join(job_ids)}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    states = {}
    for line in proc.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in job_ids:
            states[jid] = state.strip()
    return states


def _record_file(cfg: Config, job: Any) -> Path:
    key = hashlib.sha256(repr(job).encode()).hexdigest()[:16]
    return folder_of(cfg) / "queued" / f"{key}.json"


def _queued_earlier(cfg: Config, job: Any) -> str | None:
    """The id of this job from an earlier pass, when it is still in the queue."""
    path = _record_file(cfg, job)
    if not path.is_file():
        return None
    job_id = json.loads(path.read_text(encoding="utf-8"))["job_id"]
    return job_id if queue_states([job_id]).get(job_id) in ACTIVE else None


def _submit(cfg: Config, job: Any, after: str | None) -> str:
    import submitit

    from promu_lib.slurm_task import SlurmTask

    executor = submitit.SlurmExecutor(folder=folder_of(cfg), max_num_timeout=cfg.slurm.max_timeouts)
    executor.update_parameters(**sbatch_parameters(cfg, job, after))
    try:
        sj = executor.submit(SlurmTask(job, cfg))
    except Exception as e:  # sbatch refused it (a partition that does not exist, ...)
        raise SlurmJobFailed(f"sbatch refused {job.describe()}: {str(e).strip()[-600:]}") from e
    atomic_write_json(_record_file(cfg, job), {"job_id": sj.job_id, "job": repr(job)})
    return str(sj.job_id)


def log_of(cfg: Config, job_id: str, task: int = 0) -> Path:
    return folder_of(cfg) / f"{job_id}_{task}_log.out"


def _result_pickle(cfg: Config, job_id: str, task: int) -> Path:
    return folder_of(cfg) / f"{job_id}_{task}_result.pkl"


def log_line(log: Path) -> int:
    """The line of ``log`` where its last traceback starts (else its last line)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    starts = [i + 1 for i, line in enumerate(lines) if line.startswith("Traceback")]
    return starts[-1] if starts else len(lines)


def _read_results(cfg: Config, s: Submitted) -> bool:
    """Read the job's result pickles once every task wrote one; True when it has ended."""
    from submitit.core.utils import pickle_load

    pickles = [_result_pickle(cfg, s.job_id, t) for t in range(s.tasks)]
    folder = folder_of(cfg)
    with contextlib.suppress(OSError):  # refreshes an NFS client's view of the directory
        folder.chmod(folder.stat().st_mode)
    if not all(p.is_file() for p in pickles):
        return False
    outcomes = [pickle_load(p) for p in pickles]
    for task, (outcome, value) in enumerate(outcomes):
        if outcome != "success":
            log = log_of(cfg, s.job_id, task)
            last = [x for x in str(value).strip().splitlines() if x.strip()][-1:]
            s.failed = (
                f"Slurm job {s.job_id} ({s.job.describe()}) failed in task {task}: "
                f"{last[0] if last else value}; log: {log}:{log_line(log)}"
            )
            return True
    s.result, s.done = outcomes[0][1], True
    return True


def _progress(subs: list[Submitted], t0: float) -> str:
    done = sum(s.done for s in subs)
    failed = sum(s.failed is not None for s in subs)
    running = sum(s.state == "RUNNING" and not s.done and s.failed is None for s in subs)
    waiting = len(subs) - done - failed - running
    return (
        f"[promu] slurm: {done}/{len(subs)} done, {running} running, {waiting} queued"
        + (f", {failed} failed" if failed else "")
        + f" ({time.perf_counter() - t0:.0f} s)"
    )


def run_on_slurm(cfg: Config, order: Sequence[Any], progress: bool = True) -> dict[Any, Any]:
    """Submit every job of ``order`` (dependencies first) that is not done, wait for them and
    return job -> result, as :func:`promu_lib.jobs.run_jobs` does locally. Raises
    :class:`SlurmJobFailed` naming each failed job's log line once every job has ended."""
    require_slurm()
    submit, cached = plan(cfg, order)
    subs: dict[Any, Submitted] = {}
    for job, dep in submit:
        after = subs[dep].job_id if dep is not None else None
        earlier = _queued_earlier(cfg, job)
        job_id = earlier or _submit(cfg, job, after)
        r: SlurmJobConfig = getattr(cfg.slurm, job.kind)
        subs[job] = Submitted(job, job_id, r.nodes * tasks_per_node(r), after)
        how = "still queued from an earlier pass" if earlier else "submitted"
        wait = f", after job {after}" if after else ""
        print(f"[promu] slurm: job {job_id} {how}: {job.describe()}{wait}", flush=True)
    results = {job: job.run(cfg) for job in cached}  # done: read from the cache
    try:
        _wait(cfg, subs, progress)
    except KeyboardInterrupt:
        ids = " ".join(s.job_id for s in subs.values() if not s.done and s.failed is None)
        print(
            "[promu] slurm: stopped waiting; the jobs stay queued. Run the pass again to wait "
            f"for them, or cancel them: scancel {ids}",
            file=sys.stderr,
            flush=True,
        )
        raise
    failed = [s.failed for s in subs.values() if s.failed]
    if failed:
        raise SlurmJobFailed(
            f"{len(failed)} of {len(subs)} Slurm job(s) failed: " + " | ".join(failed)
        )
    for job, s in subs.items():
        _record_file(cfg, job).unlink(missing_ok=True)
        results[job] = s.result
    return results


def _wait(cfg: Config, subs: dict[Any, Submitted], progress: bool) -> None:
    """Watch the queue until every job of ``subs`` has ended: its results read, or failed
    (a state outside :data:`ACTIVE` on two polls in a row, without its results)."""
    t0 = time.perf_counter()
    shown, shown_at = "", 0.0
    pending = list(subs.values())
    while pending:
        states = queue_states([s.job_id for s in pending])
        for s in list(pending):
            s.state = states.get(s.job_id, "(no longer known to squeue)")
            if _read_results(cfg, s):
                pending.remove(s)
            elif s.state not in ACTIVE:
                s.terminal_seen += 1  # twice in a row: not a state between requeues
                if s.terminal_seen >= 2:
                    log = log_of(cfg, s.job_id)
                    why = f"ended {s.state} without a result; log: {log}:{log_line(log)}"
                    if s.after and subs_by_id(subs, s.after).failed:
                        why = f"not run: job {s.after} it waits for failed ({s.state})"
                    s.failed = f"Slurm job {s.job_id} ({s.job.describe()}) {why}"
                    pending.remove(s)
            else:
                s.terminal_seen = 0
            if s.failed and s not in pending:
                print(f"[promu] {s.failed}", file=sys.stderr, flush=True)
        line = _progress(list(subs.values()), t0)
        counts = line.rsplit(" (", 1)[0]
        if progress and pending and (counts != shown or time.perf_counter() - shown_at > 60):
            print(line, flush=True)
            shown, shown_at = counts, time.perf_counter()
        if pending:
            time.sleep(cfg.slurm.poll_seconds)
    if subs and progress:
        print(_progress(list(subs.values()), t0), flush=True)


def subs_by_id(subs: dict[Any, Submitted], job_id: str) -> Submitted:
    return next(s for s in subs.values() if s.job_id == job_id)
