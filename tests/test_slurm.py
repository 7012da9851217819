"""The jobs pass on a real Slurm (run.executor=slurm): a single-node cluster started by the
``slurm_cluster`` fixture (conftest.py), toy-world jobs of a few steps.

- a fine-tuning waits for its pre-training (afterok), and both equal the local runner's
  results byte for byte; a second pass submits nothing;
- a 2-task pre-training job (DDP over gloo, ranks from Slurm's environment) equals the same
  pre-training under torchrun with 2 processes;
- a job cancelled mid-run (scancel) resumes from its checkpoint when the pass is rerun, and a
  preempted one (SIGUSR2, as Slurm sends before a time limit) requeues itself and resumes:
  both end with the uninterrupted run's weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from worlds import world

from promu_lib.config import load_config, save_config
from promu_lib.data.toyworld import build_toy_world
from promu_lib.jobs import Finetune, Pretrain, run_jobs
from promu_lib.slurm import SlurmJobFailed, folder_of
from promu_lib.train.pretrain import ENCODER_FILE, pretrain

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BASE = {
    **world(twitter2015=(20, 5, 5), mnre=(10, 3, 3), captions=48),
    "mining.teacher_steps": 3,
    "mining.top_m_nouns": 8,
    "pretrain.steps": 3,
    "pretrain.batch_size": 8,
    "pretrain.checkpoint_every": 1,
    "pretrain.log_every": 1,
    "finetune.epochs": 1,
    "run.progress": False,
    "run.seeds": [0],
    "run.device": "cpu",
    "slurm.poll_seconds": 0.5,
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm_world") / "data"
    build_toy_world(load_config("tiny", overrides={**BASE, "data.root": str(root)}), progress=False)
    return root


def cfg_at(data_root: Path, runs: Path, executor: str = "local", **extra):
    over = {**BASE, "data.root": str(data_root), "run.output_dir": str(runs)}
    over |= {"run.executor": executor, "slurm.folder": str(runs / "slurm"), **extra}
    return load_config("tiny", overrides=over)


@pytest.fixture
def one_thread():
    """The local reference runs in this process with one torch thread, as a Slurm task with
    one CPU (and the local runner's workers) do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(path: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock column."""
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _timeless(value):
    """A fine-tuning's metrics without its timings."""
    if isinstance(value, dict):
        return {
            k: _timeless(v) for k, v in value.items() if "second" not in k and k != "finished_at"
        }
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _same_files(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _submitted_ids(text: str) -> dict[str, str]:
    """{what: job id} from the runner's "[promu] slurm: job <id> submitted: <what>" lines."""
    out = {}
    for line in text.splitlines():
        if line.startswith("[promu] slurm: job ") and " submitted: " in line:
            head, what = line.split(" submitted: ", 1)
            out[what.split(", after job")[0]] = head.split()[-1]
    return out


def test_a_finetuning_waits_for_its_pretraining_and_equals_the_local_run(
    slurm_cluster, data_root, tmp_path, one_thread, capsys
):
    pre = Pretrain("promu")
    jobs = [Finetune("mnre", "promu", init=pre)]
    local = cfg_at(data_root, tmp_path / "local")
    on_slurm = cfg_at(data_root, tmp_path / "slurm", "slurm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch: the collapse guard may warn
        expected = run_jobs(local, jobs, workers=1)
        capsys.readouterr()
        got = run_jobs(on_slurm, jobs)
    printed = capsys.readouterr().out
    ids = _submitted_ids(printed)
    assert list(ids) == ["pretrain promu seed 0", "finetune mnre/promu seed 0 from "
                         "[pretrain promu seed 0]"], printed  # fmt: skip
    assert f"after job {ids['pretrain promu seed 0']}" in printed
    for i in ids.values():  # the results are back; the processes may still be exiting
        _when(lambda i=i: slurm_cluster.job_info(i)["JobState"] == "COMPLETED", 60, "COMPLETED")
    pt, ft = (slurm_cluster.job_info(i) for i in ids.values())
    assert ft["StartTime"] >= pt["EndTime"], (pt["EndTime"], ft["StartTime"])  # ISO times
    # byte for byte: the encoder, the fine-tuned weights, the predictions; the metrics but
    # for their timings
    _same_files(pre.encoder_file(local).parent, pre.encoder_file(on_slurm).parent,
                [ENCODER_FILE])  # fmt: skip
    assert _rows(pre.encoder_file(local).parent / "metrics.jsonl") == _rows(
        pre.encoder_file(on_slurm).parent / "metrics.jsonl"
    )
    _same_files(jobs[0].out_dir(local), jobs[0].out_dir(on_slurm),
                ["model.safetensors", "predictions.jsonl"])  # fmt: skip
    # the same but for the timings and where the init file lives (its hash is the same)
    assert got[jobs[0]].pop("init") == str(pre.encoder_file(on_slurm))
    assert expected[jobs[0]].pop("init") == str(pre.encoder_file(local))
    assert _timeless(got[jobs[0]]) == _timeless(expected[jobs[0]])
    assert got[jobs[0]]["init_sha256"] is not None
    assert got[pre] == pre.encoder_file(on_slurm)
    # a pass over done jobs submits nothing and returns the same results
    again = run_jobs(on_slurm, jobs)
    assert "submitted" not in capsys.readouterr().out
    assert _timeless(again[jobs[0]]) == _timeless({**got[jobs[0]], "init": again[jobs[0]]["init"]})


def test_a_two_task_pretraining_job_equals_torchrun_with_two_processes(
    slurm_cluster, data_root, tmp_path
):
    """The same DDP code path: ranks from Slurm's environment (submitit) vs from torchrun's;
    CIT on (its negatives gathered across both ranks)."""
    extra = {"pretrain.batch_size": 4, "slurm.pretrain.tasks_per_node": 2}
    on_slurm = cfg_at(data_root, tmp_path / "runs", "slurm", **extra)
    job = Pretrain("promu")
    encoder = run_jobs(on_slurm, [job])[job]
    done = json.loads((encoder.parent / "DONE.json").read_text())
    assert done["world_size"] == 2
    cfg_file = save_config(on_slurm, tmp_path / "cfg.yaml")
    out = tmp_path / "torchrun"
    script = tmp_path / "ddp_run.py"
    script.write_text(
        "import torch; torch.set_num_threads(1)\n"
        "from promu_lib.config import load_config\n"
        "from promu_lib.train.pretrain import pretrain\n"
        f"pretrain(load_config('tiny', file={str(cfg_file)!r}), seed=0, out_dir={str(out)!r})\n"
    )
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    subprocess.run([*cmd, str(script)], check=True, env=env, timeout=300)
    _same_files(encoder.parent, out, [ENCODER_FILE])
    assert _rows(encoder.parent / "metrics.jsonl") == _rows(out / "metrics.jsonl")
    assert "cit" in _rows(out / "metrics.jsonl")[0]


def _when(condition, timeout: float = 240.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ckpt_step(run: Path) -> int:
    trainer = run / "ckpt" / "trainer.json"
    try:
        return json.loads(trainer.read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _in_background(fn):
    """Run ``fn`` in a thread; returns a list that receives its result or exception."""
    box: list = []

    def target():
        try:
            box.append(fn())
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            box.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return box, thread


def _job_id_of(cfg) -> str:
    """The id of the single job the pass has in the queue (its record)."""
    records = list((folder_of(cfg) / "queued").glob("*.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())["job_id"]


# long enough that a plain scancel (SIGTERM, which submitit ignores, then SIGKILL a few seconds
# later) still finds it running: ~0.1 s a step on 2 busy cores
LONG = {"pretrain.steps": 120}


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory, one_thread_module) -> Path:
    """The long pre-training, uninterrupted, in this process (one thread)."""
    runs = tmp_path_factory.mktemp("uninterrupted")
    return pretrain(cfg_at(data_root, runs, **LONG), seed=0, out_dir=runs / "reference")


@pytest.fixture(scope="module")
def one_thread_module():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("how", ["scancel", "preempt"])
def test_an_interrupted_pretraining_resumes_to_the_same_weights(
    slurm_cluster, data_root, tmp_path, uninterrupted, how
):
    """``scancel`` mid-run: the pass fails naming the job's log; rerun, it resumes from the
    last checkpoint. ``preempt``: SIGUSR2 (Slurm's signal before a time limit or on
    preemption), the job checkpoints, requeues itself and resumes in the same pass."""
    reference = uninterrupted
    on_slurm = cfg_at(data_root, tmp_path / "slurm", "slurm", **LONG)
    job = Pretrain("promu")
    run = job.encoder_file(on_slurm).parent
    box, thread = _in_background(lambda: run_jobs(on_slurm, [job]))
    _when(lambda: (folder_of(on_slurm) / "queued").is_dir() and _ckpt_step(run) >= 2,
          what="the job's second checkpoint")  # fmt: skip
    job_id = _job_id_of(on_slurm)
    at = _ckpt_step(run)
    assert at < LONG["pretrain.steps"], "the job ended before it was interrupted"
    if how == "scancel":
        subprocess.run(["scancel", job_id], check=True)
        thread.join(timeout=120)
        assert isinstance(box[0], SlurmJobFailed), box
        assert f"Slurm job {job_id}" in str(box[0]) and "CANCELLED" in str(box[0])
        assert f"{job_id}_0_log.out:" in str(box[0])  # the log, with a line
        assert not (run / "DONE.json").exists()
        encoder = run_jobs(on_slurm, [job])[job]  # the rerun: a new job that resumes
    else:
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        _when(lambda: slurm_cluster.job_info(job_id)["JobState"] == "PENDING", 60,
              "the requeue")  # fmt: skip
        # a requeued job waits ~2 min to start again (Slurm's fixed delay): start it now
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"], check=True)
        thread.join(timeout=240)
        assert not thread.is_alive() and not isinstance(box[0], BaseException), box
        encoder = box[0][job]
        assert slurm_cluster.job_info(job_id)["Restarts"] == "1"
    log = "\n".join(p.read_text() for p in folder_of(on_slurm).glob("*_0_log.out"))
    assert "pre-training resumes at step" in log, log[-3000:]
    _same_files(reference, encoder.parent, [ENCODER_FILE])
    assert _rows(reference / "metrics.jsonl") == _rows(encoder.parent / "metrics.jsonl")


def test_a_failed_job_names_its_log_line_and_its_dependent_never_runs(
    slurm_cluster, data_root, tmp_path
):
    """No MNRE data where the job looks: the pre-training fails inside Slurm; the error comes
    back with the job's log and the line of its traceback; the fine-tuning that waits for it
    is cancelled by Slurm (afterok never satisfied), not left pending."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    on_slurm = cfg_at(empty, tmp_path / "runs", "slurm")
    pre = Pretrain("promu")
    with pytest.raises(SlurmJobFailed) as err:
        run_jobs(on_slurm, [Finetune("mnre", "promu", init=pre)])
    text = str(err.value)
    assert text.startswith("2 of 2 Slurm job(s) failed"), text
    failed, never = text.split(": ", 1)[1].split(" | ")
    log_ref = failed.rsplit("log: ", 1)[1]
    log, line = log_ref.rsplit(":", 1)
    assert "(pretrain promu seed 0) failed in task 0: " in failed
    lines = Path(log).read_text().splitlines()
    assert lines[int(line) - 1].startswith("Traceback"), (log_ref, lines[int(line) - 1])
    assert "not run: job" in never and "it waits for failed" in never, never
