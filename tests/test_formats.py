"""Round trips of every on-disk format, the tolerated quirks of the real files, the crop
converter and ``promu data check``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

from promu_lib.cli import main as promu_main
from promu_lib.config import profile_config
from promu_lib.data.check import check_data
from promu_lib.data.crops import convert_crops, read_crops, write_crops
from promu_lib.data.formats import (
    ReadReport,
    count_entities,
    read_boxes,
    read_captions,
    read_mnre,
    read_rel2id,
    read_twitter,
    write_boxes,
    write_captions,
    write_mnre,
    write_rel2id,
    write_twitter,
)
from promu_lib.data.layout import DataLayout
from promu_lib.data.records import MNRE_REL2ID, Box, CaptionPair, NerPost, RePost, Span

NER_POSTS = [
    NerPost(
        "101", ("RT", "Kevin", "Durant", "in", "Oakland"), ("O", "B-PER", "I-PER", "O", "B-LOC")
    ),
    NerPost("O_7", ("The", "Super", "Bowl", "by", "NFL"), ("O", "B-MISC", "I-MISC", "O", "B-ORG")),
    NerPost("16_05_3", ("nothing", "here"), ("O", "O")),
]
RE_POSTS = [
    RePost(
        ("Obama", "visits", "the", "White", "House"),
        Span("Obama", 0, 1),
        Span("White House", 3, 5),
        "twitter_19_1.jpg",
        "/per/loc/place_of_residence",
    ),
    RePost(("A", "'s", "B"), Span("A 's B", 0, 3), Span("B", 2, 3), "t_2.jpg", "None"),
]


def _no_line(records):
    return [dataclasses.replace(r, line=0) for r in records]


@pytest.mark.parametrize("other_as", ["MISC", "OTHER"])
def test_twitter_round_trip(tmp_path, other_as):
    path = write_twitter(tmp_path / "train.txt", NER_POSTS, other_as=other_as)
    if other_as == "OTHER":
        assert "B-OTHER" in path.read_text() and "MISC" not in path.read_text()
    posts = read_twitter(path)
    assert _no_line(posts) == NER_POSTS
    assert [p.line for p in posts] == [1, 8, 15]


def test_twitter_last_post_flushed_without_trailing_blank_line(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("IMGID:1\nA\tB-PER\n\nIMGID:2\nB\tO\nC\tB-OTHER")
    posts = read_twitter(path)
    assert [p.img_id for p in posts] == ["1", "2"]
    assert posts[-1].tokens == ("B", "C") and posts[-1].labels == ("O", "B-MISC")


def test_twitter_tolerates_real_quirks(tmp_path):
    """CRLF line ends, an I- without B- (seqeval reads it as an entity start), a whitespace token,
    several blank lines, a token that looks like an IMGID line."""
    path = tmp_path / "valid.txt"
    path.write_bytes(
        b"IMGID:1\r\nJohn\tI-PER\r\n\xc2\xa0\tO\r\nIMGID:9\tO\r\n\r\n\r\nIMGID:2\nX\tB-ORG\nY\tI-LOC\n"
    )
    report = ReadReport()
    posts = read_twitter(path, report=report)
    assert posts[0].tokens == ("John", "\xa0", "IMGID:9")
    assert report.notes["I- without B-"] == 2
    assert report.notes["whitespace-only token"] == 1
    assert report.notes["crlf line end"] == 6
    assert count_entities(posts) == {"PER": 1, "ORG": 1, "LOC": 1, "MISC": 0}


def test_twitter_skip_counts_bad_posts(tmp_path, caplog):
    path = tmp_path / "train.txt"
    path.write_text("IMGID:1\nA\tB-PER\n\nIMGID:2\nB\tB-FOO\n\nIMGID:3\nC\tO\n")
    report = ReadReport()
    posts = read_twitter(path, on_bad="skip", report=report)
    assert [p.img_id for p in posts] == ["1", "3"]
    assert report.skipped == 1 and report.records == 2
    assert "B-FOO" in report.problems[0] and f"{path}:5" in report.problems[0]
    assert "skipped 1" in caplog.text


@pytest.mark.parametrize("style", ["python", "json"])
def test_mnre_round_trip(tmp_path, style):
    path = write_mnre(tmp_path / "ours_train.txt", RE_POSTS, style=style)
    first = path.read_text().splitlines()[0]
    assert first.startswith("{'token'" if style == "python" else '{"token"')
    posts = read_mnre(path)
    assert _no_line(posts) == RE_POSTS
    assert [p.line for p in posts] == [1, 2]


def test_mnre_ignores_extra_keys_and_allows_overlap(tmp_path):
    row = {
        "token": ["a", "b", "c"],
        "h": {"name": "a b", "pos": [0, 2]},
        "t": {"name": "b c", "pos": [1, 3]},
        "img_id": "x.jpg",
        "relation": "/per/per/peer",
        "caption": "a photo",
        "entity": ["a b"],
    }
    path = tmp_path / "mnre_val .txt"
    path.write_text(repr(row) + "\n\n")
    (post,) = read_mnre(path)
    assert post.head == Span("a b", 0, 2) and post.tail == Span("b c", 1, 3)


def test_rel2id_round_trip(tmp_path):
    path = write_rel2id(tmp_path / "ours_rel2id.json")
    assert len(path.read_text().splitlines()) == 1
    assert read_rel2id(path) == MNRE_REL2ID
    custom = write_rel2id(tmp_path / "small.json", ["None", "a", "b"])
    assert read_rel2id(custom, expected=None) == {"None": 0, "a": 1, "b": 2}


def test_captions_round_trip(tmp_path):
    pairs = [
        CaptionPair("0", "a red dog beside a blue house", "images/0.png", True),
        CaptionPair("1", "ünïcode caption", "1.png", False),
    ]
    path = write_captions(tmp_path / "captions.jsonl", pairs)
    assert read_captions(path) == pairs


def test_boxes_round_trip(tmp_path):
    boxes = {"101": [Box(1, 2, 30, 40, 0.9, "person"), Box(0, 0, 5.5, 6, 1.0, "dog")], "O_7": []}
    path = write_boxes(tmp_path / "boxes.json", boxes)
    assert read_boxes(path) == boxes
    path.write_text(json.dumps({"a": [[0, 0, 1, 1, 0.5, 3]]}))
    assert read_boxes(path)["a"][0].cls == "3"


def _save_crop_images(crops_dir, names):
    crops_dir.mkdir(parents=True)
    for name in names:
        Image.new("RGB", (4, 4)).save(crops_dir / name)


def test_convert_crops_ner(tmp_path):
    split = write_twitter(tmp_path / "train.txt", NER_POSTS)
    crops_dir = tmp_path / "aux" / "train" / "crops"
    names = ["101_pred_yolo_crop_0.png", "101_pred_yolo_crop_1.png", "O_7_pred_yolo_crop_0.png"]
    _save_crop_images(crops_dir, names)
    pth = tmp_path / "twitter2015_train_dict.pth"
    mapping = {"101.jpg": names[:2], "O_7.jpg": names[2:], "999.jpg": ["999_pred_yolo_crop_0.png"]}
    torch.save(mapping, pth)
    res = convert_crops(pth, crops_dir, tmp_path / "crops.json", split_file=split)
    assert (res.n_images, res.n_crops, res.unknown_keys, res.n_missing_files) == (
        2,
        3,
        ["999.jpg"],
        0,
    )
    crops = read_crops(res.out)
    assert crops["101"] == [crops_dir / n for n in names[:2]]
    assert all(p.is_file() for ps in crops.values() for p in ps)
    assert json.loads(res.out.read_text())["O_7"] == ["aux/train/crops/O_7_pred_yolo_crop_0.png"]


def test_convert_crops_re_keyed_by_line_index(tmp_path):
    split = write_mnre(tmp_path / "ours_val.txt", RE_POSTS + RE_POSTS[:1])
    crops_dir = tmp_path / "img_vg" / "val" / "crops"
    _save_crop_images(crops_dir, ["0_pred_yolo_crop_0.png", "1_pred_yolo_crop_0.png"])
    pth = tmp_path / "mre_dev_dict.pth"
    torch.save({0: ["0_pred_yolo_crop_0.png"], 1: ["1_pred_yolo_crop_0.png"], 2: ["x.png"]}, pth)
    res = convert_crops(pth, crops_dir, tmp_path / "crops.json", task="re", split_file=split)
    # line 3 shares line 1's image but lists another crop: the first is kept, counted
    assert res.conflicts == 1 and res.n_missing_files == 1
    crops = json.loads(res.out.read_text())
    assert crops == {
        "twitter_19_1.jpg": ["img_vg/val/crops/0_pred_yolo_crop_0.png"],
        "t_2.jpg": ["img_vg/val/crops/1_pred_yolo_crop_0.png"],
    }
    write_crops(tmp_path / "again.json", crops)
    assert read_crops(tmp_path / "again.json") == read_crops(res.out)


# -- promu data check --------------------------------------------------------------------------


def _build_data_dir(root):
    """A complete small data directory in the default layout (tiny profile names)."""
    layout = DataLayout(root=root, data=profile_config("tiny").data)
    for ds in ("twitter2015", "twitter2017"):
        for split in ("train", "dev", "test"):
            write_twitter(layout.split_file(ds, split), NER_POSTS, other_as="OTHER")
        layout.image_dir(ds, "train").mkdir(parents=True)
        for p in NER_POSTS:
            Image.new("RGB", (40, 50), "red").save(
                layout.image_dir(ds, "train") / f"{p.img_id}.jpg"
            )
        write_boxes(layout.boxes(ds), {"101": [Box(1, 1, 10, 10, 0.8, "person")]})
    write_rel2id(layout.rel2id())
    for split in ("train", "dev", "test"):
        write_mnre(layout.split_file("mnre", split), RE_POSTS)
        layout.image_dir("mnre", split).mkdir(parents=True)
        for p in RE_POSTS:
            Image.new("L", (30, 30)).save(layout.image_dir("mnre", split) / p.img_id, "PNG")
    write_captions(layout.captions(), [CaptionPair("0", "a dog", "0.png", True)])
    layout.caption_image_dir().mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(layout.caption_image_dir() / "0.png")
    return layout


def test_check_complete_directory(tmp_path, capsys):
    layout = _build_data_dir(tmp_path / "data")
    report = check_data(layout, verify_images=True)
    assert report.ok, report.problems
    t15 = next(s for s in report.splits if s.dataset == "twitter2015" and s.split == "train")
    assert (t15.n_posts, t15.n_images, t15.n_images_missing) == (3, 3, 0)
    assert t15.labels == {"PER": 1, "LOC": 1, "ORG": 1, "MISC": 1}
    assert len(t15.sha256) == 64
    mnre = next(s for s in report.splits if s.dataset == "mnre" and s.split == "dev")
    assert mnre.labels == {"None": 1, "/per/loc/place_of_residence": 1}
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True

    out = tmp_path / "report.json"
    assert promu_main(["data", "check", str(layout.root), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "RESULT: OK" in text and "PER 1" in text and "sha256" in text
    assert json.loads(out.read_text())["root"] == str(layout.root)


def test_check_reports_what_is_missing(tmp_path, capsys):
    layout = _build_data_dir(tmp_path / "data")
    layout.split_file("twitter2017", "dev").unlink()
    (layout.image_dir("twitter2015", "train") / "O_7.jpg").unlink()
    layout.rel2id().write_text(json.dumps({"None": 0, "/per/per/alumni": 1}))
    # the original MNRE release names are recognised
    for split in ("train", "dev", "test"):
        ours = layout.split_file("mnre", split)
        ours.rename(
            ours.with_name(
                {"train": "mnre_train.txt", "dev": "mnre_val .txt", "test": "mnre_test.txt"}[split]
            )
        )

    assert promu_main(["data", "check", str(layout.root)]) == 1
    text = capsys.readouterr().out
    assert "RESULT: FAILED" in text
    assert f"twitter2017/valid.txt not found under {layout.root}" in text
    assert "Twitter-2017 files train.txt/valid.txt/test.txt" in text
    assert "1 of 3 images missing" in text and "O_7.jpg" in text
    assert "ours_rel2id.json" in text and "/per/per/alumni" in text
    assert "mnre/mnre_val .txt" in text

    report = check_data(layout, datasets=("twitter2015",), on_missing_image="blank")
    assert report.ok and any("O_7.jpg" in w for w in report.warnings)
