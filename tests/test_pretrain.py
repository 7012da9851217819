"""PROMU pre-training: the dataset, loss switches, resume after a kill, and 2-process DDP."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from worlds import world

from promu_lib.config import load_config, save_config
from promu_lib.data.captions import CaptionDataset, collate_captions
from promu_lib.data.tokenizer import build_tokenizer
from promu_lib.data.toyworld import build_toy_world
from promu_lib.mining import load_pseudo_labels, mine_labels
from promu_lib.train.pretrain import ENCODER_FILE, pretrain

WORLD = {
    **world(twitter2015=(20, 5, 5), captions=48),
    "mining.teacher_steps": 3,
    "mining.top_m_nouns": 8,
    "pretrain.steps": 4,
    "pretrain.batch_size": 8,
    "pretrain.checkpoint_every": 1,
    "pretrain.log_every": 1,
    "run.progress": False,
}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    cfg = load_config(
        "tiny",
        overrides={**WORLD, "data.root": str(root / "data"), "run.output_dir": str(root / "runs")},
    )
    build_toy_world(cfg, progress=False)
    mine_labels(cfg, progress=False)
    return cfg


def test_caption_batches_carry_labels_and_hard_labels_are_one_hot(cfg):
    labels = load_pseudo_labels(mine_labels(cfg, progress=False))
    tok = build_tokenizer(cfg)
    soft = CaptionDataset(cfg, tok, labels, soft=True, progress=False)
    hard = CaptionDataset(cfg, tok, labels, soft=False, progress=False)
    batch = collate_captions([soft[i] for i in range(4)], soft.pad_id)
    assert batch["image"].shape == (4, 3, cfg.data.image_size, cfg.data.image_size)
    assert batch["q_ent"].shape[-1] == len(labels.nouns)
    assert batch["q_rel"].shape[-1] == len(labels.relation_labels)
    torch.testing.assert_close(batch["q_rel"].sum(-1), torch.ones(4))
    q = hard[0]["q_ent"]
    assert set(q.unique().tolist()) <= {0.0, 1.0} and torch.equal(q.sum(-1), torch.ones(len(q)))
    assert hard[0]["q_ent"].argmax(-1).tolist() == soft[0]["q_ent"].argmax(-1).tolist()


def test_caption_batches_name_their_image_and_caption(cfg):
    """A falsified pair reuses another pair's image: both carry the same image id."""
    labels = load_pseudo_labels(mine_labels(cfg, progress=False))
    data = CaptionDataset(cfg, build_tokenizer(cfg), labels, progress=False)
    batch = collate_captions([data[i] for i in range(len(data))], data.pad_id)
    names = [p.image for p in data.pairs]
    for i in range(len(data)):
        for j in range(len(data)):
            same = names[i] == names[j]
            assert bool(batch["image_id"][i] == batch["image_id"][j]) == same
            same_text = data.pairs[i].caption == data.pairs[j].caption
            assert bool(batch["caption_id"][i] == batch["caption_id"][j]) == same_text
    assert len(set(names)) < len(names)  # the toy world has such shared images


def test_pretraining_images_use_the_fine_tuning_transform(cfg):
    """data.image_transform=resize-crop: pixels as fine-tuning makes them, boxes moved with
    them (old code: a plain resize, boxes unchanged)."""
    from PIL import Image

    from promu_lib.data.datasets import to_pixels, transform_boxes
    from promu_lib.data.layout import DataLayout

    crop = cfg.replace(**{"data.image_transform": "resize-crop"})
    labels = load_pseudo_labels(mine_labels(cfg, progress=False))
    data = CaptionDataset(crop, build_tokenizer(cfg), labels, progress=False)
    pair = data.pairs[0]
    image = Image.open(DataLayout.of(cfg).caption_image_dir() / pair.image).convert("RGB")
    pixels = data.pixels[int(data.image_of[0])]
    assert torch.equal(pixels, to_pixels(image, cfg.data.image_size, "resize-crop"))
    row = labels.row(pair.image)
    boxes, keeps = transform_boxes(
        labels.boxes[row], *image.size, cfg.data.image_size, "resize-crop"
    )
    assert torch.equal(data[0]["boxes"], boxes)
    assert torch.equal(data[0]["ent_mask"], labels.ent_mask[row] & keeps)


def test_transform_boxes_follows_the_pixels():
    """A white rectangle in a 60 x 40 image lands where its remapped box says (1 px)."""
    from PIL import Image, ImageDraw

    from promu_lib.data.datasets import to_pixels, transform_boxes

    image = Image.new("RGB", (60, 40))
    ImageDraw.Draw(image).rectangle([24, 8, 47, 31], fill=(255, 255, 255))  # x 24..47, y 8..31
    box = torch.tensor([[24 / 60, 8 / 40, 48 / 60, 32 / 40], [0.0, 0.0, 0.1, 0.1]])
    for transform in ("resize", "resize-crop"):
        pixels = to_pixels(image, 32, transform)[0]
        ys, xs = (pixels > 127).nonzero(as_tuple=True)
        seen = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        moved, keeps = transform_boxes(box, 60, 40, 32, transform)
        torch.testing.assert_close(moved[0] * 32, seen, atol=1.0, rtol=0)
        assert keeps[0]
        assert keeps[1] == (transform == "resize")  # the crop cuts the left 10 % away


def test_precomputed_boxes_come_best_first(tmp_path):
    from promu_lib.data.formats import write_boxes
    from promu_lib.data.records import Box
    from promu_lib.detect import PrecomputedBoxes

    boxes = [Box(0, 0, 5, 5, score=0.2, cls="a"), Box(1, 1, 6, 6, score=0.9, cls="b")]
    boxes.append(Box(2, 2, 7, 7, score=0.2, cls="c"))
    path = tmp_path / "boxes.json"
    write_boxes(path, {"img": boxes})
    (found,) = PrecomputedBoxes(path).detect([None], ["img"])
    assert [b.cls for b in found] == ["b", "a", "c"]  # by score, file order on ties


def test_switched_off_losses_are_not_computed(cfg, tmp_path):
    """Also: ITM hard negatives run in the loop, and the temperature ends inside tight
    bounds (clamped after each step; the old forward-only clamp left the parameter outside)."""
    bounds = {"fusion.temperature_min": 0.0699, "fusion.temperature_max": 0.0701}
    losses = {"pretrain.lambda_coe": 0.0, "pretrain.lambda_cir": 0.0}
    off = cfg.replace(**losses, **bounds, **{"pretrain.itm_hard_negatives": True})
    out = pretrain(off, seed=0, out_dir=tmp_path / "align")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {"itm", "cit"} <= set(rows[0]) and "coe" not in rows[0]
    keys = load_file(str(out / ENCODER_FILE))
    assert keys and all(k.startswith("encoder.") for k in keys)
    assert json.loads((out / "DONE.json").read_text())["itm_hard_negatives"] is True
    temp = float(keys["encoder.temp"])
    assert 0.0699 - 1e-7 <= temp <= 0.0701 + 1e-7


def _run(code: str, cfg_file: Path, out: Path) -> subprocess.Popen:
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from promu_lib.config import load_config\n"
        "from promu_lib.train.pretrain import pretrain\n"
        f"cfg = load_config('tiny', file={str(cfg_file)!r})\n" + code
    )
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-c", script], env=env, cwd=str(out.parent))


# kill -9 at a chosen point of step 3 (checkpoints after every step): the process kills itself
_KILL_AT = {
    # inside step 3's loss, after the checkpoint of step 2
    "mid-step": """
import promu_lib.losses as losses
real, calls = losses.total_loss, []
def total_loss(*a, **k):
    calls.append(1)
    if len(calls) == 3:
        kill()
    return real(*a, **k)
losses.total_loss = total_loss
""",
    # step 3's save: its weights and optimizer are in the temporary directory, trainer.json not
    "during-save": """
import promu_lib.train.common as common
real, calls = common.atomic_write_json, []
def atomic_write_json(path, *a, **k):
    if path.name == common.TRAINER_FILE:
        calls.append(1)
        if len(calls) == 3:
            kill()
    return real(path, *a, **k)
common.atomic_write_json = atomic_write_json
""",
    # step 3's save, between its two renames: ckpt moved to .ckpt.old, the new one not in place
    "between-renames": """
import promu_lib.train.common as common
real, calls = common.os.replace, []
def replace(src, dst):
    real(src, dst)
    if str(dst).endswith(".ckpt.old"):
        calls.append(1)
        if len(calls) == 2:
            kill()
common.os.replace = replace
""",
}


@pytest.fixture(scope="module")
def straight(cfg, tmp_path_factory):
    """An uninterrupted 8-step run, in this process with one thread (as the killed ones)."""
    torch.set_num_threads(1)
    longer = cfg.replace(**{"pretrain.steps": 8})
    return longer, pretrain(longer, seed=0, out_dir=tmp_path_factory.mktemp("p") / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("where", list(_KILL_AT))
def test_killed_run_resumes_to_the_same_weights(straight, tmp_path, where):
    """kill -9 mid-step, during a checkpoint save and between its renames, rerun: the same
    final weights, losses and files as an uninterrupted run (bitwise, CPU, one thread)."""
    longer, reference = straight
    cfg_file = save_config(longer, tmp_path / "cfg.yaml")
    out = tmp_path / "killed"
    code = (
        "import os, signal\n"
        "def kill():\n    os.kill(os.getpid(), signal.SIGKILL)\n"
        + _KILL_AT[where]
        + f"pretrain(cfg, seed=0, out_dir={str(out)!r})"
    )
    assert _run(code, cfg_file, out).wait(timeout=300) == -signal.SIGKILL
    assert not (out / "DONE.json").exists()
    left = sorted(p.name for p in out.iterdir())
    if where == "during-save":  # a half save in a temporary directory, the old ckpt intact
        assert any(n.startswith(".ckpt.") and n.endswith(".tmp") for n in left), left
    if where == "between-renames":
        assert "ckpt" not in left and ".ckpt.old" in left, left
    torch.set_num_threads(1)
    pretrain(longer, seed=0, out_dir=out)
    a, b = load_file(str(reference / ENCODER_FILE)), load_file(str(out / ENCODER_FILE))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["total"] for r in losses] == [r["total"] for r in again] and len(again) == 8
    assert sorted(os.listdir(out)) == sorted(os.listdir(reference))  # no temp dir, no .ckpt.old


@pytest.mark.slow
def test_two_process_ddp_matches_gradient_accumulation(cfg, tmp_path):
    """2 ranks x batch 4 == 1 process x 2 micro-batches of 4 (same data, same update) for the
    losses that are means over pairs. CIT is off here: under DDP it contrasts the 8 pairs of
    both ranks, which accumulation cannot do (tests/test_pretrainer_forward.py checks it)."""
    base = cfg.replace(
        **{"pretrain.batch_size": 4, "pretrain.steps": 3, "pretrain.lambda_cit": 0.0}
    )
    single = pretrain(base.replace(**{"pretrain.grad_accum": 2}), seed=0, out_dir=tmp_path / "one")
    cfg_file = save_config(base, tmp_path / "cfg.yaml")
    out = tmp_path / "ddp"
    script = (
        "import torch; torch.set_num_threads(1)\n"
        "from promu_lib.config import load_config\n"
        "from promu_lib.train.pretrain import pretrain\n"
        f"pretrain(load_config('tiny', file={str(cfg_file)!r}), seed=0, out_dir={str(out)!r})\n"
    )
    (tmp_path / "ddp_run.py").write_text(script)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(tmp_path / "ddp_run.py"),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    rows_1 = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    rows_2 = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_1] == [r["step"] for r in rows_2] == [1, 2, 3]
    for r1, r2 in zip(rows_1, rows_2):
        assert "cit" not in r1 and "cit" not in r2
        for k in ("itm", "coe", "cir", "total"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-4, abs=1e-5), (r1["step"], k)
    a, b = load_file(str(single / ENCODER_FILE)), load_file(str(out / ENCODER_FILE))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
