"""Every bad input gives one DataError naming the file, the line and what was expected."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from promu_lib.data.crops import convert_crops, load_crop_dict
from promu_lib.data.formats import (
    read_boxes,
    read_captions,
    read_mnre,
    read_rel2id,
    read_twitter,
    write_rel2id,
)
from promu_lib.data.images import BLANK_RGB, ImageLoader, clip_box, crop, load_image, safe_join
from promu_lib.data.records import Box
from promu_lib.errors import DataError


def _raises(fn, *args, path, line, expected, **kwargs) -> str:
    """Call ``fn``; check the DataError names ``path:line`` and that its ``expected ...`` part
    contains ``expected``."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert msg.startswith(where), msg
    assert "; expected " in msg and expected in msg.split("; expected ", 1)[1], msg
    return msg


def _mnre_line(**changes) -> str:
    row = {
        "token": ["Obama", "visits", "Paris"],
        "h": {"name": "Obama", "pos": [0, 1]},
        "t": {"name": "Paris", "pos": [2, 3]},
        "img_id": "twitter_1.jpg",
        "relation": "/per/loc/place_of_residence",
    }
    row.update(changes)
    return repr({k: v for k, v in row.items() if v is not None})


def _mnre_file(tmp_path, bad_line: str, name="ours_train.txt"):
    path = tmp_path / name
    path.write_text(_mnre_line() + "\n" + bad_line + "\n" + _mnre_line() + "\n")
    return path


# -- images ------------------------------------------------------------------------------------


def _jpeg(path, size=(32, 32), mode="RGB"):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode).save(
        path, "JPEG"
    )
    return path


def test_truncated_image(tmp_path):
    path = _jpeg(tmp_path / "a.jpg")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    msg = _raises(load_image, path, path=path, line=None, expected="a readable image file")
    assert "truncated" in msg


def test_zero_byte_image(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"")
    assert "0 bytes" in _raises(load_image, path, path=path, line=None, expected="a readable image")


def test_missing_image(tmp_path):
    path = tmp_path / "nope.jpg"
    assert "not found" in _raises(
        load_image, path, path=path, line=None, expected="a readable image"
    )


def test_not_an_image(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_text("<html>404</html>")
    assert "not an image" in _raises(load_image, path, path=path, line=None, expected="a readable")


def _png_header_only(path, width, height):
    """A PNG whose header claims ``width`` x ``height`` (no pixel data needs to exist)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = _png_header_only(tmp_path / "big.png", 12_000, 12_000)  # above our limit only
    msg = _raises(load_image, path, path=path, line=None, expected="at most 67108864 pixels")
    assert "decompression bomb" in msg and "12000x12000" in msg
    path = _png_header_only(tmp_path / "bomb.png", 50_000, 50_000)  # refused by PIL itself
    assert "decompression bomb" in _raises(
        load_image, path, path=path, line=None, expected="at most"
    )
    small = _jpeg(tmp_path / "small.jpg", (20, 20))
    _raises(load_image, small, max_pixels=100, path=small, line=None, expected="at most 100 pixels")


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "P-transparent", "I;16", "1", "LA"])
def test_other_modes_load_as_rgb(tmp_path, mode):
    base = Image.new("RGB", (6, 4), (204, 51, 51))  # a web-palette colour
    if mode == "P-transparent":
        im = base.convert("P")
        im.info["transparency"] = 0
    elif mode == "I;16":
        im = Image.fromarray(np.full((4, 6), 40000, dtype=np.uint16))
    else:
        im = base.convert(mode)
    path = tmp_path / ("a.tif" if mode == "CMYK" else "a.png")
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (6, 4)
    if mode in ("RGBA", "P", "P-transparent"):
        assert out.getpixel((0, 0)) == (204, 51, 51)
    if mode == "CMYK":
        assert out.getpixel((0, 0))[0] > 150


def test_blank_policy_counts_and_error_policy_raises(tmp_path):
    loader = ImageLoader("blank", blank_size=(8, 8))
    img = loader(tmp_path / "missing.jpg")
    assert img.size == (8, 8) and img.getpixel((0, 0)) == BLANK_RGB
    (tmp_path / "empty.jpg").write_bytes(b"")
    loader(tmp_path / "empty.jpg")
    assert loader.n_blank == 2 and "0 bytes" in loader.blanks[str(tmp_path / "empty.jpg")]
    with pytest.raises(DataError):
        ImageLoader("error")(tmp_path / "missing.jpg")
    with pytest.raises(ValueError):
        ImageLoader("ignore")


@pytest.mark.parametrize(
    "name", ["../x.jpg", "/etc/passwd", "a/../../x.jpg", "C:\\x.jpg", "..", ""]
)
def test_safe_join_rejects_escaping_names(tmp_path, name):
    source = tmp_path / "train.txt"
    with pytest.raises(DataError) as info:
        safe_join(tmp_path / "images", name, source=source, line=7)
    msg = str(info.value)
    assert msg.startswith(f"{source}:7:") and "expected a file name relative to" in msg


def test_safe_join_accepts_relative_names(tmp_path):
    assert safe_join(tmp_path, "sub/a.jpg") == tmp_path / "sub" / "a.jpg"
    assert safe_join(tmp_path, "a..b.jpg") == tmp_path / "a..b.jpg"


def test_box_outside_image_and_inverted_box(tmp_path):
    boxes_file = tmp_path / "boxes.json"
    msg = _raises(
        clip_box,
        Box(50, 50, 60, 60),
        40,
        30,
        source=boxes_file,
        path=boxes_file,
        line=None,
        expected="x1 < x2",
    )
    assert "40x30" in msg
    assert clip_box(Box(-5, 10, 100, 20), 40, 30) == Box(0, 10, 40, 20)
    assert crop(Image.new("RGB", (40, 30)), Box(2.5, 3, 10, 12.2)).size == (8, 10)
    boxes_file.write_text(
        json.dumps({"a": [[0, 0, 5, 5, 0.5, "dog"]], "b": [[9, 0, 4, 5, 0.5, "x"]]})
    )
    msg = _raises(read_boxes, boxes_file, path=boxes_file, line=1, expected="[x1, y1, x2, y2")
    assert "image 'b' box 0 is inverted" in msg


def test_boxes_errors_name_the_line_of_the_key_and_skip(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(
        json.dumps({"a": [[0, 0, 5, 5, 0.5, "dog"]], "b": [[0, 0, 5, 5, 1.7, 3]]}, indent=2)
    )
    line_of_b = path.read_text().splitlines().index('  "b": [') + 1
    msg = _raises(read_boxes, path, path=path, line=line_of_b, expected="0 <= score <= 1")
    assert "score 1.7" in msg
    assert list(read_boxes(path, on_bad="skip")) == ["a", "b"]
    path.write_text(json.dumps({"a": [[0, 0, 5, 5]]}))
    _raises(read_boxes, path, path=path, line=1, expected="[x1, y1, x2, y2, score, class]")


class _Unsafe:
    pass


def test_pth_with_a_custom_class_is_refused(tmp_path):
    path = tmp_path / "twitter2015_train_dict.pth"
    torch.save({"1.jpg": _Unsafe()}, path)
    msg = _raises(load_crop_dict, path, path=path, line=None, expected="a torch.save'd dict")
    assert "weights_only=True" in msg
    (tmp_path / "crops").mkdir()
    with pytest.raises(DataError):
        convert_crops(path, tmp_path / "crops", tmp_path / "out.json")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    _raises(load_crop_dict, garbage, path=garbage, line=None, expected="a torch.save'd dict")


def test_crop_names_escaping_the_crops_dir(tmp_path):
    (tmp_path / "crops").mkdir()
    torch.save({"1.jpg": ["../../etc/passwd"]}, tmp_path / "d.pth")
    _raises(
        convert_crops,
        tmp_path / "d.pth",
        tmp_path / "crops",
        tmp_path / "c.json",
        path=tmp_path / "d.pth",
        line=None,
        expected="a file name relative to",
    )


# -- Twitter -----------------------------------------------------------------------------------


def _twitter(tmp_path, text, name="train.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_ner_label(tmp_path):
    path = _twitter(tmp_path, "IMGID:1\nA\tO\nB\tB-PERSON\n")
    msg = _raises(read_twitter, path, path=path, line=3, expected="one of O, B-PER")
    assert "'B-PERSON'" in msg


@pytest.mark.parametrize(
    ("line", "hint"),
    [("A B-PER", "separated by spaces"), ("A\tB-PER\tx", "3 tab-separated"), ("A", "1 tab")],
)
def test_wrong_column_count(tmp_path, line, hint):
    path = _twitter(tmp_path, f"IMGID:1\nx\tO\n{line}\n\n")
    assert hint in _raises(read_twitter, path, path=path, line=3, expected="'token<TAB>label'")


def test_empty_token(tmp_path):
    path = _twitter(tmp_path, "IMGID:1\n\tO\n")
    assert "empty token" in _raises(
        read_twitter, path, path=path, line=2, expected="'token<TAB>label'"
    )


def test_token_line_before_any_imgid(tmp_path):
    path = _twitter(tmp_path, "A\tO\nIMGID:1\nB\tO\n")
    msg = _raises(read_twitter, path, path=path, line=1, expected="an 'IMGID:<id>' line")
    assert "outside a post" in msg
    path = _twitter(tmp_path, "IMGID:1\nA\tO\n\nB\tO\n")  # blank line, then no IMGID
    _raises(read_twitter, path, path=path, line=4, expected="an 'IMGID:<id>' line")


def test_empty_post(tmp_path):
    path = _twitter(tmp_path, "IMGID:1\nA\tO\n\nIMGID:2\n\nIMGID:3\nB\tO\n")
    msg = _raises(read_twitter, path, path=path, line=4, expected="at least one 'token<TAB>label'")
    assert "IMGID:2 has no token lines" in msg


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"IMGID:1\nA\tO\ncaf\xe9\tO\n")
    msg = _raises(read_twitter, path, path=path, line=3, expected="UTF-8 text")
    assert "byte offset 15" in msg and "column 4" in msg


def test_imgid_with_path(tmp_path):
    path = _twitter(tmp_path, "IMGID:1\nA\tO\n\nIMGID:../../etc/x\nB\tO\n")
    assert "'..'" in _raises(read_twitter, path, path=path, line=4, expected="'IMGID:<id>'")


@pytest.mark.parametrize(
    ("reader", "expected"),
    [
        (read_twitter, "posts of the form 'IMGID:<id>'"),
        (read_mnre, "one record per line"),
        (read_captions, "one JSON object per line"),
    ],
)
def test_empty_split_file(tmp_path, reader, expected):
    path = tmp_path / "valid.txt"
    path.write_text("\n\n")
    assert "no " in _raises(reader, path, path=path, line=None, expected=expected)


def test_all_records_bad_with_skip_returns_nothing(tmp_path):
    path = _twitter(tmp_path, "IMGID:1\nA\tB-FOO\n")
    assert read_twitter(path, on_bad="skip") == []


# -- MNRE --------------------------------------------------------------------------------------


def test_malformed_mnre_line(tmp_path):
    path = _mnre_file(tmp_path, "{'token': ['a', 'b'], 'h': ")
    _raises(read_mnre, path, path=path, line=2, expected="one record per line")
    path = _mnre_file(tmp_path, "__import__('os').system('echo pwned')")
    assert "not a dict literal" in _raises(
        read_mnre, path, path=path, line=2, expected="one record"
    )
    path = _mnre_file(tmp_path, "[1, 2]")
    assert "list, not a dict" in _raises(read_mnre, path, path=path, line=2, expected="one record")


def test_mnre_missing_key(tmp_path):
    path = _mnre_file(tmp_path, _mnre_line(relation=None))
    assert "'relation'" in _raises(
        read_mnre, path, path=path, line=2, expected="one record per line"
    )


def test_unknown_relation(tmp_path):
    path = _mnre_file(tmp_path, _mnre_line(relation="/per/per/alumni"))
    msg = _raises(read_mnre, path, path=path, line=2, expected="one of the 23 relations of MNRE v2")
    assert "'/per/per/alumni'" in msg


def test_relation_not_in_given_rel2id(tmp_path):
    path = _mnre_file(tmp_path, _mnre_line(relation="None"))
    rel2id = {"None": 0, "/per/loc/place_of_residence": 1}
    assert len(read_mnre(path, rel2id)) == 3
    path = _mnre_file(tmp_path, _mnre_line(relation="/per/per/peer"))
    _raises(
        read_mnre,
        path,
        rel2id,
        path=path,
        line=2,
        expected="one of the 2 relations of the given rel2id",
    )


@pytest.mark.parametrize(
    ("pos", "problem"),
    [
        ([2, 4], "out of range for 3 tokens"),
        ([1, 1], "out of range"),
        ([-1, 1], "out of range"),
        ([0], "pos is"),
    ],
)
def test_entity_positions_out_of_range(tmp_path, pos, problem):
    path = _mnre_file(tmp_path, _mnre_line(t={"name": "x", "pos": pos}))
    msg = _raises(
        read_mnre, path, path=path, line=2, expected="'t': {'name': str, 'pos': [start, end]}"
    )
    assert problem in msg and "<= 3" in msg


def test_non_string_tokens(tmp_path):
    path = _mnre_file(tmp_path, _mnre_line(token=["a", 1, "c"]))
    _raises(read_mnre, path, path=path, line=2, expected="'token': a non-empty list of strings")


@pytest.mark.parametrize("img_id", ["../img/x.jpg", "/abs/x.jpg"])
def test_mnre_img_id_with_path(tmp_path, img_id):
    path = _mnre_file(tmp_path, _mnre_line(img_id=img_id))
    _raises(read_mnre, path, path=path, line=2, expected="'img_id': a plain image file name")


def test_mnre_skip_counts(tmp_path):
    from promu_lib.data.formats import ReadReport

    path = _mnre_file(tmp_path, _mnre_line(relation=None))
    report = ReadReport()
    assert len(read_mnre(path, on_bad="skip", report=report)) == 2
    assert report.skipped == 1 and f"{path}:2" in report.problems[0]


def test_rel2id_disagreeing(tmp_path):
    path = tmp_path / "ours_rel2id.json"
    write_rel2id(path, ["None", "/per/per/alumni", "/per/per/parent"])
    msg = _raises(read_rel2id, path, path=path, line=1, expected="the 23 MNRE-v2 relations")
    assert "missing" in msg and "unexpected ['/per/per/alumni']" in msg
    path.write_text(json.dumps({"/per/per/parent": 0, "None": 1}))
    assert "'None' has id 1" in _raises(
        read_rel2id, path, path=path, line=1, expected="a JSON object"
    )
    path.write_text(json.dumps({f"r{i}": i for i in range(1, 31)} | {"None": 0}))
    assert "MNRE v1" in _raises(read_rel2id, path, path=path, line=1, expected="the 23")
    path.write_text('{"None": 0,\n "a": }')
    _raises(read_rel2id, path, path=path, line=2, expected="a JSON value")


# -- captions ----------------------------------------------------------------------------------


def _captions(tmp_path, bad):
    good = json.dumps({"id": "0", "caption": "a dog", "image": "0.png", "matched": True})
    path = tmp_path / "captions.jsonl"
    path.write_text(good + "\n" + bad + "\n")
    return path


def test_malformed_json_line(tmp_path):
    path = _captions(tmp_path, '{"id": "1", "caption": "x", ')
    assert "not valid JSON" in _raises(
        read_captions, path, path=path, line=2, expected="a JSON value"
    )


def test_caption_missing_key_and_bad_types(tmp_path):
    path = _captions(tmp_path, json.dumps({"id": "1", "caption": "x", "image": "1.png"}))
    assert "'matched'" in _raises(
        read_captions, path, path=path, line=2, expected="one JSON object"
    )
    path = _captions(
        tmp_path, json.dumps({"id": "1", "caption": "x", "image": "1.png", "matched": "yes"})
    )
    _raises(read_captions, path, path=path, line=2, expected="'matched': true or false")
    path = _captions(
        tmp_path, json.dumps({"id": "0", "caption": "x", "image": "1.png", "matched": True})
    )
    assert "first on line 1" in _raises(
        read_captions, path, path=path, line=2, expected="unique ids"
    )
