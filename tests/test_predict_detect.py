"""`promu predict --detect yolo --draw`: boxes from a detector for posts that come without, the
crops the model then sees, and a picture of the prediction. YOLO is built from its yaml (random
weights): these tests check the plumbing, not the detections, and that nothing goes online."""

from __future__ import annotations

import json
import socket
import warnings

import pytest
import torch
from PIL import Image
from worlds import toy_cfg, world

from promu_lib import grounding
from promu_lib import predict as pr
from promu_lib.cli import main
from promu_lib.data.layout import DataLayout
from promu_lib.data.records import Box
from promu_lib.data.toyworld import build_toy_world
from promu_lib.guards import CollapseWarning
from promu_lib.train.finetune import finetune

torch.set_num_threads(1)


class FakeDetector:
    """Five boxes per image, worst first; remembers the keys it was asked about."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def detect(self, images, keys=None):
        self.keys += list(keys or [])
        return [
            [
                Box(2 * k, 2 * k, 2 * k + 20, 2 * k + 20, score=0.1 * k, cls=f"c{k}")
                for k in range(5)
            ]
            for _ in images
        ]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An exported HVPNeT MNER checkpoint (3 object crops) and the toy world's test images."""
    tmp = tmp_path_factory.mktemp("detect")
    cfg = toy_cfg(tmp, world(twitter2015=(8, 3, 4)), **{"finetune.epochs": 1})
    build_toy_world(cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)
        finetune(cfg, "twitter2015", "hvpnet", out_dir=tmp / "run")
    images = sorted(DataLayout.of(cfg).image_dir("twitter2015", "test").glob("*.jpg"))
    return pr.export_checkpoint(tmp / "run", tmp / "ckpt"), images, cfg.data.max_objects


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    attempts: list[object] = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    return attempts


@pytest.fixture(scope="module")
def yolo_pt(tmp_path_factory):
    """A YOLOv8n with random weights, built from ultralytics' packaged yaml and saved as .pt."""
    from promu_lib.detect import _import_ultralytics

    path = tmp_path_factory.mktemp("yolo") / "random_yolov8n.pt"
    _import_ultralytics()("yolov8n.yaml").save(str(path))
    return path


def test_with_boxes_keeps_the_best_m_and_leaves_other_records_alone(tmp_path):
    Image.new("RGB", (64, 48), "white").save(tmp_path / "a.jpg")
    given = [[1, 1, 5, 5, 0.9, "mine"]]
    records = [
        {"id": "1", "text": "x", "image": "a.jpg"},
        {"id": "2", "text": "x", "image": "a.jpg", "boxes": given},
        {"id": "3", "text": "x", "image": "missing.jpg"},
        {"id": "4", "text": "x"},
    ]
    det = FakeDetector()
    out = grounding.with_boxes(records, det, 3, tmp_path)
    assert [b[4:] for b in out[0]["boxes"]] == [[0.4, "c4"], [0.3, "c3"], [0.2, "c2"]]
    assert out[1]["boxes"] == given and "boxes" not in out[2] and "boxes" not in out[3]
    assert det.keys == ["a.jpg"] and "boxes" not in records[0]  # the input is not changed


def test_predictor_with_a_detector_predicts_as_with_those_boxes_given(ckpt):
    path, images, m = ckpt
    predictor = pr.Predictor.load(path)
    records = [{"id": str(i), "text": "Kevin Durant enters Oracle Arena", "image": str(p)}
               for i, p in enumerate(images[:3])]  # fmt: skip
    detected = predictor.predict(records, detector=FakeDetector())
    assert all(len(r["boxes"]) == m for r in detected)
    given = predictor.predict([{**rec, "boxes": r["boxes"]} for rec, r in zip(records, detected)])
    assert [r["tags"] for r in given] == [r["tags"] for r in detected]
    plain = predictor.predict(records)
    assert "boxes" not in plain[0]


def test_draw_result_pictures_boxes_and_entities_or_relations(tmp_path):
    Image.new("RGB", (64, 48), "white").save(tmp_path / "a.jpg")
    ner = {"tokens": ["Kevin", "Durant", "plays"], "boxes": [[2, 2, 30, 30, 0.8, "person"]],
           "entities": [{"text": "Kevin Durant", "type": "PER", "start": 0, "end": 2, "score": 0.9}]}  # fmt: skip
    re_ = {"tokens": ["A", "and", "B"], "head": [0, 1], "tail": [2, 3],
           "relations": [{"relation": "/per/per/peer", "probability": 0.7}]}  # fmt: skip
    for name, result in (("ner.png", ner), ("re.png", re_)):
        out = grounding.draw_result(tmp_path / "a.jpg", result, tmp_path / name)
        with Image.open(out) as im:
            assert im.format == "PNG" and im.width == grounding.MIN_WIDTH
            assert im.height > 48 * im.width / 64  # the text panel under the image
    with Image.open(tmp_path / "ner.png") as im:  # the box's outline is drawn in its colour
        assert im.convert("RGB").getpixel((int(16 * 7.5), int(2 * 7.5) + 1)) != (255, 255, 255)


@pytest.mark.slow
def test_promu_predict_detect_yolo_draws_end_to_end_offline(
    ckpt, yolo_pt, offline, tmp_path, capsys
):
    path, images, m = ckpt
    out = tmp_path / "post.png"
    argv = ["predict", "--checkpoint", str(path), "--text", "Kevin Durant enters Oracle Arena",
            "--image", str(images[0]), "--detect", "yolo", "--yolo-weights", str(yolo_pt),
            "--draw", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("{")))
    assert isinstance(result["boxes"], list) and len(result["boxes"]) <= m
    assert all(len(b) == 6 for b in result["boxes"]) and result["tags"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= grounding.MIN_WIDTH
    assert offline == []  # ultralytics opened no connection


def test_detect_yolo_without_weights_or_with_batch_draw_is_one_error(ckpt, tmp_path, capsys):
    path, images, _ = ckpt
    base = ["predict", "--checkpoint", str(path), "--text", "a b", "--image", str(images[0])]
    assert main([*base, "--detect", "yolo"]) == 1
    assert "--yolo-weights" in capsys.readouterr().err
    posts = tmp_path / "posts.jsonl"
    posts.write_text(json.dumps({"text": "a b", "image": str(images[0])}) + "\n")
    argv = ["predict", "--checkpoint", str(path), "--input", str(posts), "--draw", "x.png"]
    assert main(argv) == 2
    assert "--draw" in capsys.readouterr().err
