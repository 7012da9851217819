"""`promu data check DIR` on what a user has after a download: one dataset's directory
(Twitter's train.txt valid.txt test.txt, or MNRE's files), not a whole data.root; entity counts
as seqeval reads them and as B- tags, both printed and named."""

from __future__ import annotations

import json

from PIL import Image

from promu_lib.cli import main
from promu_lib.config import profile_config
from promu_lib.data.check import count_b_tags
from promu_lib.data.dataset_dir import detect
from promu_lib.data.formats import count_entities
from promu_lib.data.records import MNRE_REL2ID, NerPost

# two posts; the second has an I- without its B- (seqeval: an entity; the papers: none)
TWITTER = "IMGID:1\nKevin\tB-PER\nDurant\tI-PER\nat\tO\nOracle\tB-LOC\n\nIMGID:2\nthe\tO\nArena\tI-LOC\n\n"


def _twitter_download(tmp_path, name="twitter2015", images=True):
    d = tmp_path / name
    d.mkdir()
    for split in ("train", "valid", "test"):
        (d / f"{split}.txt").write_text(TWITTER)
    if images:
        (tmp_path / f"{name}_images").mkdir()
        for i in (1, 2):
            Image.new("RGB", (8, 8)).save(tmp_path / f"{name}_images" / f"{i}.jpg")
    return d


def test_b_tags_and_seqeval_entities_differ_on_an_i_without_b():
    posts = [NerPost("2", ("the", "Arena"), ("O", "I-LOC")), NerPost("1", ("A",), ("B-PER",))]
    assert count_entities(posts)["LOC"] == 1 and count_b_tags(posts)["LOC"] == 0
    assert count_b_tags(posts)["PER"] == 1 and set(count_b_tags(posts)) == set(count_entities([]))


def test_a_twitter_download_is_recognised_checked_and_pointed_to(tmp_path, capsys):
    d = _twitter_download(tmp_path)
    assert main(["data", "check", str(d)]) == 0
    out = capsys.readouterr().out
    assert f"{d} holds one dataset's files" in out and "checked as twitter2015" in out
    assert (
        f"--set data.root={tmp_path} --set data.twitter2015_dir=twitter2015 "
        "--set data.twitter2015_images=twitter2015_images" in out
    )
    assert "entities as seqeval reads them: PER 1, LOC 2, ORG 0, MISC 0, total 3" in out
    assert "B- tags (what the papers count): PER 1, LOC 1, ORG 0, MISC 0, total 2" in out
    assert "images 2/2 found" in out and "RESULT: OK" in out
    assert "NOT FOUND" not in out and "pre-training" not in out


def test_only_the_text_files_name_where_the_images_are_looked_for(tmp_path, capsys):
    d = _twitter_download(tmp_path, "T17_download_2017", images=False)
    assert main(["data", "check", str(d)]) == 1
    out = capsys.readouterr().out
    assert "checked as twitter2017" in out
    assert f"looked for in {tmp_path}/T17_download_2017_images" in out
    assert "image directory" in out and "RESULT: FAILED" in out


def test_the_dataset_option_names_a_twitter_directory_or_is_refused(tmp_path, capsys):
    d = _twitter_download(tmp_path, "download")
    found = detect(d, profile_config("paper").data)
    assert found.dataset == "twitter2015" and "does not say 2015 or 2017" in found.describe()
    assert detect(d, profile_config("paper").data, ("twitter2017",)).dataset == "twitter2017"
    assert main(["data", "check", str(d), "--dataset", "mnre"]) == 1
    assert "holds Twitter-style files" in capsys.readouterr().err


def test_an_mnre_download_in_hvpnets_layout_is_recognised(tmp_path, capsys):
    txt = tmp_path / "RE_data" / "txt"
    txt.mkdir(parents=True)
    record = {"token": ["A", "and", "B"], "h": {"name": "A", "pos": [0, 1]},
              "t": {"name": "B", "pos": [2, 3]}, "img_id": "a.jpg", "relation": "/per/per/peer"}  # fmt: skip
    for name in ("mnre_train.txt", "mnre_val .txt", "mnre_test.txt"):
        (txt / name).write_text(repr(record) + "\n")
    (tmp_path / "RE_data" / "ours_rel2id.json").write_text(json.dumps(MNRE_REL2ID))
    for split in ("train", "val", "test"):
        (tmp_path / "RE_data" / "img_org" / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "RE_data" / "img_org" / split / "a.jpg")
    assert main(["data", "check", str(txt)]) == 1  # rel2id is one level up, as HVPNeT has it
    out = capsys.readouterr().out
    assert "MNRE-style" in out and "checked as mnre" in out and "--set data.mnre_dir=txt" in out
    assert "--set data.mnre_images=img_org" in out and "ln -s ../ours_rel2id.json" in out
    assert "images 1/1 found in img_org/train" in out
    (txt / "ours_rel2id.json").symlink_to("../ours_rel2id.json")
    assert main(["data", "check", str(txt)]) == 0
    assert "RESULT: OK" in capsys.readouterr().out


def test_a_directory_with_neither_gets_the_layout_and_the_keys(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "Nothing of the expected layout was found" in out
    assert "twitter2015/train.txt valid.txt test.txt" in out and "data.mnre_images" in out
