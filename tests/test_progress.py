"""The one progress policy (``promu_lib.progress``): PROMU_PROGRESS, the caller's switch, who
watches; the iterator and the training-loop bar."""

from __future__ import annotations

import subprocess
import sys

import pytest

from promu_lib import progress


@pytest.fixture
def unwatched(monkeypatch):
    """A plain process whose stderr is not a terminal, PROMU_PROGRESS unset."""
    monkeypatch.delenv("PROMU_PROGRESS", raising=False)
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)


def test_environment_decides_then_the_switch_then_who_watches(unwatched, monkeypatch):
    assert not progress.bars_enabled()
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.bars_enabled() and not progress.bars_enabled(allowed=False)
    for value in ("0", "off", "log", " NO "):
        monkeypatch.setenv("PROMU_PROGRESS", value)
        assert not progress.bars_enabled(), value
    for value in ("1", "on", "bar", "True"):
        monkeypatch.setenv("PROMU_PROGRESS", value)
        assert progress.bars_enabled(allowed=False), value
    monkeypatch.setenv("PROMU_PROGRESS", "maybe")  # not a known value: as if unset
    assert progress.bars_enabled() and not progress.bars_enabled(allowed=False)


def test_kernels_draw_bars_unless_a_batch_executor_runs_them(unwatched, monkeypatch):
    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    monkeypatch.setattr(progress, "_parent_argv", lambda: ["/x/promu/bin/python", "jupyter-lab"])
    assert progress.bars_enabled()  # a checkout called "promu" is not a batch run
    monkeypatch.setattr(progress, "_parent_argv", lambda: ["python", "/x/bin/papermill", "a"])
    assert progress.under_batch_executor() and not progress.bars_enabled()


def test_iterate_without_bars_prints_about_lines_lines(unwatched, capsys):
    assert list(progress.iterate(range(20), desc="steps", lines=4)) == list(range(20))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1].startswith("[promu] steps 20/20")
    assert progress.log_every(1000, lines=10) == 100 and progress.log_every(3, lines=10) == 1
    assert list(progress.iterate(iter(range(3)), desc="n")) == [0, 1, 2]  # no length: quiet


def test_training_bar_logs_every_n_steps_or_stays_silent(unwatched, capsys):
    with progress.Progress(5, "train", True, log_every=2) as bar:
        assert bar.bar is None
        for _ in range(5):
            bar.update(loss=0.5)
        bar.write("epoch 0 done")
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in err] == [
        "train step 2/5 loss=0.5",
        "train step 4/5 loss=0.5",
        "train step 5/5 loss=0.5",
        "epoch 0 done",
    ]
    with progress.Progress(5, "quiet", False, log_every=1) as bar:
        bar.update(loss=1.0)
        bar.write("nothing")
    assert capsys.readouterr() == ("", "")


def test_training_bar_draws_tqdm_when_asked(monkeypatch, capsys):
    monkeypatch.setenv("PROMU_PROGRESS", "1")
    with progress.Progress(3, "train", True, log_every=1, initial=1) as bar:
        assert bar.bar is not None and bar.bar.n == 1
        bar.update(loss=0.25)
        assert bar.bar.n == 2 and bar.n == 2


def test_notebook_reexports_and_no_torch_at_import():
    from promu_lib import notebook

    assert notebook.log_every is progress.log_every
    assert notebook.under_batch_executor is progress.under_batch_executor
    code = (
        "import sys, promu_lib.notebook, promu_lib.progress; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
