"""The committed notebooks are clean and papermill-ready; the data stage runs end to end."""

import json
from pathlib import Path

import nbformat
import pytest
import yaml
from nbfiles import write_notebook

from promu_lib import notebook
from promu_lib.paths import project_root
from promu_lib.studies import discover

NOTEBOOKS = sorted((project_root() / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name == "00_data.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path):
    assert notebook.notebook_problems(path) == []
    params = notebook.notebook_parameters(path)
    assert {"profile", "config_file", "force"} <= set(params)  # what the pipeline passes
    assert params["profile"] == "tiny" and params["config_file"] is None


def test_every_notebook_is_a_study_in_order_and_compiles():
    assert [s.notebook for s in discover()] == NOTEBOOKS
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            compile(cell.source, f"{path.name} code cell {i}", "exec")
        assert "notebook.expect_outputs(studies.products(" in nb.cells[-1].source, path.name


PIPELINE_PARAMETERS = {"profile", "config_file", "force", "seeds"}


@pytest.mark.parametrize("study", [s.name for s in discover()])
def test_notebook_parameters_are_its_studys_defaults(study):
    """The pipeline trains ``study.jobs(cfg)``; the notebook asks for
    ``study.jobs(cfg, <its parameters>)``: the two agree because every other parameter of the
    notebook is a keyword of the study's ``run`` (and ``jobs``) with the same default."""
    import inspect

    (s,) = [x for x in discover() if x.name == study]
    params = notebook.notebook_parameters(s.notebook)
    mine = {k: v for k, v in params.items() if k not in PIPELINE_PARAMETERS}
    run = inspect.signature(s.module.run).parameters
    defaults = {k: p.default for k, p in list(run.items())[3:]}  # after cfg, results, out_dir
    assert set(mine) == set(defaults), s.notebook.name
    for name, value in mine.items():
        default = defaults[name]
        assert value == (list(default) if isinstance(default, tuple) else default), name
    if hasattr(s.module, "jobs"):
        for name, p in list(inspect.signature(s.module.jobs).parameters.items())[1:]:
            assert name in defaults and p.default == defaults[name], (study, name)


def test_problems_are_found(tmp_path):
    good = [("markdown", "# t"), ("parameters", "profile = 'tiny'\nn = [1, 2]"), ("code", "x = 1")]
    assert notebook.notebook_problems(write_notebook(tmp_path / "good.ipynb", good)) == []
    ran = write_notebook(
        tmp_path / "ran.ipynb",
        good,
        c2={"execution_count": 3, "outputs": [nbformat.v4.new_output("stream", text="1")]},
    )
    assert notebook.notebook_problems(ran) == [
        "cell 2 has outputs",
        "cell 2 has an execution count",
    ]
    assert notebook.strip_outputs(ran) is True and notebook.strip_outputs(ran) is False
    assert notebook.notebook_problems(ran) == []
    two = write_notebook(tmp_path / "two.ipynb", good + [("parameters", "seed = 0")])
    assert "2 cells tagged 'parameters'; expected exactly 1" in notebook.notebook_problems(two)
    nb = nbformat.read(str(ran), as_version=4)
    nb.metadata["kernelspec"]["name"] = "promu-venv"
    nbformat.write(nb, str(ran))
    assert notebook.notebook_problems(ran) == ["kernelspec name is not 'python3'"]


@pytest.mark.parametrize(
    "source, problem",
    [
        ("profile = get_profile()", "not a plain literal"),
        ("import os", "not a single assignment"),
        ("a = b = 1", "not a single assignment"),
        ("cfg.profile = 'tiny'", "not a plain name"),
        ("x = (", "syntax error"),
    ],
)
def test_parameter_cells_must_be_plain_literals(source, problem):
    (found,) = notebook.parameter_problems(source)
    assert problem in found
    assert notebook.parameter_problems("a = 1\nb = None\nc = {'k': [1.5, 'x']}\nd = -3") == []


def test_expect_outputs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "d").mkdir()
    notebook.expect_outputs([tmp_path / "a.png"])
    with pytest.raises(AssertionError) as err:
        notebook.expect_outputs(
            [tmp_path / "a.png", tmp_path / "empty.csv", tmp_path / "no.md", tmp_path / "d"]
        )
    msg = str(err.value)
    assert "empty.csv: empty" in msg and "no.md: missing" in msg and "holds no file" in msg
    assert "a.png" not in msg
    with pytest.raises(AssertionError, match="no path"):
        notebook.expect_outputs([])


def test_progress_policy(monkeypatch, capsys):
    monkeypatch.setenv("PROMU_PROGRESS", "0")
    assert not notebook.progress_enabled()
    assert list(notebook.progress(range(20), desc="steps", lines=4)) == list(range(20))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("[promu] steps 20/20")
    monkeypatch.setenv("PROMU_PROGRESS", "1")
    assert notebook.progress_enabled()
    monkeypatch.delenv("PROMU_PROGRESS")
    cfg = notebook.load_config("tiny", overrides={"run.progress": False})
    assert not notebook.progress_enabled(cfg)
    assert notebook.log_every(1000, lines=10) == 100 and notebook.log_every(3, lines=10) == 1


def test_batch_executor_is_found_by_program_name(monkeypatch):
    from promu_lib import progress

    def parent(*argv):
        monkeypatch.setattr(progress, "_parent_argv", lambda: list(argv))

    parent("/x/promu/.venv/bin/python", "/x/promu/.venv/bin/jupyter-lab")
    assert not notebook.under_batch_executor()  # a checkout called "promu" is not a batch run
    parent("/x/.venv/bin/python", "/x/.venv/bin/papermill", "a.ipynb")
    assert notebook.under_batch_executor()
    parent("python", "-m", "pytest", "-q")
    assert notebook.under_batch_executor()


@pytest.fixture
def restore_globals():
    """setup() changes process-wide state: give it back to the other tests."""
    import matplotlib
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with matplotlib.rc_context():
        yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@pytest.mark.slow  # imports torch (seconds on a busy 2-core machine)
def test_setup_loads_the_config_file_and_seeds(tmp_path, restore_globals):
    import random

    import matplotlib
    import torch

    path = tmp_path / "cfg.yaml"
    run = {"seeds": [5, 6], "figures_dir": str(tmp_path / "f")}
    path.write_text(yaml.safe_dump({"profile": "tiny", "run": run}))
    cfg = notebook.setup("toy-large", str(path))
    assert cfg.profile == "tiny" and cfg.run.seeds == (5, 6)
    first = random.random(), torch.rand(1).item()
    notebook.setup("tiny", str(path))
    assert (random.random(), torch.rand(1).item()) == first  # seeded with the first seed
    assert torch.are_deterministic_algorithms_enabled()
    assert matplotlib.rcParams["savefig.dpi"] == 150
    assert notebook.figures_dir(cfg) == tmp_path / "f" and (tmp_path / "f").is_dir()


@pytest.mark.slow
@pytest.mark.notebook
def test_data_notebook_runs_under_papermill(tmp_path):
    import papermill as pm

    config = {
        "profile": "tiny",
        "data": {
            "root": str(tmp_path / "data"),
            "toy": {
                "twitter2015_sizes": [8, 4, 4],
                "twitter2017_sizes": [8, 4, 4],
                "mnre_sizes": [60, 50, 50],
                "mnre_min_per_relation": [1, 1, 1],
                "n_captions": 10,
                "n_names": 20,
            },
        },
        "run": {"output_dir": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "figures")},
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    out = tmp_path / "executed.ipynb"
    pm.execute_notebook(
        str(project_root() / "notebooks" / "00_data.ipynb"),
        str(out),
        parameters={
            "profile": "tiny",
            "config_file": str(config_file),
            "force": False,
            "n_examples": 2,
        },
        kernel_name="python3",
        cwd=str(tmp_path),  # the notebook must not depend on its working directory
        progress_bar=False,
    )
    figures = tmp_path / "figures"
    for name in (
        "data_sizes.csv",
        "data_sizes.md",
        "data_labels.md",
        "data_examples.png",
        "data_examples.pdf",
    ):
        assert (figures / name).stat().st_size > 0, name
    sizes = (figures / "data_sizes.md").read_text()
    assert "| twitter2015 | 8 | 4000 |" in sizes and "toy-world numbers" in sizes
    prov = json.loads((figures / "data_sizes.config.json").read_text())["provenance"]
    assert (
        prov["data_dir"] == str(tmp_path / "data")
        and "twitter2015/train.txt" in prov["data_checksums"]
    )
    assert not Path(project_root() / "notebooks" / "executed.ipynb").exists()
    # stripping the executed notebook gives back the committed one, byte for byte
    assert notebook.strip_outputs(out) is True
    assert out.read_text() == (project_root() / "notebooks" / "00_data.ipynb").read_text()
