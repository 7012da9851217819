"""``promu data detect``: the boxes file of a dataset, resumable and deterministic."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from worlds import toy_cfg, world

from promu_lib.cli import main
from promu_lib.data.check import check_data
from promu_lib.data.detection import dataset_images, detect_dataset, histogram
from promu_lib.data.formats import read_boxes, read_twitter
from promu_lib.data.layout import DataLayout
from promu_lib.data.records import Box
from promu_lib.data.toyworld import build_toy_world
from promu_lib.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detect")
    cfg = toy_cfg(tmp)
    build_toy_world(cfg, progress=False)
    return cfg


def _n_boxes(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 5  # 0..4 boxes, known per key


class FakeDetector:
    """Boxes known from the key: ``_n_boxes(key)`` boxes, listed worst first (the writer must
    sort them); raises KeyboardInterrupt (a kill) on call ``die_at``."""

    def __init__(self, die_at: int | None = None) -> None:
        self.calls, self.keys, self.die_at = 0, [], die_at

    def detect(self, images, keys=None):
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt
        self.keys += keys
        return [self.boxes(k, im) for k, im in zip(keys, images)]

    @staticmethod
    def boxes(key, im):
        n = _n_boxes(key)
        return [Box(1 + j, 2, 10 + j, im.height - 1, 0.1 * (j + 1), f"c{j}") for j in range(n)]


def test_detect_writes_every_image_of_the_dataset_best_first(toy, tmp_path):
    layout = DataLayout.of(toy)
    out = tmp_path / "boxes" / "twitter2015.json"
    det = FakeDetector()
    s = detect_dataset(layout, "twitter2015", det, out, batch_size=3, shard_size=5, max_det=3,
                       grid=tmp_path / "grid.png", grid_images=4, progress=False)  # fmt: skip
    posts = [p for split in ("train", "dev", "test")
             for p in read_twitter(layout.split_file("twitter2015", split))]  # fmt: skip
    ids = sorted({p.img_id for p in posts})
    boxes = read_boxes(out)
    assert list(boxes) == ids and det.keys == ids  # each image once, sorted, nothing else
    for key, bs in boxes.items():
        assert len(bs) == min(3, _n_boxes(key))
        assert [b.score for b in bs] == sorted((b.score for b in bs), reverse=True)
        if bs:
            assert bs[0].cls == f"c{_n_boxes(key) - 1}"  # the best of the detector's boxes
    counts = [min(3, _n_boxes(k)) for k in ids]
    assert s.histogram == histogram(counts) and s.images == len(ids) and s.boxes == sum(counts)
    assert s.histogram["0"] > 0 and s.histogram["3+"] > 0  # the known boxes cover every bin
    assert not out.with_name("twitter2015.json.parts").exists()
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG" and grid.width >= 2 * 192
    # `promu data check` reads it like any boxes file
    check_layout = DataLayout(root=layout.root, data=toy.data)
    report = check_data(check_layout, ("twitter2015",))
    assert report.ok


def test_histogram_bins():
    assert histogram([0, 1, 2, 3, 7, 0]) == {"0": 2, "1": 1, "2": 1, "3+": 2}


def test_a_killed_run_resumes_and_ends_with_the_same_file(toy, tmp_path):
    layout = DataLayout.of(toy)
    kw = {"batch_size": 2, "shard_size": 4, "max_det": 10, "progress": False}
    whole = tmp_path / "whole" / "mnre.json"
    detect_dataset(layout, "mnre", FakeDetector(), whole, **kw)
    out = tmp_path / "resumed" / "mnre.json"
    with pytest.raises(KeyboardInterrupt):  # killed in its 6th batch: shards 0 and 1 written
        detect_dataset(layout, "mnre", FakeDetector(die_at=6), out, **kw)
    parts = out.with_name("mnre.json.parts")
    assert not out.exists() and sorted(p.name for p in parts.glob("shard-*")) == [
        "shard-00000.json",
        "shard-00001.json",
    ]
    again = FakeDetector()
    s = detect_dataset(layout, "mnre", again, out, **kw)
    n = len(dataset_images(layout, "mnre"))
    assert len(again.keys) == n - 8 and s.resumed_shards == 2  # only what was missing
    assert out.read_bytes() == whole.read_bytes() and not parts.exists()


def test_partial_files_of_other_settings_are_discarded(toy, tmp_path):
    layout = DataLayout.of(toy)
    out = tmp_path / "twitter2017.json"
    with pytest.raises(KeyboardInterrupt):
        detect_dataset(layout, "twitter2017", FakeDetector(die_at=3), out, batch_size=2,
                       shard_size=2, settings={"conf": 0.5}, progress=False)  # fmt: skip
    det = FakeDetector()
    s = detect_dataset(layout, "twitter2017", det, out, batch_size=2, shard_size=2,
                       settings={"conf": 0.1}, progress=False)  # fmt: skip
    assert s.resumed_shards == 0 and len(det.keys) == s.images


def test_an_unreadable_image_is_named_with_the_line_that_refers_to_it(tmp_path):
    cfg = toy_cfg(tmp_path)
    build_toy_world(cfg, progress=False)
    layout = DataLayout.of(cfg)
    split = layout.split_file("twitter2017", "dev")
    post = read_twitter(split)[1]
    image = layout.image_dir("twitter2017", "dev") / f"{post.img_id}.jpg"
    image.write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as e:
        detect_dataset(layout, "twitter2017", FakeDetector(), tmp_path / "b.json", progress=False)
    assert str(split) in str(e.value) and f":{post.line}:" in str(e.value)
    assert str(image) in str(e.value) and not (tmp_path / "b.json").exists()
    blank = cfg.replace(**{"data.on_missing_image": "blank"})
    s = detect_dataset(DataLayout.of(blank), "twitter2017", FakeDetector(), tmp_path / "c.json",
                       on_missing="blank", progress=False)  # fmt: skip
    assert s.skipped_images == [str(image)] and post.img_id not in read_boxes(tmp_path / "c.json")


def test_cli_help_and_refusals(toy, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "detect", "--help"])
    assert e.value.code == 0 and "--yolo-weights" in capsys.readouterr().out
    root = ["--set", f"data.root={toy.data_root()}"]
    assert main(["data", "detect", *root, "--dataset", "mnre"]) == 1  # no weights anywhere
    assert "YOLO weights" in capsys.readouterr().err
    (tmp_path / "mnre.json").write_text("{}")
    args = ["--yolo-weights", "x.pt", "--out-dir", str(tmp_path)]
    assert main(["data", "detect", *root, "--dataset", "mnre", *args]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.fixture(scope="module")
def yolo_pt(tmp_path_factory):
    """A YOLOv8n with random weights, built from ultralytics' packaged yaml and saved as .pt."""
    from promu_lib.detect import _import_ultralytics

    path = tmp_path_factory.mktemp("yolo") / "random_yolov8n.pt"
    _import_ultralytics()("yolov8n.yaml").save(str(path))
    return path


def _detect_cmd(toy, weights, out_dir, shard_size):
    return [
        sys.executable, "-m", "promu_lib.cli", "data", "detect", "--dataset", "mnre",
        "--set", f"data.root={toy.data_root()}", "--yolo-weights", str(weights),
        "--conf", "0", "--set", "detect.imgsz=64", "--set", "detect.batch_size=2",
        "--set", f"detect.shard_size={shard_size}", "--set", "run.device=cpu",
        "--out-dir", str(out_dir), "--grid", str(out_dir / "grid.png"),
    ]  # fmt: skip


@pytest.mark.slow
def test_yolo_end_to_end_killed_and_resumed_equals_an_uninterrupted_run(yolo_pt, tmp_path):
    """The real YoloDetector (random weights, conf 0 so that it returns boxes), in a process
    of its own, killed (SIGKILL) once two shards are written, then rerun."""
    toy = toy_cfg(tmp_path / "world", world(mnre=(120, 20, 20)))  # long enough to be killed
    build_toy_world(toy, progress=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1", "PROMU_PROGRESS": "log"}
    whole = tmp_path / "whole"
    done = subprocess.run(_detect_cmd(toy, yolo_pt, whole, 4), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "images with 0 boxes:" in done.stdout and "images/s" in done.stdout + done.stderr
    boxes = read_boxes(whole / "mnre.json")
    assert len(boxes) == len(dataset_images(DataLayout.of(toy), "mnre"))
    assert sum(map(len, boxes.values())) > 0 and (whole / "grid.png").is_file()

    out = tmp_path / "killed"
    parts = out / "mnre.json.parts"
    proc = subprocess.Popen(_detect_cmd(toy, yolo_pt, out, 4), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if len(list(parts.glob("shard-*.json"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "mnre.json").exists()
    again = subprocess.run(_detect_cmd(toy, yolo_pt, out, 4), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "resumed:" in again.stdout
    assert (out / "mnre.json").read_bytes() == (whole / "mnre.json").read_bytes()
    assert json.loads((out / "mnre.json").read_text()) and not parts.exists()


def test_importing_ultralytics_leaves_pil_open_alone(tmp_path):
    """ultralytics patches ``Image.open`` to pip-install a HEIF plugin on unidentified files;
    promu undoes it, so an unreadable image is one DataError and nothing else."""
    from promu_lib.detect import _import_ultralytics

    _import_ultralytics()
    import ultralytics.utils.patches as patches

    assert Image.open is not patches.image_open
    bad = tmp_path / "x.jpg"
    bad.write_text("<html>404</html>")
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(bad)
