import os

import pytest

from promu_lib.cache import is_done, mark_done, read_done, stage_dir
from promu_lib.config import load_config
from promu_lib.io import atomic_open, atomic_write_json, sha256_tree


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'  # the old content survives
    assert os.listdir(tmp_path) == ["out.json"]  # no temp file left behind


def test_stage_dir_depends_only_on_its_sections(tmp_path):
    cfg = load_config("tiny", overrides={"run.output_dir": str(tmp_path)})
    other = cfg.replace(**{"finetune.lr": 0.123})
    assert stage_dir(cfg, "data", "data") == stage_dir(other, "data", "data")
    assert stage_dir(cfg, "ft", "finetune") != stage_dir(other, "ft", "finetune")
    d = stage_dir(cfg, "data", "data")
    assert not is_done(d)
    mark_done(d, {"n": 3})
    assert is_done(d) and read_done(d)["n"] == 3


def test_tree_hash_sees_content_and_names(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    h1 = sha256_tree(tmp_path)
    (tmp_path / "a.txt").write_text("y")
    h2 = sha256_tree(tmp_path)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert len({h1, h2, sha256_tree(tmp_path)}) == 3
