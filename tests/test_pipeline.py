"""The stage runner: one training pass before the stages that need it, readers two at a time,
a failure stops the run; the plan of every stage's jobs is its study's ``jobs``."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from promu_lib import pipeline
from promu_lib.config import profile_config
from promu_lib.jobs import Finetune, Pretrain
from promu_lib.studies import Study, table1


def Stage(name, notebook, title, reader=False, jobs=()):  # noqa: N802 (reads like a class)
    """A study module stand-in: a notebook, a title, and the jobs it trains."""
    module = SimpleNamespace(
        NOTEBOOK=notebook, TITLE=title, READER=reader, jobs=lambda cfg: list(jobs),
        __file__=__file__, TABLES=(), FIGURES=(),
    )  # fmt: skip
    return Study(name, module)


def _cfg(tmp_path: Path):
    cfg = profile_config("tiny")
    return cfg.replace(
        **{"run.output_dir": str(tmp_path / "runs"), "run.reports_dir": str(tmp_path / "reports")}
    )


def test_readers_are_grouped_and_every_other_stage_runs_alone():
    a, b = Stage("a", "a.ipynb", "A"), Stage("b", "b.ipynb", "B")
    r1, r2, r3 = (Stage(f"r{i}", f"r{i}.ipynb", "R", reader=True) for i in (1, 2, 3))
    assert pipeline._groups([a, r1, r2, b, r3]) == [[a], [r1, r2], [b], [r3]]
    stages = pipeline.stages()
    assert [s.name for s in stages if s.reader][0] == "table1"
    assert not any(s.reader for s in stages[:4])  # data, mining, pretrain, finetune


def _fake_stages(monkeypatch, tmp_path, behaviour):
    """Two plain stages, then three readers; run_stage follows ``behaviour``."""
    planned = {"train": [Pretrain("promu")], "r1": [Pretrain("hard")], "r3": [Pretrain("promu")]}
    stages = [
        Stage("first", "first.ipynb", "First"),
        Stage("train", "train.ipynb", "Train", jobs=planned["train"]),
        *(Stage(n, f"{n}.ipynb", n, True, planned.get(n, ())) for n in ("r1", "r2", "r3")),
    ]
    monkeypatch.setattr(pipeline, "stages", lambda: stages)
    monkeypatch.setattr(pipeline, "cached_status", lambda stage, cfg, reports: None)
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
    stages = [s for s in pipeline.stages() if s.name in ("data", "pretrain", "table3")]
    cfg = _cfg(tmp_path)
    status = pipeline.run_training_jobs(cfg, tmp_path / "c.yaml", stages, tmp_path / "reports")
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "promu_lib.cli", "jobs"]
    assert cmd[cmd.index("--config") + 1] == str(tmp_path / "c.yaml")
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--stage"] == ["pretrain", "table3"]
    assert status["status"] == "failed" and "exited with 3" in status["error"]
    assert status["jobs"] == len(pipeline.jobs_of(cfg, ["pretrain", "table3"]))
    saved = json.loads((tmp_path / "reports" / "status" / "jobs.json").read_text())
    assert saved["status"] == "failed"


def test_promu_jobs_runs_the_planned_jobs_of_its_stages(monkeypatch):
    from promu_lib import jobs
    from promu_lib.cli import main

    ran = []
    monkeypatch.setattr(jobs, "run_jobs", lambda cfg, jobs, progress: ran.append(jobs))
    assert main(["jobs", "--stage", "table3", "--set", "run.seeds=[3]"]) == 0
    cfg = profile_config("tiny").replace(**{"run.seeds": [3]})
    assert ran[0] == pipeline.jobs_of(cfg, ["table3"]) == studies_table3_jobs(cfg)
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
    stages = [Stage(n, str(nbs / f"{n}.ipynb"), n, reader=True) for n in ("r1", "r2")]
    monkeypatch.setattr(pipeline, "stages", lambda: stages)
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


def studies_table3_jobs(cfg):
    from promu_lib.studies import table3

    return table3.jobs(cfg)


def test_the_plan_is_each_studys_jobs():
    """What the pipeline trains for a stage is its study's ``jobs(cfg)``: what the notebook asks
    for at its default parameters (tests/test_notebooks.py checks the defaults agree)."""
    cfg = profile_config("tiny")
    jobs = pipeline.stage_jobs(cfg)
    assert set(jobs) <= set(pipeline.stage_names())
    assert {"data", "mining", "llm"}.isdisjoint(jobs)  # stages that train nothing
    seeds = cfg.run.seeds
    expected = [r.job(d, s) for r in table1.ROWS for d in cfg.scope.datasets for s in seeds]
    assert jobs["finetune"] == expected == jobs["table1"] == table1.jobs(cfg)
    assert set(jobs["fig3_tsne"]) | set(jobs["fig4_tail"]) | set(jobs["fig5_attention"]) <= set(
        expected
    )
    assert Finetune("mnre", "hvpnet-single") in jobs["hvpnet"]
    templates = {j.init for j in jobs["table3"]}  # 2 x 3 prompt pairs, one per seed each
    assert len(templates) == 6 * len(seeds) and Pretrain("promu", seed=seeds[-1]) in templates
    # seed s of a pre-trained row starts from the pre-training of seed s
    assert all(j.init.seed == j.seed for j in expected if isinstance(j.init, Pretrain))
    every = pipeline.jobs_of(cfg, pipeline.stage_names())
    assert len(every) == len(set(every))
    assert pipeline.jobs_of(cfg, ["data", "llm"]) == []


def test_the_runner_does_not_load_torch():
    """./run_all.sh runs `python -m promu_lib.pipeline`: planning and stage keys need no torch
    (~0.9 GB resident in every process that imports it)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from promu_lib import pipeline\n"
        "from promu_lib.config import profile_config\n"
        "cfg = profile_config('tiny')\n"
        "pipeline.jobs_of(cfg, pipeline.stage_names())\n"
        "assert pipeline.main(['--only', 'bogus']) == 2\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert "unknown stage(s) ['bogus']" in out.stderr


# -- a new study: one module and one notebook, nothing else ------------------------------------

TOY_STUDY = '''"""A toy "Table 4": the text-only model on Twitter-2015, one row, one table."""

from promu_lib.jobs import Finetune
from promu_lib.report import Table
from promu_lib.studies.common import Outputs, per_seed

NOTEBOOK = __file__.replace(".py", ".ipynb")
TITLE = "Table 4: a toy study"
READER = True
TABLES = ("table4",)
FIGURES = ()


def jobs(cfg, dataset="twitter2015"):
    return [Finetune(dataset, "bert", seed=s) for s in cfg.run.seeds]


def run(cfg, results, out_dir, dataset="twitter2015"):
    out = Outputs.start(cfg, out_dir)
    table = Table.for_config(cfg, "table4", [dataset], title="Toy study: test F1")
    table.add_row("text only", {dataset: per_seed(results, jobs(cfg, dataset))})
    out.table(table)
    return out
'''

TOY_NOTEBOOK_CELLS = [
    ("parameters", 'profile = "tiny"\nconfig_file = None\nforce = False\ndataset = "twitter2015"'),
    (
        "code",
        "from promu_lib import notebook, studies\n"
        "from promu_lib.jobs import run_jobs\n"
        "import toy_table4\n"
        "cfg = notebook.setup(profile, config_file)\n"
        "figures = notebook.figures_dir(cfg)\n"
        "results = run_jobs(cfg, toy_table4.jobs(cfg, dataset))\n"
        "out = toy_table4.run(cfg, results, figures, dataset)\n"
        "notebook.expect_outputs(studies.products(toy_table4, figures))",
    ),
]


@pytest.mark.slow
@pytest.mark.notebook
def test_a_new_study_is_one_module_and_one_notebook(monkeypatch, tmp_path):
    """A study outside the package, named in $PROMU_STUDIES, is a stage: the pipeline trains its
    jobs in the training pass (a child process), runs its notebook and writes its table."""
    import warnings

    from nbfiles import write_notebook
    from worlds import toy_cfg

    from promu_lib.data.toyworld import build_toy_world

    (tmp_path / "toy_table4.py").write_text(TOY_STUDY)
    write_notebook(tmp_path / "toy_table4.ipynb", TOY_NOTEBOOK_CELLS)
    monkeypatch.setenv("PROMU_STUDIES", "toy_table4")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = toy_cfg(
        tmp_path,
        **{
            "finetune.epochs": 1,
            "run.figures_dir": str(tmp_path / "figures"),
            "run.reports_dir": str(tmp_path / "reports"),
        },
    )
    build_toy_world(cfg, progress=False)
    assert "toy_table4" in pipeline.stage_names()
    assert pipeline.stage_jobs(cfg)["toy_table4"] == [Finetune("twitter2015", "bert", seed=0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pipeline.run_pipeline(cfg, only=["toy_table4"]) == 0
    table = (tmp_path / "figures" / "table4.md").read_text()
    assert "| text only |" in table and "toy-world numbers" in table
    assert (tmp_path / "reports" / "toy_table4.html").is_file()
    status = json.loads((tmp_path / "reports" / "status" / "jobs.json").read_text())
    assert status["status"] == "ok" and status["jobs"] == 1


def test_three_seeds_by_default_and_quick_runs_one(monkeypatch):
    """`./run_all.sh` compares models over three fine-tuning seeds; `--quick` keeps seed 0, and
    every job it trains is one the full run reuses (same seed, same cache key)."""
    seen = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, only, force: seen.append(cfg) or 0)
    assert pipeline.main([]) == 0 and pipeline.main(["--quick"]) == 0
    full, quick = seen
    assert full.run.seeds == (0, 1, 2) and quick.run.seeds == (0,)
    full_jobs = set(pipeline.jobs_of(full, ["table1"]))
    quick_jobs = set(pipeline.jobs_of(quick, ["table1"]))
    assert quick_jobs < full_jobs and {j.seed for j in quick_jobs if isinstance(j, Finetune)} == {0}
    assert len([j for j in full_jobs if isinstance(j, Finetune)]) == 3 * len(
        [j for j in quick_jobs if isinstance(j, Finetune)]
    )
