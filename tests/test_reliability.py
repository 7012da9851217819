"""Reliability and security (issues 7, 17): bad inputs, interruption, untrusted files,
concurrency.

Each bad input gives one clear error (file, line, what was expected) and leaves no partial
output, or, where the design tolerates it, works and says so. Cases already proven elsewhere
are not repeated here:

- images (truncated, zero-byte, missing, not an image, huge, grayscale/CMYK/RGBA/palette/16-bit),
  malformed lines, missing keys, unknown relation / NER label, column-count mismatch, entity
  positions out of range, empty post, non-UTF-8 Twitter file, ``../`` and absolute image ids,
  empty split files, rel2id disagreeing with the data, boxes outside the image, pickled crop
  dicts: ``tests/test_bad_inputs.py``;
- truncation of long posts inside NerDataset/ReDataset: ``tests/test_datasets.py``;
- checkpoints of another model shape: ``tests/test_train.py::test_checkpoint_errors`` and
  ``tests/test_models.py::test_load_pretrained_backbone_roundtrip_and_errors``;
- unknown config keys and wrong types: ``tests/test_config.py``;
- an atomic write interrupted by an exception: ``tests/test_io_cache.py``;
- kill -9 and resume of pre-training (mid-step, during a save, between its renames):
  ``tests/test_pretrain.py``;
- every ``promu`` command on bad inputs (one error line, exit status, nothing written):
  ``tests/test_bad_input_sweep.py``.
"""

from __future__ import annotations

import ast
import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from worlds import world

from promu_lib.config import ConfigError, load_config, profile_config, save_config
from promu_lib.data.datasets import NerDataset, ReDataset, load_split
from promu_lib.data.formats import (
    ReadReport,
    read_boxes,
    read_captions,
    read_mnre,
    read_rel2id,
    write_mnre,
    write_twitter,
)
from promu_lib.data.records import RE_MARKERS, NerPost, RePost, Span
from promu_lib.errors import CheckpointError, DataError, MissingAssetError
from promu_lib.io import atomic_write_json
from promu_lib.train.common import (
    build_optimizer,
    checkpoint_exists,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)

torch.set_num_threads(1)

PACKAGE = Path(__file__).resolve().parent.parent / "promu_lib"


def _tok():
    from transformers import BertTokenizer

    from promu_lib.data.tokenizer import build_vocab

    vocab = build_vocab(["alice bob paris acme went to with likes"])
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.add_special_tokens({"additional_special_tokens": list(RE_MARKERS)})
    return tok


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


# =============================================================================================
# 1. Bad inputs
# =============================================================================================

# -- text readers ----------------------------------------------------------------------------


_MNRE_OK = (
    "{'token': ['Obama', 'visits', 'Paris'], 'h': {'name': 'Obama', 'pos': [0, 1]}, "
    "'t': {'name': 'Paris', 'pos': [2, 3]}, 'img_id': 'a.jpg', 'relation': 'None'}"
)


@pytest.mark.parametrize(
    ("name", "reader", "good", "bad"),
    [
        ("ours_train.txt", read_mnre, _MNRE_OK, _MNRE_OK.replace("Paris", "Par\udce9s")),
        (
            "captions.jsonl",
            read_captions,
            '{"id": "0", "caption": "a dog", "image": "0.png", "matched": true}',
            '{"id": "1", "caption": "caf\udce9", "image": "1.png", "matched": true}',
        ),
        ("rel2id.json", read_rel2id, None, '{"None": 0, "caf\udce9": 1}'),
        ("boxes.json", read_boxes, None, '{"caf\udce9.jpg": []}'),
    ],
)
def test_non_utf8_bytes_in_every_text_format(tmp_path, name, reader, good, bad):
    """A Latin-1 byte (0xE9) where UTF-8 is expected: the file, the line and the byte offset."""
    path = tmp_path / name
    text = "\n".join(x for x in (good, bad) if x) + "\n"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(DataError) as err:
        reader(path)
    line = 2 if good else 1
    assert str(err.value).startswith(f"{path}:{line}:"), err.value
    assert "are not UTF-8" in str(err.value) and "expected UTF-8 text" in str(err.value)


@pytest.mark.parametrize("image", ["../secret.png", "/etc/passwd", "a/../../b.png"])
def test_caption_image_path_cannot_escape(tmp_path, image):
    path = tmp_path / "captions.jsonl"
    path.write_text(json.dumps({"id": "0", "caption": "x", "image": image, "matched": True}))
    with pytest.raises(DataError, match=r"expected 'image': a path relative to") as err:
        read_captions(path)
    assert str(err.value).startswith(f"{path}:1:")


def test_overlapping_entities_are_tolerated_counted_and_marked(tmp_path):
    """MNRE holds 59 lines with overlapping head and tail: read, counted, both marked."""
    rows = [
        RePost(("a", "b", "c"), Span("a b", 0, 2), Span("b c", 1, 3), "x.jpg", "None"),
        RePost(("a", "b", "c"), Span("b", 1, 2), Span("b", 1, 2), "x.jpg", "/per/per/peer"),
        RePost(("a", "b", "c"), Span("a", 0, 1), Span("c", 2, 3), "x.jpg", "None"),
    ]
    path = write_mnre(tmp_path / "ours_train.txt", rows)
    report = ReadReport()
    posts = read_mnre(path, report=report)
    assert len(posts) == 3 and report.notes["overlapping head and tail"] == 2
    tok = _tok()
    ds = ReDataset(posts, tok, max_len=20)
    for i in range(3):
        pieces = tok.convert_ids_to_tokens(ds[i]["input_ids"].tolist())
        assert sorted(p for p in pieces if p in RE_MARKERS) == sorted(RE_MARKERS)
        assert pieces[ds[i]["head_start"]] == "<s>" and pieces[ds[i]["tail_start"]] == "<o>"


def test_inverted_entity_span_is_an_error(tmp_path):
    path = tmp_path / "ours_train.txt"
    path.write_text(_MNRE_OK + "\n" + _MNRE_OK.replace("'pos': [2, 3]", "'pos': [3, 1]") + "\n")
    with pytest.raises(DataError, match=r"'t' pos \[3, 1\] is out of range") as err:
        read_mnre(path)
    assert str(err.value).startswith(f"{path}:2:") and "0 <= start < end <= 3" in str(err.value)


# -- posts built in code (they bypass the readers) ---------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "labels", "message"),
    [
        (("Alice", "went"), ("B-PER",), "2 tokens and 1 labels; expected one label per token"),
        ((), (), "0 tokens and 0 labels"),
        (("Alice",), ("B-PERSON",), "labels ['B-PERSON']; expected one of O, B-PER"),
    ],
)
def test_hand_made_ner_posts_are_checked(tokens, labels, message):
    """Before: a 1-label post for 2 words broadcast its label silently; a bad tag was a KeyError."""
    good = NerPost("ok", ("bob",), ("B-PER",), line=1)
    with pytest.raises(DataError) as err:
        NerDataset([good, NerPost("img7", tokens, labels, line=12)], _tok(), 20, name="mine/train")
    assert str(err.value).startswith("mine/train:12: post img7@L12") and message in str(err.value)


def test_hand_made_re_post_with_unknown_relation():
    post = RePost(("a", "b"), Span("a", 0, 1), Span("b", 1, 2), "x.jpg", "/per/per/alumni")
    with pytest.raises(DataError, match="relation '/per/per/alumni'; expected one of the 23"):
        ReDataset([post], _tok(), 20)


# -- a post far longer than max_len, from the files through load_split --------------------------


@pytest.fixture
def long_posts_cfg(tmp_path):
    """One short and one 300-word post per split; MNRE entities at both ends of 300 tokens."""
    words = ["alice", *(["went", "to"] * 149), "paris"]
    labels = ["B-PER", *(["O"] * 298), "B-LOC"]
    ner = [NerPost("1", ("bob",), ("B-PER",)), NerPost("2", tuple(words), tuple(labels))]
    long_re = RePost(tuple(words), Span("alice", 0, 1), Span("paris", 299, 300), "m.jpg", "None")
    short_re = RePost(("bob", "likes", "acme"), Span("bob", 0, 1), Span("acme", 2, 3), "m.jpg",
                      "/per/org/member_of")  # fmt: skip
    root = tmp_path / "data"
    for split in ("train.txt", "valid.txt", "test.txt"):
        write_twitter(root / "twitter2015" / split, ner)
    for split in ("ours_train.txt", "ours_val.txt", "ours_test.txt"):
        write_mnre(root / "mnre" / split, [short_re, long_re])
    return profile_config("tiny").replace(**{"data.root": str(root), "data.max_len": 16})


def test_long_ner_post_from_a_file_is_truncated_with_a_warning(long_posts_cfg, caplog):
    from promu_lib.data.tokenizer import build_tokenizer

    tok = build_tokenizer(long_posts_cfg)
    with caplog.at_level(logging.WARNING):
        ds = load_split(long_posts_cfg, "twitter2015", "train", tok, with_images=False)
    assert "1 of 2 posts are longer than data.max_len=16 pieces and were truncated" in caplog.text
    item = ds[1]
    assert len(item["input_ids"]) == 16 and ds.stats["truncated"] == 1
    kept = int(item["word_mask"].sum())
    assert 0 < kept < 300 and item["word_mask"][:kept].all()  # a prefix of the words is kept
    pieces = tok.convert_ids_to_tokens(item["input_ids"].tolist())
    assert [pieces[i] for i in item["word_starts"][:kept]] == list(ds.posts[1].tokens[:kept])
    assert item["tags"][0] == 1 and not item["tags"][kept:].any()  # B-PER kept, rest masked
    assert ds.gold(1)[-1] == "B-LOC" and len(ds.gold(1)) == 300  # scored on every gold label


def test_long_re_post_from_a_file_keeps_both_entities(long_posts_cfg, caplog):
    from promu_lib.data.tokenizer import build_tokenizer

    tok = build_tokenizer(long_posts_cfg)
    with caplog.at_level(logging.WARNING):
        ds = load_split(long_posts_cfg, "mnre", "dev", tok, with_images=False)
    assert "were truncated" in caplog.text and ds.stats["truncated"] == 1
    item = ds[1]
    pieces = tok.convert_ids_to_tokens(item["input_ids"].tolist())
    assert len(pieces) == 16 and pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert pieces[item["head_start"] + 1] == "alice" and pieces[item["tail_start"] + 1] == "paris"
    assert item["label"] == 0  # "None"


# -- config ------------------------------------------------------------------------------------


def test_config_file_with_an_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("finetune:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config("tiny", file=path)
    assert str(path) in str(err.value) and "lrr" in str(err.value)


# -- checkpoints and weights -------------------------------------------------------------------


def _saved_checkpoint(path: Path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), 1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(path, model, opt, step=5, extra={"epoch": 1})
    return model, opt


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\xff" * 64}[how]
    )


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "trainer.json"])
def test_damaged_checkpoint_file_raises_checkpoint_error(tmp_path, name, how):
    """Before: a damaged optimizer file raised SafetensorError, trainer.json a JSONDecodeError."""
    model, opt = _saved_checkpoint(tmp_path / "ckpt")
    _damage(tmp_path / "ckpt" / name, how)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "ckpt", model, opt)
    assert str(err.value).startswith(str(tmp_path / "ckpt" / name) + ": not a readable")


class _RunsCode:
    """Unpickling this calls os.mkdir(target): what a malicious .pth would do."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _weights_file(tmp_path: Path, kind: str) -> Path:
    state = {k: v.contiguous() for k, v in nn.Conv2d(3, 4, 3).state_dict().items()}
    if kind in ("truncated", "empty"):
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
        _damage(path, kind)
    elif kind == "garbage.pth":
        path = tmp_path / "w.pth"
        path.write_bytes(b"<html>404 not found</html>")
    else:  # a .pth whose unpickling would run code
        path = tmp_path / "w.pth"
        torch.save({"conv.weight": _RunsCode(tmp_path / "pwned")}, path)
    return path


@pytest.mark.parametrize(
    ("loader", "kind"),
    [
        *((loader, kind) for loader in ("load_weights", "load_pretrained_backbone")
          for kind in ("truncated", "empty")),  # these read safetensors only
        *(("build_pyramid", kind) for kind in ("truncated", "empty", "garbage.pth", "runs-code.pth")),
    ],
)  # fmt: skip
def test_damaged_or_unsafe_weights_raise_checkpoint_error(tmp_path, loader, kind):
    """Before: build_pyramid let SafetensorError and torch's UnpicklingError through (whose text
    advises weights_only=False). No code in the file ever runs."""
    from promu_lib.models import load_pretrained_backbone
    from promu_lib.models.pyramid import build_pyramid

    path = _weights_file(tmp_path, kind)
    load = {
        "load_weights": lambda: load_weights(path, nn.Conv2d(3, 4, 3)),
        "load_pretrained_backbone": lambda: load_pretrained_backbone(None, path),
        "build_pyramid": lambda: build_pyramid("tiny-cnn", str(path)),
    }[loader]
    with pytest.raises(CheckpointError) as err:
        load()
    assert str(err.value).startswith(str(path)), err.value
    assert "weights_only=False" not in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_save_killed_between_its_two_renames_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The window where ``ckpt`` is renamed away and the new one not yet in place: the next run
    finds the previous checkpoint (before: none, so a resumed run restarted from scratch)."""
    import promu_lib.train.common as common

    model, opt = _saved_checkpoint(tmp_path / "ckpt")
    real_replace = os.replace

    def killed_after_first_rename(src, dst):
        real_replace(src, dst)
        if Path(dst).name == ".ckpt.old":
            raise KeyboardInterrupt  # stands for SIGKILL right after the first rename

    monkeypatch.setattr(common.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt", model, opt, step=9)
    monkeypatch.setattr(common.os, "replace", real_replace)
    assert not (tmp_path / "ckpt").exists()
    assert checkpoint_exists(tmp_path / "ckpt")
    assert load_checkpoint(tmp_path / "ckpt", model, opt)["step"] == 5
    save_checkpoint(tmp_path / "ckpt", model, opt, step=10)
    assert load_checkpoint(tmp_path / "ckpt", model, opt)["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# -- the paper profile with nothing downloaded -------------------------------------------------


def _paper_assets(cfg):
    from promu_lib.data.tokenizer import build_tokenizer
    from promu_lib.detect import build_detector
    from promu_lib.mining import load_spacy
    from promu_lib.models import build_text_encoder, build_vision_encoder, load_pretrained_backbone
    from promu_lib.models.pyramid import build_pyramid
    from promu_lib.teacher import ClipTeacher

    return {
        "tokenizer": (lambda: build_tokenizer(cfg), "bert-base-uncased"),
        "text encoder": (lambda: build_text_encoder(cfg.text), "bert-base-uncased"),
        "vision weights": (lambda: build_vision_encoder(cfg.vision), cfg.vision.weights_file),
        "hvpnet backbone": (
            lambda: build_pyramid(cfg.hvpnet.backbone, cfg.hvpnet.backbone_weights),
            cfg.hvpnet.backbone_weights,
        ),
        "spacy pipeline": (lambda: load_spacy(cfg.mining.spacy_model), cfg.mining.spacy_model),
        "yolo weights": (lambda: build_detector(cfg), cfg.mining.yolo_weights),
        "clip weights": (lambda: ClipTeacher(cfg.mining.clip_weights), cfg.mining.clip_weights),
        "data split": (lambda: load_split(cfg, "mnre", "train", None), "ours_train.txt"),
        "init checkpoint": (
            lambda: load_pretrained_backbone(None, "runs/paper/pretrain/encoder.safetensors"),
            "encoder.safetensors",
        ),
    }


@pytest.mark.parametrize(
    "asset",
    [
        "tokenizer",
        "text encoder",
        "vision weights",
        "hvpnet backbone",
        "spacy pipeline",
        "yolo weights",
        "clip weights",
        "data split",
        "init checkpoint",
    ],
)
def test_paper_profile_names_each_missing_asset(tmp_path, monkeypatch, asset):
    """Relative paths of the paper profile resolve under an empty project root: each asset
    stops at once with what is missing, where it looked and how to provide it."""
    monkeypatch.setenv("PROMU_ROOT", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build, name = _paper_assets(profile_config("paper"))[asset]
    try:
        build()
    except MissingAssetError as e:
        err = e
    else:
        pytest.skip(f"{asset} is installed on this machine, so it is not missing")
    assert name in str(err) and err.looked and len(err.how) > 20, err
    local = [p for p in err.looked if p.startswith(str(tmp_path))]
    if asset not in ("spacy pipeline", "clip weights"):  # a package name and a hub id
        assert local, f"{asset}: looked only in {err.looked}"
    assert list(tmp_path.iterdir()) == []  # nothing written while failing


def test_paper_profile_through_the_cli_is_one_line_and_leaves_no_file(tmp_path, capfd):
    from promu_lib.cli import main

    out = tmp_path / "run"
    code = main(
        ["finetune", "--profile", "paper", "--dataset", "mnre", "--model", "bert", "--out",
         str(out), "--seed", "0"]
    )  # fmt: skip
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("promu: error: "), err
    assert "is missing. Looked in:" in err[0]
    assert not out.exists() or not any(out.iterdir())


# -- full disk, read-only or foreign output location --------------------------------------------


def _fail(code: int):
    def raiser(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return raiser


@pytest.mark.parametrize(
    ("call", "code"),
    [("fsync", errno.ENOSPC), ("replace", errno.EROFS), ("chmod", errno.EDQUOT)],
)
def test_disk_full_or_read_only_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch, call, code):
    import promu_lib.io as pio

    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"f1": 50.0})
    monkeypatch.setattr(pio.os, call, _fail(code))
    with pytest.raises(OSError) as err:
        atomic_write_json(target, {"f1": 99.0})
    assert err.value.errno == code
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"f1": 50.0}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import promu_lib.train.common as common

    model, opt = _saved_checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(common, "atomic_write_json", _fail(errno.ENOSPC))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "ckpt", model, opt, step=6)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary directory
    assert load_checkpoint(tmp_path / "ckpt", model, opt)["step"] == 5


def test_output_dir_under_a_regular_file(tmp_path, capfd):
    """Root ignores chmod, so a path under a regular FILE stands for an unwritable location."""
    from promu_lib.cli import main

    blocker = tmp_path / "runs"
    blocker.write_text("not a directory")
    with pytest.raises(NotADirectoryError):
        atomic_write_json(blocker / "x" / "metrics.json", {})
    with pytest.raises(NotADirectoryError):
        save_config(profile_config("tiny"), blocker / "sub" / "config.yaml")
    code = main(
        ["finetune", "--dataset", "mnre", "--model", "bert", "--out", str(blocker / "ft"),
         "--seed", "0"]
    )  # fmt: skip
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err  # before: a raw NotADirectoryError traceback
    assert err[0].startswith("promu: error: Not a directory: ") and str(blocker) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert blocker.read_text() == "not a directory"


# =============================================================================================
# 2. Interruption: kill -9 a fine-tuning run, rerun it, same metrics
# =============================================================================================

FINETUNE_WORLD = {
    **world(twitter2015=(48, 8, 8)),
    "finetune.epochs": 3,
    "finetune.batch_size": 4,
    "run.progress": False,
}


def _finetune_process(cfg_file: Path, out: Path) -> subprocess.Popen:
    """``promu finetune`` in a fresh process with one thread (identical float reductions)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = ["finetune", "--dataset", "twitter2015", "--model", "bert", "--config", str(cfg_file)]
    return subprocess.Popen(
        [sys.executable, "-m", "promu_lib.cli", *args, "--seed", "0", "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _outputs(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("seconds")  # wall time: the one field that may differ
    return {
        "metrics": metrics,
        "predictions": (out / "predictions.jsonl").read_bytes(),
        "model": (out / "model.safetensors").read_bytes(),
        "files": _visible(out),
    }


@pytest.mark.slow
def test_killed_finetune_resumes_to_the_same_metrics(tmp_path):
    from promu_lib.data.toyworld import build_toy_world

    cfg = load_config(
        "tiny",
        overrides={
            **FINETUNE_WORLD,
            "data.root": str(tmp_path / "data"),
            "run.output_dir": str(tmp_path / "runs"),
        },
    )
    build_toy_world(cfg, progress=False)
    cfg_file = save_config(cfg, tmp_path / "cfg.yaml")
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    assert _finetune_process(cfg_file, straight).wait(timeout=300) == 0
    reference = _outputs(straight)

    proc = _finetune_process(cfg_file, killed)
    trainer = killed / "ckpt" / "trainer.json"
    deadline = time.time() + 300

    def checkpoint_step() -> int | None:
        try:
            return json.loads(trainer.read_text())["step"]
        except (OSError, ValueError, KeyError):
            return None  # not there yet, or being replaced

    seen: list[tuple[int, float]] = []  # (step of a checkpoint, when it appeared)
    while len(seen) < 2:  # the ends of epochs 1 and 2: their distance is one epoch, measured
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the end"
        step = checkpoint_step()
        if step is not None and (not seen or step != seen[-1][0]):
            seen.append((step, time.time()))
        time.sleep(0.002)
    epoch_seconds = seen[1][1] - seen[0][1]
    # a random point of the last epoch (a fixed seed, so a failure can be replayed); the test
    # evaluation after it is further margin
    time.sleep(random.Random(7).uniform(0.0, 0.8) * epoch_seconds)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "DONE.json").exists(), "the kill landed after the end: tested nothing"

    assert _finetune_process(cfg_file, killed).wait(timeout=300) == 0
    resumed = _outputs(killed)
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["predictions"] == reference["predictions"]
    assert resumed["model"] == reference["model"]  # bitwise, on CPU
    assert resumed["files"] == reference["files"]
    assert not (killed / "ckpt").exists()


# =============================================================================================
# 3. Untrusted files: nothing in the package can run code from a data or weights file
# =============================================================================================

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve"}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def unsafe_calls(source: str) -> list[str]:
    """Calls that can execute code from a file or a string: eval/exec, unpickling,
    ``torch.load`` without ``weights_only=True``, ``yaml.load`` without a safe loader,
    ``numpy.load(allow_pickle=True)``, ``pandas.read_pickle``."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in _PICKLE_MODULES:
            if any(a.name in ("load", "loads", "Unpickler") for a in node.names):
                hits.append(f"line {node.lineno}: from {node.module} import ...")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        head, _, attr = name.rpartition(".")
        bad = (
            name in ("eval", "exec", "builtins.eval", "builtins.exec")
            or (head in _PICKLE_MODULES and attr in ("load", "loads", "Unpickler", "open"))
            or (name == "torch.load" and not _is_true(kw.get("weights_only")))
            or (name in ("yaml.unsafe_load", "yaml.full_load", "read_pickle"))
            or name.endswith("pd.read_pickle")
            or (
                name == "yaml.load" and "SafeLoader" not in _dotted(kw.get("Loader", ast.Name("?")))
            )
            or (name in ("np.load", "numpy.load") and _is_true(kw.get("allow_pickle")))
        )
        if bad:
            hits.append(f"line {node.lineno}: {name}(...)")
    return hits


def test_the_unsafe_call_scanner_finds_each_pattern():
    unsafe = """
import pickle, torch, yaml, numpy as np
from pickle import loads
eval("1")
exec("x = 1")
pickle.load(fh)
torch.load(path)
torch.load(path, weights_only=False)
yaml.load(text)
yaml.unsafe_load(text)
np.load(path, allow_pickle=True)
"""
    assert len(unsafe_calls(unsafe)) == 9, unsafe_calls(unsafe)
    safe = """
import pickle, torch, yaml, ast, numpy as np
try:
    torch.load(path, map_location="cpu", weights_only=True)
except pickle.UnpicklingError:
    pass
yaml.safe_load(text); yaml.load(text, Loader=yaml.SafeLoader)
ast.literal_eval(line); np.load(path); model.eval()
"""
    assert unsafe_calls(safe) == []


def test_package_never_evaluates_or_unpickles_untrusted_data():
    """Checkpoints are safetensors; the one .pth reader per kind uses weights_only=True; MNRE
    lines are read with ast.literal_eval. Paths named inside data files cannot leave their
    directory: tests/test_bad_inputs.py::test_safe_join_* and test_*img_id_with_path, the
    caption test above."""
    hits = {
        str(p.relative_to(PACKAGE)): unsafe_calls(p.read_text(encoding="utf-8"))
        for p in sorted(PACKAGE.rglob("*.py"))
    }
    assert {k: v for k, v in hits.items() if v} == {}


def _path_like(node: ast.AST) -> bool:
    """``a / "b"``, a string, an f-string, ``Path(...)``/``str(...)``: a file name, not a buffer."""
    if isinstance(node, ast.Call):
        return _dotted(node.func) in ("Path", "str", "os.path.join")
    is_div = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
    return (
        is_div
        or isinstance(node, ast.JoinedStr)
        or (isinstance(node, ast.Constant) and isinstance(node.value, str))
    )


def unatomic_writes(source: str) -> list[str]:
    """File writes that bypass promu_lib.io: open() for writing, Path.write_text/write_bytes,
    torch.save / numpy.save / safetensors save_file, save_pretrained, savefig or PIL's save to a
    path."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        attr = name.rpartition(".")[2]
        mode = (
            node.args[1]
            if len(node.args) > 1
            else {k.arg: k.value for k in node.keywords}.get("mode")
        )
        writes_mode = isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in "wax+")
        to_a_path = bool(node.args) and _path_like(node.args[0])  # not a buffer
        if (
            (name in ("open", "io.open", "os.fdopen") and writes_mode)
            or attr in ("write_text", "write_bytes", "save_file", "save_pretrained")
            or name in ("torch.save", "np.save", "np.savez", "numpy.save")
            or (attr in ("savefig", "save") and "." in name and to_a_path)
        ):
            hits.append(f"line {node.lineno}: {name}(...)")
    return hits


def test_the_write_scanner_finds_each_pattern():
    assert len(unatomic_writes("open(p, 'w'); p.write_text(s); torch.save(x, p)")) == 3
    assert len(unatomic_writes("fig.savefig(out / 'a.png'); open(p, mode='ab')")) == 2
    assert len(unatomic_writes("img.save(f'{d}/a.jpg'); np.save(Path(p), x)")) == 2
    safe = "open(p); open(p, 'rb'); fig.savefig(buf, format='png'); img.save(buf, 'JPEG')"
    assert unatomic_writes(safe + "; save(path, scene); safetensors.torch.save(tensors)") == []


_ALLOWED_WRITES = {
    "locks.py": 1,  # a lock opens its lock file for appending; it holds no output
    "predict.py": 1,  # save_pretrained into a temporary directory that is renamed into place
}


def test_every_output_file_goes_through_the_atomic_helpers():
    """Stage outputs (cache markers, checkpoints, metrics, tables, figures, reports) are all
    written by promu_lib.io: a kill never leaves a half-written file under its final name."""
    found = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        rel = str(p.relative_to(PACKAGE))
        if rel == "io.py":  # the helpers themselves
            continue
        hits = unatomic_writes(p.read_text(encoding="utf-8"))
        if len(hits) > _ALLOWED_WRITES.get(rel, 0):
            found[rel] = hits
    assert found == {}


# =============================================================================================
# 4. Concurrency: a second run on the same output directory waits for the first
# =============================================================================================

_SECOND_RUN = """
import sys, time
from pathlib import Path
from promu_lib.pipeline import run_lock
d = Path(sys.argv[1])
with run_lock(d):
    (d / "second.txt").write_text(repr(time.time()))
"""


def test_a_second_run_waits_for_the_lock(tmp_path):
    from promu_lib.pipeline import run_lock

    out = tmp_path / "runs" / "tiny"
    with run_lock(out):
        assert (out / ".run.lock").read_text() == str(os.getpid())
        proc = subprocess.Popen(
            [sys.executable, "-c", _SECOND_RUN, str(out)], stdout=subprocess.PIPE, text=True
        )
        line = proc.stdout.readline()  # printed once the second run found the lock taken
        assert "another run holds" in line and str(out / ".run.lock") in line
        time.sleep(0.5)
        assert proc.poll() is None and not (out / "second.txt").exists()  # still waiting
        released = time.time()
    assert proc.wait(timeout=60) == 0
    assert float((out / "second.txt").read_text()) >= released
    assert (out / ".run.lock").read_text() == str(proc.pid)  # the lock names its holder


def test_runs_on_other_output_dirs_do_not_wait(tmp_path):
    from promu_lib.pipeline import run_lock

    with run_lock(tmp_path / "a"):
        proc = subprocess.run(
            [sys.executable, "-c", _SECOND_RUN, str(tmp_path / "b")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0 and "another run" not in proc.stdout
    assert (tmp_path / "b" / "second.txt").is_file()


_AT_THE_SIGNAL = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from promu_lib.cli import main
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.write_text("ready")
while not go.exists():
    time.sleep(0.005)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_two_finetunes_of_the_same_job_at_once_train_once(tmp_path):
    """Before: concurrent runs deleted each other's checkpoint saves, both trained every epoch
    and left ckpt/ beside DONE.json. Now the second waits for the first and reads its result."""
    from promu_lib.data.toyworld import build_toy_world

    cfg = load_config(
        "tiny",
        overrides={
            **FINETUNE_WORLD,
            "finetune.epochs": 2,
            "data.root": str(tmp_path / "data"),
            "run.output_dir": str(tmp_path / "runs"),
        },
    )
    build_toy_world(cfg, progress=False)
    cfg_file = save_config(cfg, tmp_path / "cfg.yaml")
    out, go = tmp_path / "jobs" / "run", tmp_path / "go"
    out.parent.mkdir()
    argv = ["finetune", "--dataset", "twitter2015", "--model", "bert", "--config", str(cfg_file),
            "--seed", "0", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _AT_THE_SIGNAL, str(tmp_path / f"ready{i}"), str(go), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for i in range(2)
    ]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.write_text("go")  # both start `promu finetune` now
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    waited = ["another fine-tuning holds" in stdout for stdout, _ in outputs]
    assert sorted(waited) == [False, True], outputs  # one trained, one waited
    summaries = [stdout.strip().splitlines()[-1] for stdout, _ in outputs]
    assert summaries[0] == summaries[1] and "twitter2015 bert seed=0" in summaries[0]
    assert sorted(os.listdir(out)) == ["DONE.json", "metrics.json", "model.safetensors",
                                       "predictions.jsonl"]  # fmt: skip
    assert os.listdir(out.parent) == ["run"]  # the lock file went too
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2


def test_a_checkpoint_save_removes_only_dead_processes_temp_dirs(tmp_path):
    """Before: any run's save removed every ``.ckpt.*.tmp``, another live run's save too."""
    model, opt = _saved_checkpoint(tmp_path / "ckpt")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead_tmp = tmp_path / f".ckpt.{gone.stdout.strip()}.abc.tmp"
        live_tmp = tmp_path / f".ckpt.{live.pid}.def.tmp"
        legacy_tmp = tmp_path / ".ckpt.x7_k2q.tmp"  # named before the pid was in the name
        for d in (dead_tmp, live_tmp, legacy_tmp):
            (d / "part").mkdir(parents=True)
        save_checkpoint(tmp_path / "ckpt", model, opt, step=6)
        assert live_tmp.is_dir() and not dead_tmp.exists() and not legacy_tmp.exists()
    finally:
        live.kill()
        live.wait()
    assert load_checkpoint(tmp_path / "ckpt", model, opt)["step"] == 6


_HOLD_DIR = """
import sys, time
from pathlib import Path
from promu_lib.locks import dir_lock
with dir_lock(Path(sys.argv[1]), "fine-tuning"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_run_directory_lock_waits_says_who_and_leaves_no_file(tmp_path):
    from promu_lib.locks import dir_lock, lock_file_of

    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", _HOLD_DIR, str(run), "1.0"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert first.stdout.readline().strip() == "held"
    second = subprocess.run([sys.executable, "-c", _HOLD_DIR, str(run), "0"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    first.wait(timeout=60)
    line = second.stdout.splitlines()[0]
    assert line.startswith("[promu] another fine-tuning holds ") and f"(pid {first.pid})" in line
    assert str(lock_file_of(run)) in line and second.stdout.splitlines()[1] == "held"
    assert os.listdir(tmp_path) == []  # removed on release; the directory was never made
    with dir_lock(run, "x"), dir_lock(tmp_path / "other", "x"):  # other directories: no wait
        assert sorted(os.listdir(tmp_path)) == [".other.lock", ".run.lock"]


def test_errors_survive_the_trip_back_from_a_worker_process():
    """A job's error is pickled by the worker pool: each keeps its message and fields."""
    import pickle

    from promu_lib.errors import DataError, MissingAssetError

    for err in (
        DataError("/d/train.txt", "bad tag 'X'", "a BIO tag", line=3),
        MissingAssetError("text encoder weights 'bert'", ["/w", "cache"], "Set text.pretrained."),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)
