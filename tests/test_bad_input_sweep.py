"""Every ``promu`` command on bad inputs (issue 17): one line ``promu: error: <file>[:<line>]:
<problem>; expected <what>``, exit status 1 (2 for a bad command line), no traceback, and
nothing written.

Each case below writes its bad input as a small fixture (a copy of a micro toy world, a config
file, a JSONL input, a damaged checkpoint) into its own directory, runs the command in-process
(``promu_lib.cli.main``) and checks the exit status, that stderr is exactly one error line
holding the case's stable substrings, and that no file or directory changed. A few cases run
again as real subprocesses, where a traceback would show.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from worlds import toy_cfg, world

from promu_lib import predict as pr
from promu_lib.cli import main
from promu_lib.config import CHOICES, save_config
from promu_lib.data.toyworld import build_toy_world
from promu_lib.train.finetune import finetune

torch.set_num_threads(1)

BIG = "9" * 5000  # an integer JSON reads only as a ValueError (not a JSONDecodeError)
MICRO = world(twitter2015=(8, 3, 4), mnre=(10, 3, 4), captions=8)
T15 = ["finetune", "--dataset", "twitter2015", "--seed", "0"]


@dataclass
class World:
    root: Path  # data/ (the toy world), ckpt/ (an exported twitter2015 HVPNeT), run/
    cfg: object

    @property
    def data(self) -> Path:
        return self.root / "data"


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("sweep")
    cfg = toy_cfg(root, MICRO, **{"finetune.epochs": 1})
    build_toy_world(cfg, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one epoch: the collapse guard may warn
        finetune(cfg, "twitter2015", "hvpnet", out_dir=root / "run")
    pr.export_checkpoint(root / "run", root / "ckpt")
    return World(root, cfg)


@dataclass
class Env:
    """One case's directory and helpers to write its fixtures there."""

    tmp: Path
    w: World

    def data(self) -> Path:
        """A private copy of the toy world's data directory (to damage)."""
        return shutil.copytree(self.w.data, self.tmp / "data")

    def config(self, data: Path | None = None, **values) -> Path:
        """A config file rooted in ``data`` (default: the shared world), runs under tmp."""
        cfg = self.w.cfg.replace(
            **{"data.root": str(data or self.w.data), "run.output_dir": str(self.tmp / "runs")}
        )
        path = save_config(cfg, self.tmp / "base.yaml")
        if values:
            text = yaml.safe_load(path.read_text())
            for key, value in values.items():
                section, name = key.split(".", 1)
                text[section][name] = value
            path.write_text(yaml.safe_dump(text))
        return path

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def ckpt(self) -> Path:
        return shutil.copytree(self.w.root / "ckpt", self.tmp / "ckpt")

    def image(self, split: str = "test") -> Path:
        return next(iter(sorted((self.w.data / "twitter2015_images").glob(f"*{split}*.jpg"))))


Case = Callable[[Env], tuple[list[str], int, list[str]]]  # argv, exit status, substrings
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def _manifest(ckpt: Path, **changes) -> None:
    manifest = json.loads((ckpt / pr.MANIFEST).read_text())
    manifest.update(changes)
    (ckpt / pr.MANIFEST).write_text(json.dumps(manifest))


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _predict(e: Env, *args: str, ckpt: Path | None = None) -> list[str]:
    return ["predict", "--checkpoint", str(ckpt or e.w.root / "ckpt"), *args]


def _post(e: Env, **changes) -> str:
    return json.dumps({"id": "p", "text": "Ada visits Paris", "image": str(e.image()), **changes})


# -- --config files and --set values (every command reads them the same way) -------------------


@case
def config_not_utf8(e):
    path = e.write("cfg.yaml", b"finetune:\n  lr: 0.1  # caf\xe9\n")
    return [*T15, "--model", "bert", "--config", str(path)], 1, [f"{path}:2:", "not UTF-8",
                                                                 "expected a UTF-8"]  # fmt: skip


@case
def config_billion_laughs(e):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    path = e.write("cfg.yaml", "\n".join(lines) + "\nfinetune:\n  lr: *i\n")
    return ["pretrain", "--config", str(path)], 1, [f"{path}:2:", "aliases are not accepted"]


@case
def config_yaml_syntax(e):
    path = e.write("cfg.yaml", "finetune:\n  lr: [0.1\n")
    return ["data", "check", "--config", str(path)], 1, [f"{path}:3:", "not valid YAML"]


@case
def config_json_huge_integer(e):
    path = e.write("cfg.json", f'{{"finetune": {{"epochs": {BIG}}}}}')
    return (
        [*T15, "--model", "bert", "--config", str(path)],
        1,
        [str(path), "Exceeds the limit (4300 digits)"],
    )


@case
def config_json_deep_nesting(e):
    path = e.write("cfg.json", '{"finetune": ' + "[" * 50_000 + "]" * 50_000 + "}")
    return ["pretrain", "--config", str(path)], 1, [str(path), "RecursionError"]


@case
def config_top_level_list(e):
    path = e.write("cfg.yaml", "- finetune\n- lr\n")
    return ["pretrain", "--config", str(path)], 1, [str(path), "a list at the top level"]


@case
def config_unknown_key(e):
    path = e.write("cfg.yaml", "finetune:\n  lrr: 0.1\n")
    return ["pretrain", "--config", str(path)], 1, [str(path), "unknown config key(s) lrr"]


@case
def config_batch_size_zero(e):
    path = e.config(**{"finetune.batch_size": 0})
    return [*T15, "--model", "bert", "--config", str(path)], 1, [
        str(path), "finetune.batch_size: expected an integer >= 1, got 0"]  # fmt: skip


@case
def config_giant_value(e):
    path = e.write("cfg.yaml", "finetune:\n  lr: '" + "x" * 2_000_000 + "'\n")
    return ["pretrain", "--config", str(path)], 1, [str(path), "finetune.lr: expected a number"]


@case
def config_missing_file(e):
    path = e.tmp / "nope.yaml"
    return ["pretrain", "--config", str(path)], 1, [f"config file {path} does not exist"]


@case
def set_train_fraction_zero(e):
    return [*T15, "--model", "bert", "--set", "finetune.train_fraction=0"], 1, [
        "finetune.train_fraction: expected a number in (0, 1], got 0"]  # fmt: skip


@case
def set_epochs_zero(e):
    return [*T15, "--model", "bert", "--set", "finetune.epochs=0"], 1, [
        "finetune.epochs: expected an integer >= 1, got 0"]  # fmt: skip


@case
def set_device_tpu(e):
    return ["pretrain", "--set", "run.device=tpu"], 1, [
        "run.device: expected auto, cpu, cuda, cuda:<N> or mps, got 'tpu'"]  # fmt: skip


@case
def set_on_missing_image_ignore(e):
    return ["pretrain", "--set", "data.on_missing_image=ignore"], 1, [
        "data.on_missing_image: expected one of error, blank, got 'ignore'"]  # fmt: skip


@case
def set_unknown_variant(e):
    return ["pretrain", "--set", "hvpnet.variant=huge"], 1, ["hvpnet.variant: expected one of"]


@case
def set_value_not_yaml(e):
    return ["pretrain", "--set", "finetune.lr=[1"], 1, ["finetune.lr='[1': not valid YAML"]


@case
def set_without_equals(e):
    return ["pretrain", "--set", "finetune.lr"], 1, ["expected KEY=VALUE"]


@case
def set_executor_unknown(e):
    return ["pretrain", "--set", "run.executor=kubernetes"], 1, [
        "run.executor: expected one of local, slurm, got 'kubernetes'"]  # fmt: skip


@case
def set_slurm_finetune_on_two_nodes(e):
    return ["pretrain", "--set", "slurm.finetune.nodes=2"], 1, [
        "slurm.finetune.nodes: expected an integer in [1, 1], got 2"]  # fmt: skip


@case
def set_slurm_negative_gpus(e):
    return ["pretrain", "--set", "slurm.pretrain.gpus_per_node=-1"], 1, [
        "slurm.pretrain.gpus_per_node: expected an integer >= 0, got -1"]  # fmt: skip


@case
def config_slurm_sbatch_sets_the_time(e):
    path = e.write("cfg.yaml", "slurm:\n  pretrain:\n    sbatch:\n      time: 5\n")
    return ["pretrain", "--config", str(path)], 1, [
        str(path), "slurm.pretrain.sbatch.time: set by the slurm section itself"]  # fmt: skip


@case
def config_slurm_sbatch_not_a_mapping(e):
    path = e.write("cfg.yaml", "slurm:\n  finetune:\n    sbatch: [constraint]\n")
    return ["pretrain", "--config", str(path)], 1, [
        str(path), "slurm.finetune.sbatch: expected a mapping"]  # fmt: skip


@case
def jobs_dry_run_without_slurm(e):
    return ["jobs", "--dry-run", "--config", str(e.config())], 2, [
        "--dry-run prints the sbatch scripts of run.executor=slurm"]  # fmt: skip


# -- promu data check ---------------------------------------------------------------------------


def _check(e: Env, data: Path, *extra: str) -> list[str]:
    return ["data", "check", "--config", str(e.config(data)), *extra]


def _first_image(data: Path, dataset: str = "twitter2015") -> Path:
    return sorted((data / f"{dataset}_images").glob("*train*.jpg"))[0]


@case
def check_verify_unidentifiable_image_with_boxes(e):
    data = e.data()
    image = _first_image(data)
    image.write_text("<html>404</html>")
    return _check(e, data, "--dataset", "twitter2015", "--verify-images"), 1, [
        "twitter2015 train: 1 of", f"{image.name}: not an image PIL can identify"]  # fmt: skip


@case
def check_verify_decompression_bomb_with_boxes(e):
    data = e.data()
    image = _first_image(data)
    image.write_bytes(_png_header(50_000, 50_000))
    return _check(e, data, "--dataset", "twitter2015", "--verify-images"), 1, [
        f"{image.name}: image is too large (possible decompression bomb)"]  # fmt: skip


@case
def check_box_outside_its_image(e):
    data = e.data()
    boxes = json.loads((data / "boxes" / "twitter2015.json").read_text())
    first = sorted(boxes)[0]
    boxes[first] = [[500, 500, 600, 600, 0.9, "person"]]
    (data / "boxes" / "twitter2015.json").write_text(json.dumps(boxes))
    return _check(e, data, "--dataset", "twitter2015"), 1, [
        str(data / "boxes" / "twitter2015.json"), f"image {first!r} box 0",
        "has no area inside the 64x64 image"]  # fmt: skip


@case
def check_mnre_huge_integer(e):
    data = e.data()
    path = data / "mnre" / "ours_train.txt"
    lines = path.read_text().splitlines()
    row = json.dumps(
        {
            "token": ["a", "b"],
            "h": {"name": "a", "pos": [0, 1]},
            "t": {"name": "b", "pos": [1, 2]},
            "img_id": "x.jpg",
            "relation": "None",
        }
    )
    lines[1] = row.replace('"None"}', f'"None", "extra": {BIG}}}')  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return _check(e, data, "--dataset", "mnre"), 1, [f"{path}:2:", "expected one record per line"]


@case
def check_mnre_lone_surrogate(e):
    data = e.data()
    path = data / "mnre" / "ours_train.txt"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("'token': ['", "'token': ['\\udce9", 1)  # a Python escape
    path.write_text("\n".join(lines) + "\n")
    return _check(e, data, "--dataset", "mnre"), 1, [f"{path}:2:", "'token': a non-empty list"]


@case
def check_boxes_huge_integer(e):
    data = e.data()
    path = data / "boxes" / "mnre.json"
    path.write_text('{"a.jpg": [[0, 0, 5, ' + BIG + ", 0.5, 1]]}")
    return _check(e, data, "--dataset", "mnre"), 1, [f"{path}:1:", "not readable as JSON"]


@case
def check_captions_huge_integer(e):
    data = e.data()
    path = data / "pretrain" / "captions.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-1] + f', "n": {BIG}}}'
    path.write_text("\n".join(lines) + "\n")
    return _check(e, data, "--dataset", "mnre"), 1, [f"{path}:2:", "not readable as JSON"]


@case
def check_rel2id_huge_integer(e):
    data = e.data()
    path = data / "mnre" / "ours_rel2id.json"
    path.write_text('{"None": 0,\n "x": ' + BIG + "}")
    return _check(e, data, "--dataset", "mnre"), 1, [f"{path}:2:", "not readable as JSON"]


@case
def check_twitter_not_utf8(e):
    data = e.data()
    path = data / "twitter2015" / "train.txt"
    path.write_bytes(path.read_bytes().replace(b"\tO\n", b"\xe9\tO\n", 1))
    return _check(e, data, "--dataset", "twitter2015"), 1, [f"{path}:2:", "are not UTF-8"]


@case
def check_boxes_not_json(e):
    data = e.data()
    path = data / "boxes" / "twitter2015.json"
    path.write_text('{"a": [[0, 0, 1, 1, 0.5, "x"]],\n')
    return _check(e, data, "--dataset", "twitter2015"), 1, [f"{path}:", "not valid JSON"]


# -- promu data convert-crops -------------------------------------------------------------------


def _crops(e: Env, mapping: dict) -> tuple[Path, Path]:
    crops = e.tmp / "aux" / "crops"
    crops.mkdir(parents=True)
    (crops / "1_crop_0.png").write_bytes(b"png")
    pth = e.tmp / "train_dict.pth"
    torch.save(mapping, pth)
    return pth, crops


def _convert(pth: Path, crops: Path, out: Path, *extra: str) -> list[str]:
    args = ["--pth", str(pth), "--crops-dir", str(crops), "--out", str(out), *extra]
    return ["data", "convert-crops", *args]


@case
def crops_missing_files(e):
    pth, crops = _crops(e, {"1.jpg": ["1_crop_0.png", "1_crop_1.png"]})
    return _convert(pth, crops, e.tmp / "crops.json"), 1, [
        str(pth), "1 crop file(s) it names are not in", "nothing written"]  # fmt: skip


@case
def crops_pickled_object(e):
    pth, crops = _crops(e, {})
    torch.save({"1.jpg": [Path("x")]}, pth)  # a PosixPath: refused by weights_only=True
    return _convert(pth, crops, e.tmp / "crops.json"), 1, [str(pth), "weights_only=True"]


@case
def crops_name_escaping(e):
    pth, crops = _crops(e, {"1.jpg": ["../../etc/passwd"]})
    return _convert(pth, crops, e.tmp / "crops.json"), 1, [str(pth), "a file name relative to"]


@case
def crops_re_without_split_file(e):
    pth, crops = _crops(e, {0: ["1_crop_0.png"]})
    return (
        _convert(pth, crops, e.tmp / "c.json", "--task", "re"),
        2,
        ["--task re needs --split-file"],
    )


@case
def crops_dict_not_a_dict(e):
    pth, crops = _crops(e, {})
    torch.save([["1_crop_0.png"]], pth)  # a list of lists: loads, but is not a dict
    return _convert(pth, crops, e.tmp / "crops.json"), 1, [str(pth), "holds a list"]


# -- promu data detect ----------------------------------------------------------------------------


@case
def detect_unreadable_image_names_its_line(e):
    data = e.data()
    image = _first_image(data)
    image.write_text("<html>404</html>")
    argv = ["data", "detect", "--config", str(e.config(data)), "--dataset", "twitter2015",
            "--yolo-weights", "yolov8n.yaml", "--out-dir", str(e.tmp / "boxes")]  # fmt: skip
    return argv, 1, [f"{data / 'twitter2015' / 'train.txt'}:1:", f"image {image}",
                     "not an image PIL can identify"]  # fmt: skip


@case
def detect_without_weights(e):
    argv = ["data", "detect", "--config", str(e.config()), "--out-dir", str(e.tmp / "boxes")]
    return argv, 1, ["YOLO weights", "--yolo-weights"]


# -- promu finetune / promu pretrain --------------------------------------------------------------


def _ft(e: Env, data: Path, model: str = "hvpnet", dataset: str = "twitter2015", **cfg) -> list:
    return ["finetune", "--dataset", dataset, "--model", model, "--seed", "0",
            "--config", str(e.config(data, **cfg)), "--out", str(e.tmp / "out")]  # fmt: skip


@case
def finetune_bad_image_names_its_line(e):
    data = e.data()
    image = _first_image(data)
    image.write_text("<html>404</html>")
    return _ft(e, data), 1, [f"{data / 'twitter2015' / 'train.txt'}:1:", f"image {image}",
                             "not an image PIL can identify"]  # fmt: skip


@case
def finetune_box_outside_its_image(e):
    data = e.data()
    path = data / "boxes" / "twitter2015.json"
    boxes = json.loads(path.read_text())
    first = sorted(b for b in boxes if "train" in b)[0]
    boxes[first] = [[500, 500, 600, 600, 0.9, "person"]]
    path.write_text(json.dumps(boxes))
    return _ft(e, data), 1, [str(path), f"image {first!r}", "has no area inside"]


def _crops_index(data: Path, crop: str) -> tuple[Path, str]:
    """Crops indexes of twitter2015 (dev and test empty); the first train post's image gets
    ``crop``. Returns the train index and that image's id."""
    first = (data / "twitter2015" / "train.txt").read_text().splitlines()[0]
    img_id = first.split("IMGID:")[1].strip()
    for split in ("dev", "test"):
        (data / f"twitter2015_{split}_crops.json").write_text("{}")
    index = data / "twitter2015_train_crops.json"
    index.write_text(json.dumps({img_id: [crop]}))
    return index, img_id


@case
def finetune_crops_index_names_a_missing_file(e):
    data = e.data()
    index, img_id = _crops_index(data, "aux/crops/gone.png")
    return _ft(e, data, **{"data.objects": "crops"}), 1, [
        str(index), f"image {img_id!r} (line 1 of", "aux/crops/gone.png not found"]  # fmt: skip


@case
def finetune_crop_not_an_image(e):
    data = e.data()
    index, img_id = _crops_index(data, "aux/crops/0_pred_yolo_crop_0.png")
    (data / "aux" / "crops").mkdir(parents=True)
    (data / "aux" / "crops" / "0_pred_yolo_crop_0.png").write_text("<html>404</html>")
    return _ft(e, data, **{"data.objects": "crops"}), 1, [
        str(index), f"image {img_id!r}: crop", "not an image PIL can identify"]  # fmt: skip


@case
def pretrain_with_crops(e):
    path = e.config(**{"data.objects": "crops"})
    return ["pretrain", "--config", str(path), "--out", str(e.tmp / "out")], 1, [
        "data.objects=crops: PROMU's COE", "pretrain.lambda_coe=0"]  # fmt: skip


@case
def finetune_mnre_huge_integer(e):
    data = e.data()
    path = data / "mnre" / "ours_train.txt"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-1] + f", 'n': {BIG}}}"
    path.write_text("\n".join(lines) + "\n")
    return _ft(e, data, "bert", "mnre"), 1, [f"{path}:3:", "not a dict literal or JSON object"]


@case
def finetune_init_missing(e):
    return [*_ft(e, e.w.data, "bert"), "--init", str(e.tmp / "none.safetensors")], 1, [
        f"the --init checkpoint {e.tmp / 'none.safetensors'} is missing"]  # fmt: skip


@case
def finetune_out_with_two_seeds(e):
    return [*_ft(e, e.w.data, "bert"), "--seed", "1"], 2, ["--out takes a single --seed"]


@case
def pretrain_steps_zero(e):
    path = e.config(**{"pretrain.steps": 0})
    return ["pretrain", "--config", str(path), "--out", str(e.tmp / "out")], 1, [
        str(path), "pretrain.steps: expected an integer >= 1, got 0"]  # fmt: skip


@case
def pretrain_captions_huge_integer(e):
    data = e.data()
    path = data / "pretrain" / "captions.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = lines[0][:-1] + f', "n": {BIG}}}'
    path.write_text("\n".join(lines) + "\n")
    argv = ["pretrain", "--config", str(e.config(data)), "--out", str(e.tmp / "out")]
    return argv, 1, [f"{path}:1:", "not readable as JSON"]


# -- promu export ----------------------------------------------------------------------------------


@case
def export_unfinished_run(e):
    run = e.write("run/metrics.json", "{}").parent
    return ["export", "--run", str(run), "--out", str(e.tmp / "ck")], 1, ["no DONE.json"]


@case
def export_malformed_metrics(e):
    run = shutil.copytree(e.w.root / "run", e.tmp / "run")
    (run / "metrics.json").write_text('{"task": "ner"')
    return ["export", "--run", str(run), "--out", str(e.tmp / "ck")], 1, [
        f"{run / 'metrics.json'}: unreadable", "expected the metrics.json"]  # fmt: skip


@case
def export_target_exists(e):
    target = e.ckpt()
    return ["export", "--run", str(e.w.root / "run"), "--out", str(target)], 1, ["already exists"]


# -- promu predict: inputs ---------------------------------------------------------------------


def _batch(e: Env, *lines: str | bytes, out: str = "out.jsonl") -> list[str]:
    content = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    src = e.write("in.jsonl", content)
    return _predict(e, "--input", str(src), "--output", str(e.tmp / out))


@case
def predict_line_is_a_list(e):
    return _batch(e, _post(e), "[1, 2]"), 1, [f"{e.tmp / 'in.jsonl'}:2: a JSON list",
                                              "expected a JSON object"]  # fmt: skip


@case
def predict_line_is_a_string(e):
    return _batch(e, '"Ada visits Paris"'), 1, [f"{e.tmp / 'in.jsonl'}:1: a JSON str"]


@case
def predict_input_not_utf8(e):
    return _batch(e, _post(e), _post(e).replace("Ada", "caf\xe9").encode("latin-1")), 1, [
        f"{e.tmp / 'in.jsonl'}:2:", "are not UTF-8"]  # fmt: skip


@case
def predict_input_lone_surrogate(e):
    return _batch(e, _post(e, text="caf\udce9")), 1, [  # json.dumps writes it as an escape
        f"{e.tmp / 'in.jsonl'}:1: post 'p'", "expected a list of non-empty strings"]  # fmt: skip


@case
def predict_input_huge_integer(e):
    return _batch(e, _post(e)[:-1] + f', "n": {BIG}}}'), 1, [
        f"{e.tmp / 'in.jsonl'}:1:", "not readable as JSON"]  # fmt: skip


@case
def predict_input_bad_json(e):
    return _batch(e, _post(e), '{"text": "a",'), 1, [f"{e.tmp / 'in.jsonl'}:2:", "not valid JSON"]


@case
def predict_input_empty(e):
    return _batch(e, ""), 1, [f"{e.tmp / 'in.jsonl'}: no post in the input file"]


@case
def predict_input_missing(e):
    return _predict(e, "--input", str(e.tmp / "none.jsonl")), 1, [
        f"{e.tmp / 'none.jsonl'}: file not found"]  # fmt: skip


@case
def predict_input_box_score_99(e):
    return _batch(e, _post(e, boxes=[[1, 1, 9, 9, 99, "dog"]])), 1, [
        f"{e.tmp / 'in.jsonl'}:1: post 'p'", "box 0 has score 99"]  # fmt: skip


@case
def predict_input_image_missing(e):
    return _batch(e, _post(e, image="none.jpg")), 1, [f"{e.tmp / 'in.jsonl'}:1:", "image not found"]


def _one(e: Env, *args: str, ckpt: Path | None = None) -> list[str]:
    return _predict(e, "--text", "Ada visits Paris", "--image", str(e.image()), *args, ckpt=ckpt)


@case
def predict_boxes_bad_json(e):
    return _one(e, "--boxes", "[[1, 2"), 1, ["--boxes '[[1, 2': not valid JSON"]


@case
def predict_boxes_three_values(e):
    return _one(e, "--boxes", "[[1, 2, 3]]"), 1, ["box 0 is [1, 2, 3]", "expected [x1, y1, x2"]


@case
def predict_boxes_nan(e):
    return (
        _one(e, "--boxes", '[[1, 2, NaN, 9, 0.5, "dog"]]'),
        1,
        ["box 0 has non-numeric or non-finite"],
    )


@case
def predict_boxes_score_99(e):
    return _one(e, "--boxes", '[[1, 2, 8, 9, 99, "dog"]]'), 1, ["box 0 has score 99"]


@case
def predict_boxes_not_a_list(e):
    return _one(e, "--boxes", '{"a": 1}'), 1, ["'boxes' is {'a': 1}"]


@case
def predict_box_outside_the_image(e):
    return _one(e, "--boxes", '[[500, 500, 600, 600, 0.5, "dog"]]'), 1, [
        "has no area inside the 64x64 image"]  # fmt: skip


@case
def predict_top_k_negative(e):
    return _one(e, "--top-k", "-1"), 2, ["argument --top-k: expected an integer >= 1, got '-1'"]


@case
def predict_output_is_a_directory(e):
    (e.tmp / "outdir").mkdir()
    return _batch(e, _post(e), out="outdir"), 1, [f"{e.tmp / 'outdir'}: is a directory"]


@case
def predict_text_and_input(e):
    return [*_batch(e, _post(e)), "--text", "a b"], 2, ["give either --input FILE or --text"]


# -- promu predict: checkpoints -------------------------------------------------------------------


@case
def ckpt_manifest_malformed(e):
    ckpt = e.ckpt()
    (ckpt / pr.MANIFEST).write_text('{"format": "promu-checkpoint/2", ')
    return _one(e, ckpt=ckpt), 1, [f"{ckpt / pr.MANIFEST}: not valid JSON"]


@case
def ckpt_manifest_not_an_object(e):
    ckpt = e.ckpt()
    (ckpt / pr.MANIFEST).write_text("[1, 2]")
    return _one(e, ckpt=ckpt), 1, [f"{ckpt / pr.MANIFEST}: a JSON list"]


@case
def ckpt_empty_hash_map_and_a_flipped_weight_byte(e):
    ckpt = e.ckpt()
    weights = bytearray((ckpt / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(weights))
    _manifest(ckpt, sha256={})
    return _one(e, ckpt=ckpt), 1, [f"{ckpt / pr.MANIFEST}: 'sha256' is {{}}", "would check nothing"]


@case
def ckpt_no_hash_map(e):
    ckpt = e.ckpt()
    manifest = json.loads((ckpt / pr.MANIFEST).read_text())
    del manifest["sha256"]
    (ckpt / pr.MANIFEST).write_text(json.dumps(manifest))
    return _one(e, ckpt=ckpt), 1, [f"{ckpt / pr.MANIFEST}: no 'sha256'"]


@case
def ckpt_flipped_weight_byte(e):
    ckpt = e.ckpt()
    weights = bytearray((ckpt / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(weights))
    return _one(e, ckpt=ckpt), 1, [f"{ckpt / 'model.safetensors'}: altered since export"]


@case
def ckpt_swapped_tokenizer_vocab(e):
    ckpt = e.ckpt()
    path = ckpt / "tokenizer" / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab)[5:7]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(tok))
    return _one(e, ckpt=ckpt), 1, [f"{path}: altered since export"]


@case
def ckpt_unhashed_tokenizer_file(e):
    ckpt = e.ckpt()
    (ckpt / "tokenizer" / "special_tokens_map.json").write_text('{"unk_token": "ada"}')
    return _one(e, ckpt=ckpt), 1, ["special_tokens_map.json: not hashed in checkpoint.json"]


@case
def ckpt_hash_of_a_missing_file(e):
    ckpt = e.ckpt()
    (ckpt / "versions.json").unlink()
    return (
        _one(e, ckpt=ckpt),
        1,
        [f"{ckpt / 'versions.json'}: listed in checkpoint.json but missing"],
    )


@case
def ckpt_older_format(e):
    ckpt = e.ckpt()
    _manifest(ckpt, format="promu-checkpoint/1")
    return _one(e, ckpt=ckpt), 1, ["format 'promu-checkpoint/1'", "export the run again"]


@case
def ckpt_unknown_model(e):
    ckpt = e.ckpt()
    _manifest(ckpt, model="gpt")
    return _one(e, ckpt=ckpt), 1, [f"{ckpt / pr.MANIFEST}: unknown model 'gpt'"]


# -- the sweep -------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple]:
    """Every file under ``root`` (hidden ones too) with its size and mtime, and every non-empty
    directory. (An empty directory may appear: a lock's parent, e.g. ``runs/tiny/mining/``.)"""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
        if files:
            out[str(Path(dirpath).relative_to(root)) + "/"] = ()
    return out


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors exit here
        return int(e.code)


def test_the_sweep_covers_every_command():
    assert len(CASES) >= 40
    commands = {fn.__name__.split("_")[0] for fn in CASES.values()}
    assert commands >= {"config", "set", "check", "crops", "detect", "finetune", "pretrain",
                        "export", "predict", "ckpt"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_and_writes_nothing(name, w, tmp_path, capsys):
    argv, code, needles = CASES[name](Env(tmp_path, w))
    capsys.readouterr()
    before, shared = _tree(tmp_path), _tree(w.root)
    t0 = time.perf_counter()
    rc = _run(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("promu: error: "), err
    assert rc == code, err[0]
    for needle in needles:
        assert needle in err[0], err[0]
    assert len(err[0]) < 700 and seconds < 30, (len(err[0]), seconds)
    assert _tree(tmp_path) == before, "something was written"
    assert _tree(w.root) == shared


def test_config_choices_are_the_modules_choices():
    from promu_lib.data.datasets import IMAGE_TRANSFORMS, OBJECTS
    from promu_lib.data.formats import ON_BAD
    from promu_lib.data.images import ON_MISSING
    from promu_lib.mining import RELATION_SETS, TEACHERS
    from promu_lib.models.builders import FUSION_INITS
    from promu_lib.models.hvpnet import LAYOUTS, VARIANTS
    from promu_lib.models.pyramid import BACKBONES
    from promu_lib.train.common import SCHEDULES

    assert CHOICES["mining.relation_set"] == RELATION_SETS
    assert CHOICES["mining.teacher"] == TEACHERS
    assert CHOICES["fusion.init"] == FUSION_INITS
    assert CHOICES["finetune.schedule"] == SCHEDULES
    assert CHOICES["data.on_bad_record"] == ON_BAD
    assert CHOICES["data.on_missing_image"] == ON_MISSING
    assert CHOICES["data.image_transform"] == IMAGE_TRANSFORMS
    assert CHOICES["data.objects"] == OBJECTS
    assert CHOICES["hvpnet.variant"] == VARIANTS and CHOICES["hvpnet.layout"] == LAYOUTS
    assert CHOICES["hvpnet.backbone"] == BACKBONES


@pytest.mark.slow  # ~12 s a process on 2 busy cores (importing torch)
@pytest.mark.parametrize("name", ["config_billion_laughs", "predict_line_is_a_list"])
def test_a_real_process_prints_no_traceback(name, w, tmp_path):
    argv, code, needles = CASES[name](Env(tmp_path, w))
    proc = subprocess.run(
        [sys.executable, "-m", "promu_lib.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("promu: error: "), proc.stderr
