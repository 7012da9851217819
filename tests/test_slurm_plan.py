"""run.executor=slurm without a cluster: the slurm config section, the sbatch scripts a pass
would submit (``promu jobs --dry-run``) and the order and dependencies of its jobs. (The jobs
themselves run against a real Slurm in tests/test_slurm.py.)"""

from __future__ import annotations

import re

import pytest

from promu_lib.cli import main
from promu_lib.config import ConfigError, load_config
from promu_lib.jobs import Finetune, Pretrain
from promu_lib.slurm import plan, sbatch_parameters, sbatch_script


def _options(script: str) -> dict[str, str]:
    """{option: value} of a script's ``#SBATCH --option[=value]`` lines."""
    found = re.findall(r"^#SBATCH --([a-z-]+)(?:=(.*))?$", script, flags=re.M)
    return {k: v for k, v in found}


def test_paper_resources_eight_gpus_to_pretrain_one_to_finetune(tmp_path):
    cfg = load_config("paper", overrides={"slurm.folder": str(tmp_path)})
    pt = _options(sbatch_script(cfg, Pretrain("promu")))
    ft = _options(sbatch_script(cfg, Finetune("mnre", "promu", init=Pretrain()), after="17"))
    assert pt["gpus-per-node"] == "8" and pt["ntasks-per-node"] == "8" and pt["nodes"] == "1"
    assert ft["gpus-per-node"] == "1" and ft["ntasks-per-node"] == "1"
    assert "dependency" not in pt and ft["dependency"] == "afterok:17"
    assert ft["kill-on-invalid-dep"] == "yes"
    assert pt["signal"] == "USR2@120" and "requeue" in pt  # preemption / time limit: requeue
    assert pt["time"] == str(48 * 60) and ft["time"] == str(12 * 60)
    assert pt["output"].startswith(str(tmp_path))


def test_resources_and_extra_sbatch_options_come_from_the_config():
    cfg = load_config(
        "tiny",
        overrides={
            "slurm.pretrain.partition": "gpu",
            "slurm.pretrain.account": "lab",
            "slurm.pretrain.qos": "high",
            "slurm.pretrain.nodes": 2,
            "slurm.pretrain.gpus_per_node": 4,
            "slurm.pretrain.mem_gb": 64,
            "slurm.pretrain.sbatch": {"constraint": "a100", "exclusive": True, "mail-type": False},
        },
    )
    params = sbatch_parameters(cfg, Pretrain())
    assert params["partition"] == "gpu" and params["account"] == "lab" and params["qos"] == "high"
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 4  # one task per GPU
    extra = params["additional_parameters"]
    assert extra["mem"] == "64G" and extra["constraint"] == "a100" and extra["exclusive"] is True
    assert "mail-type" not in extra  # false: left out
    options = _options(sbatch_script(cfg, Pretrain()))
    assert options["constraint"] == "a100" and "exclusive" in options


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("run.executor", "kubernetes", "run.executor: expected one of local, slurm"),
        ("slurm.finetune.nodes", 2, "slurm.finetune.nodes: expected an integer in [1, 1]"),
        (
            "slurm.pretrain.gpus_per_node",
            -1,
            "slurm.pretrain.gpus_per_node: expected an integer >= 0",
        ),  # noqa: E501
        ("slurm.pretrain.time", 0, "slurm.pretrain.time: expected an integer >= 1"),
        ("slurm.finetune.partition", " ", "slurm.finetune.partition: expected a name or null"),
        (
            "slurm.pretrain.sbatch",
            {"time": 5},
            "slurm.pretrain.sbatch.time: set by the slurm section",
        ),  # noqa: E501
        ("slurm.pretrain.sbatch", {"--x": 1}, "expected an sbatch long option without its dashes"),
        ("slurm.pretrain.sbatch", {"constraint": [1]}, "expected a string, number or true"),
        ("slurm.poll_seconds", 0, "slurm.poll_seconds: expected a number > 0"),
    ],
)
def test_bad_slurm_settings_name_the_key(key, value, message):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", overrides={key: value})
    assert message in str(err.value)


def test_the_plan_submits_prerequisites_first_and_skips_nothing_undone(tmp_path):
    cfg = load_config("tiny", overrides={"run.output_dir": str(tmp_path)})
    pre = Pretrain("promu")
    jobs = [Finetune("mnre", "bert"), pre, Finetune("mnre", "promu", init=pre)]
    submit, cached = plan(cfg, jobs)
    assert submit == [(pre, None), (jobs[0], None), (jobs[2], pre)] and not cached


def test_dry_run_prints_the_paper_table1_scripts_and_submits_nothing(tmp_path, capsys):
    """``promu jobs --executor slurm --dry-run --profile paper``: no paper data needed."""
    folder = tmp_path / "slurm"
    argv = ["jobs", "--executor", "slurm", "--dry-run", "--profile", "paper", "--stage",
            "table1", "--set", f"slurm.folder={folder}", "--set",
            f"run.output_dir={tmp_path / 'runs'}"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    scripts = out.split("# ===== job ")[1:]
    pretrainings = [s for s in scripts if ": pretrain " in s.splitlines()[0]]
    finetunings = [s for s in scripts if ": finetune " in s.splitlines()[0]]
    assert len(finetunings) == 72 and len(pretrainings) == 15  # 5 variants x 3 seeds
    assert all("#SBATCH --gpus-per-node=8" in s for s in pretrainings)
    assert all("#SBATCH --gpus-per-node=1" in s for s in finetunings)
    after = [s for s in finetunings if "--dependency='afterok:<id of job " in s]
    assert len(after) == 45 and all(" from [pretrain " in s.splitlines()[0] for s in after)
    assert scripts.index(pretrainings[-1]) < scripts.index(finetunings[0])  # prerequisites first
    assert len(list((folder / "dry-run").glob("*.sh"))) == 87
    assert "87 job(s) would be submitted" in out.splitlines()[-1]
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing submitted
