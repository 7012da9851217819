"""Data-loading workers never outnumber the cores: the ``paper`` profile asks for 4, a 2-core
machine gets 2 and one note saying so (torch warns that more may freeze the loader)."""

from __future__ import annotations

import logging

from promu_lib.config import profile_config
from promu_lib.data import datasets


class Posts:
    pad_id = 0

    def __len__(self) -> int:
        return 4


def test_workers_are_capped_at_the_cores_with_one_note(monkeypatch, caplog):
    monkeypatch.setattr(datasets, "available_cores", lambda: 2)
    monkeypatch.setattr(datasets, "_warned", set())
    asked = profile_config("paper").finetune.num_workers
    assert asked == 4
    with caplog.at_level(logging.WARNING, logger=datasets.__name__):
        assert datasets.capped_workers(asked) == 2
        assert datasets.make_loader(Posts(), 2, False, 0, num_workers=asked).num_workers == 2
        assert datasets.capped_workers(1) == 1 and datasets.capped_workers(0) == 0
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["num_workers=4 capped at 2, the cores of this machine"]
    assert datasets.available_cores() >= 1
