"""The stage runner: one training pass before the stages that need it, readers two at a time,
a failure stops the run; and the plan of every stage's jobs."""

from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import pytest

from promu_lib import pipeline, plan
from promu_lib.config import profile_config
from promu_lib.experiments import TABLE1_ROWS, Finetune, Pretrain
from promu_lib.paths import project_root
from promu_lib.pipeline import Stage


def _cfg(tmp_path: Path):
    cfg = profile_config("tiny")
    return cfg.replace(
        **{"run.output_dir": str(tmp_path / "runs"), "run.reports_dir": str(tmp_path / "reports")}
    )


def test_readers_are_grouped_and_every_other_stage_runs_alone():
    a, b = Stage("a", "a.ipynb", "A"), Stage("b", "b.ipynb", "B")
    r1, r2, r3 = (Stage(f"r{i}", f"r{i}.ipynb", "R", reader=True) for i in (1, 2, 3))
    assert pipeline._groups([a, r1, r2, b, r3]) == [[a], [r1, r2], [b], [r3]]
    assert [s.name for s in pipeline.STAGES if s.reader][0] == "table1"
    assert not any(s.reader for s in pipeline.STAGES[:4])  # data, mining, pretrain, finetune


def _fake_stages(monkeypatch, tmp_path, behaviour):
    """STAGES = two plain stages, then three readers; run_stage follows ``behaviour``."""
    stages = (
        Stage("first", "first.ipynb", "First"),
        Stage("train", "train.ipynb", "Train"),
        *(Stage(n, f"{n}.ipynb", n, reader=True) for n in ("r1", "r2", "r3")),
    )
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "cached_status", lambda stage, cfg, reports: None)
    jobs = {"train": [Pretrain("promu")], "r1": [Pretrain("hard")], "r3": [Pretrain("promu")]}
    monkeypatch.setattr(plan, "stage_jobs", lambda cfg: jobs)
    calls: list[tuple[str, object]] = []

    def fake_jobs(cfg, config_file, stages, reports):
        calls.append(("jobs", [s.name for s in stages]))
        return {"stage": "jobs", "title": "jobs", "status": "ok", "seconds": 0.0, "report": ""}

    def fake_stage(stage, cfg, config_file, reports, force):
        calls.append(("stage", stage.name))
        behaviour(stage)
        return {"stage": stage.name, "title": stage.title, "status": "ok", "seconds": 0.0,
                "report": f"{stage.name}.html"}  # fmt: skip

    monkeypatch.setattr(pipeline, "run_training_jobs", fake_jobs)
    monkeypatch.setattr(pipeline, "run_stage", fake_stage)
    return calls


def test_one_training_pass_before_the_first_stage_that_trains_and_readers_overlap(
    monkeypatch, tmp_path
):
    together = threading.Barrier(2, timeout=20)  # breaks unless two readers run at once

    def behaviour(stage):
        if stage.name in ("r1", "r2"):
            together.wait()

    calls = _fake_stages(monkeypatch, tmp_path, behaviour)
    assert pipeline.run_pipeline(_cfg(tmp_path)) == 0
    assert calls[:3] == [("stage", "first"), ("jobs", ["train", "r1", "r3"]), ("stage", "train")]
    assert sorted(calls[3:]) == [("stage", "r1"), ("stage", "r2"), ("stage", "r3")]
    index = (tmp_path / "reports" / "index.html").read_text()
    assert index.index(">jobs<") < index.index(">train<") < index.index(">r3<")


def test_a_failing_reader_stops_the_run(monkeypatch, tmp_path):
    def behaviour(stage):
        if stage.name == "r1":
            raise pipeline.StageFailed("stage 'r1' failed in notebooks/r1.ipynb, cell 2: boom")

    calls = _fake_stages(monkeypatch, tmp_path, behaviour)
    assert pipeline.run_pipeline(_cfg(tmp_path)) == 1
    ran = [name for kind, name in calls if kind == "stage"]
    assert ran[:2] == ["first", "train"] and "r1" in ran
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "boom" in index and "class='failed'" in index


def test_a_failing_training_job_stops_the_run_before_its_stages(monkeypatch, tmp_path):
    calls = _fake_stages(monkeypatch, tmp_path, lambda stage: None)

    def failing_jobs(cfg, config_file, stages, reports):
        calls.append(("jobs", [s.name for s in stages]))
        return {"stage": "jobs", "title": "jobs", "status": "failed", "seconds": 1.0,
                "report": "", "error": "a training job failed: ValueError: bad"}  # fmt: skip

    monkeypatch.setattr(pipeline, "run_training_jobs", failing_jobs)
    assert pipeline.run_pipeline(_cfg(tmp_path)) == 1
    assert [c for c in calls if c[0] == "stage"] == [("stage", "first")]
    assert "a training job failed: ValueError: bad" in (tmp_path / "reports/index.html").read_text()


def test_the_training_pass_is_a_promu_jobs_child_process(monkeypatch, tmp_path):
    """The runner starts ``promu jobs`` with the saved config and the stages that train; a
    non-zero exit is a failed status naming the command."""
    import subprocess

    seen = []

    def fake_run(cmd, cwd):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    stages = [s for s in pipeline.STAGES if s.name in ("data", "pretrain", "table3")]
    cfg = _cfg(tmp_path)
    status = pipeline.run_training_jobs(cfg, tmp_path / "c.yaml", stages, tmp_path / "reports")
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "promu_lib.cli", "jobs"]
    assert cmd[cmd.index("--config") + 1] == str(tmp_path / "c.yaml")
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--stage"] == ["pretrain", "table3"]
    assert status["status"] == "failed" and "exited with 3" in status["error"]
    assert status["jobs"] == len(plan.jobs_of(cfg, ["pretrain", "table3"]))
    saved = json.loads((tmp_path / "reports" / "status" / "jobs.json").read_text())
    assert saved["status"] == "failed"


def test_promu_jobs_runs_the_planned_jobs_of_its_stages(monkeypatch):
    from promu_lib import experiments
    from promu_lib.cli import main

    ran = []
    monkeypatch.setattr(experiments, "run_jobs", lambda cfg, jobs, progress: ran.append(jobs))
    assert main(["jobs", "--stage", "table3", "--set", "run.seeds=[3]"]) == 0
    assert ran[0] == plan.jobs_of(profile_config("tiny").replace(**{"run.seeds": [3]}), ["table3"])
    assert all(job.seed == 3 for job in ran[0])


def _notebook(path: Path, marker: str) -> None:
    cells = [
        {"id": "params", "cell_type": "code", "metadata": {"tags": ["parameters"]},
         "execution_count": None,
         "outputs": [], "source": 'profile = "tiny"\nconfig_file = None\nforce = False'},
        {"id": "work", "cell_type": "code", "metadata": {}, "execution_count": None,
         "outputs": [], "source": f"import time\nstart = time.time()\ntime.sleep(1.5)\nprint({marker!r}, start)"},
    ]  # fmt: skip
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "language": "python",
          "display_name": "Python 3"}}, "nbformat": 4, "nbformat_minor": 5}  # fmt: skip
    path.write_text(json.dumps(nb))


@pytest.mark.slow
@pytest.mark.notebook
def test_two_reader_notebooks_execute_at_once_under_papermill(monkeypatch, tmp_path):
    """Real kernels in the reader threads: both reports written, run times overlapping."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name in ("r1", "r2"):
        _notebook(nbs / f"{name}.ipynb", name)
    stages = tuple(Stage(n, f"{n}.ipynb", n, reader=True) for n in ("r1", "r2"))
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(plan, "stage_jobs", lambda cfg: {})
    real_resolve = pipeline.paths.resolve
    monkeypatch.setattr(
        pipeline.paths, "resolve", lambda p: nbs if p == "notebooks" else real_resolve(p)
    )
    assert pipeline.run_pipeline(_cfg(tmp_path)) == 0
    reports = tmp_path / "reports"
    starts = []
    for name in ("r1", "r2"):
        assert (reports / f"{name}.html").is_file()
        nb = json.loads((reports / "notebooks" / f"{name}.ipynb").read_text())
        text = "".join(nb["cells"][-1]["outputs"][0]["text"])
        assert text.startswith(name)
        starts.append(float(text.split()[1]))
    assert abs(starts[0] - starts[1]) < 1.5  # the second started before the first finished


# -- the plan ----------------------------------------------------------------------------------


def _parameter(notebook: str, name: str):
    nb = json.loads((project_root() / "notebooks" / notebook).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


def test_the_plan_matches_the_notebooks_defaults():
    """What the pipeline pre-trains is what stage 02 asks for; every planned stage exists."""
    assert tuple(_parameter("02_pretrain.ipynb", "variants")) == plan.PRETRAIN_STAGE_VARIANTS
    for notebook in (
        "04_table1.ipynb",
        "06_table3.ipynb",
        "10_hvpnet.ipynb",
        "11_robustness.ipynb",
    ):
        assert _parameter(notebook, "datasets") is None  # the profile's scope, as the plan
    cfg = profile_config("tiny")
    jobs = plan.stage_jobs(cfg)
    assert set(jobs) <= set(pipeline.stage_names())
    table1 = [r.job(d, 0) for r in TABLE1_ROWS for d in cfg.scope.datasets]
    assert jobs["finetune"] == table1 == jobs["table1"]
    assert set(jobs["fig3"]) | set(jobs["fig4"]) | set(jobs["fig5"]) <= set(table1)
    assert Finetune("mnre", "hvpnet-single") in jobs["hvpnet"]
    templates = {j.init for j in jobs["table3"]}
    assert len(templates) == 6 and Pretrain("promu") in templates  # 2 x 3 prompt pairs
    every = plan.jobs_of(cfg, pipeline.stage_names())
    assert len(every) == len(set(every))
    assert plan.jobs_of(cfg, ["data", "llm"]) == []


def test_the_runner_does_not_load_torch():
    """./run_all.sh runs `python -m promu_lib.pipeline`: planning and stage keys need no torch
    (~0.9 GB resident in every process that imports it)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from promu_lib import pipeline, plan\n"
        "from promu_lib.config import profile_config\n"
        "cfg = profile_config('tiny')\n"
        "plan.jobs_of(cfg, pipeline.stage_names())\n"
        "assert pipeline.main(['--only', 'bogus']) == 2\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert "unknown stage(s) ['bogus']" in out.stderr
