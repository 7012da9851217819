"""Cached training runs on one CPU thread whoever calls it (``train.common.one_cpu_thread``).

CPU float sums depend on the thread count, so a result cached by config hash would otherwise
depend on its caller (a jobs-pass worker has one thread, a notebook kernel one per core).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from promu_lib import mining
from promu_lib.config import load_config
from promu_lib.train import finetune as ft
from promu_lib.train import pretrain as pt
from promu_lib.train.common import one_cpu_thread


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_cpu_thread_pins_and_restores(two_threads):
    with one_cpu_thread("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), one_cpu_thread("cpu"):
        raise RuntimeError("a failed run restores the caller's threads too")
    assert torch.get_num_threads() == 2


def test_one_cpu_thread_leaves_gpu_runs_alone(two_threads):
    with one_cpu_thread("cuda"):
        assert torch.get_num_threads() == 2


def test_every_cached_training_runs_on_one_thread(tmp_path, monkeypatch, two_threads):
    cfg = load_config("tiny").replace(**{"run.device": "cpu"})
    seen: dict[str, int] = {}

    def record(name, result=None):
        def inner(*args, **kwargs):
            seen[name] = torch.get_num_threads()
            return result

        return inner

    monkeypatch.setattr(mining, "mining_dir", lambda c: tmp_path / "mining")
    monkeypatch.setattr(mining, "_mine", record("mining", tmp_path / "mining"))
    mining.mine_labels(cfg, progress=False)

    monkeypatch.setattr(pt, "_pretrain", record("pretrain"))
    pt.pretrain(cfg, seed=0, out_dir=tmp_path / "pretrain")

    run = SimpleNamespace(out=tmp_path / "finetune")
    monkeypatch.setattr(ft, "_check_run", lambda *a, **k: run)
    monkeypatch.setattr(ft, "_train_run", record("finetune", {}))
    ft.finetune(cfg, "mnre", "promu")

    assert seen == {"mining": 1, "pretrain": 1, "finetune": 1}
    assert torch.get_num_threads() == 2
