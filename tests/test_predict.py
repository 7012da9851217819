"""`promu export` / `promu predict`: a self-contained checkpoint that predicts what the run did."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import warnings

import pytest
import torch
from torchcrf import CRF
from worlds import toy_cfg, world

from promu_lib import predict as pr
from promu_lib.chat import bio_spans
from promu_lib.cli import main
from promu_lib.data.formats import read_boxes, read_mnre, read_twitter
from promu_lib.data.layout import DataLayout
from promu_lib.data.toyworld import build_toy_world
from promu_lib.errors import CheckpointError
from promu_lib.guards import CollapseWarning
from promu_lib.train.finetune import finetune

torch.set_num_threads(1)

MICRO = world(twitter2015=(8, 3, 4), mnre=(10, 3, 4))


@contextlib.contextmanager
def quiet():
    """One epoch on 8 posts: the collapse guard may warn, which is not under test here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)
        yield


def micro_cfg(tmp, **extra):
    return toy_cfg(tmp, MICRO, **{"finetune.epochs": 1, **extra})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    cfg = micro_cfg(tmp)
    build_toy_world(cfg, progress=False)
    layout = DataLayout.of(cfg)
    ckpts = {}
    with quiet():
        for dataset, model in (("twitter2015", "hvpnet"), ("mnre", "promu")):
            run = tmp / f"run_{dataset}"
            finetune(cfg, dataset, model, out_dir=run)
            ckpts[dataset] = pr.export_checkpoint(run, tmp / f"ckpt_{dataset}")
    return cfg, layout, ckpts, tmp


def _records(layout, dataset):
    posts = (read_mnre if dataset == "mnre" else read_twitter)(layout.split_file(dataset, "test"))
    boxes = read_boxes(layout.boxes(dataset))
    suffix = "" if dataset == "mnre" else ".jpg"
    return posts, pr.records_from_posts(posts, layout.image_dir(dataset, "test"), suffix, boxes)


def _run_predictions(tmp, dataset):
    run = tmp / (f"run_{dataset}" if dataset else "run")
    lines = (run / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# -- the checkpoint ---------------------------------------------------------------------------


def test_checkpoint_is_complete_and_predicts_what_the_run_predicted(world):
    cfg, layout, ckpts, tmp = world
    assert sorted(p.name for p in ckpts["twitter2015"].iterdir()) == sorted(
        [*pr.FILES, pr.MANIFEST, "tokenizer"]
    )
    manifest = json.loads((ckpts["twitter2015"] / pr.MANIFEST).read_text())
    assert manifest["task"] == "ner" and manifest["model"] == "hvpnet"
    for dataset in ("twitter2015", "mnre"):
        predictor = pr.Predictor.load(ckpts[dataset])
        posts, records = _records(layout, dataset)
        results = predictor.predict(records)
        expected = _run_predictions(tmp, dataset)
        assert len(results) == len(expected) == len(posts)
        for got, want in zip(results, expected):
            if dataset == "mnre":
                probs = [r["probability"] for r in got["relations"]]
                assert len(probs) == 3 and probs == sorted(probs, reverse=True)
                assert 0 < sum(probs) <= 1.0001
                assert got["relations"][0]["relation"] == want["pred"]
            else:
                assert got["tags"] == want["pred"]
                assert [(e["start"], e["end"], e["type"]) for e in got["entities"]] == [
                    (s, e, t) for s, e, t in bio_spans(want["pred"])
                ]
                assert all(0 < e["score"] <= 1 for e in got["entities"])


def test_a_moved_checkpoint_needs_no_data_directory(tmp_path):
    cfg = micro_cfg(tmp_path)
    build_toy_world(cfg, progress=False)
    layout = DataLayout.of(cfg)
    with quiet():
        finetune(cfg, "twitter2015", "hvpnet", out_dir=tmp_path / "run")
    pr.export_checkpoint(tmp_path / "run", tmp_path / "ckpt")
    _, records = _records(layout, "twitter2015")
    images = shutil.copytree(layout.image_dir("twitter2015", "test"), tmp_path / "images")
    records = [{**r, "image": str(images / r["image"].rsplit("/", 1)[1])} for r in records]
    shutil.move(tmp_path / "ckpt", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "data")  # the toy vocabulary and the boxes are gone too
    results = pr.Predictor.load(tmp_path / "elsewhere").predict(records)
    assert [r["tags"] for r in results] == [r["pred"] for r in _run_predictions(tmp_path, "")]


def test_export_refuses_unfinished_runs_and_existing_targets(world, tmp_path):
    _, _, ckpts, tmp = world
    with pytest.raises(CheckpointError, match="no DONE.json"):
        pr.export_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(CheckpointError, match="already exists"):
        pr.export_checkpoint(tmp / "run_mnre", ckpts["mnre"])
    assert not list(tmp_path.glob(".out.*"))


def test_altered_or_foreign_checkpoints_are_refused(world, tmp_path):
    _, _, ckpts, tmp = world
    copy = shutil.copytree(ckpts["twitter2015"], tmp_path / "copy")
    labels = json.loads((copy / "labels.json").read_text())
    (copy / "labels.json").write_text(json.dumps({**labels, "labels": labels["labels"][::-1]}))
    with pytest.raises(CheckpointError, match="altered since export"):
        pr.Predictor.load(copy)
    with pytest.raises(CheckpointError, match="export it first with `promu export"):
        pr.Predictor.load(tmp / "run_mnre")


def test_crf_marginals_match_brute_force():
    torch.manual_seed(0)
    crf = CRF(3, batch_first=True)
    for p in crf.parameters():
        torch.nn.init.normal_(p)
    em = torch.randn(4, 3)
    scores = {}
    for path in itertools.product(range(3), repeat=4):
        tags = torch.tensor([path])
        scores[path] = crf._compute_score(em[:, None], tags.T, torch.ones(4, 1, dtype=torch.bool))
    z = torch.logsumexp(torch.stack(list(scores.values())).flatten(), 0)
    brute = torch.zeros(4, 3)
    for path, s in scores.items():
        for t, j in enumerate(path):
            brute[t, j] += torch.exp(s.squeeze() - z)
    assert torch.allclose(pr.crf_marginals(crf, em), brute, atol=1e-5)


def test_entities_from_bio():
    tokens = ["Ada", "Lovelace", "in", "Paris", "and", "Rome"]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "I-LOC"]
    ents = pr.entities_of(tokens, tags, [0.9, 0.7, 1, 0.5, 1, 0.25])
    assert [(e["text"], e["type"], e["start"], e["end"], e["score"]) for e in ents] == [
        ("Ada Lovelace", "PER", 0, 2, 0.8),
        ("Paris", "LOC", 3, 4, 0.5),
        ("Rome", "LOC", 5, 6, 0.25),
    ]


# -- the command ------------------------------------------------------------------------------


def test_cli_prints_entities_and_relations(world, capsys):
    _, layout, ckpts, _ = world
    image = str(layout.image_dir("twitter2015", "test") / "toy_twitter2015_test_000000.jpg")
    rc = main(["predict", "--checkpoint", str(ckpts["twitter2015"]), "--text",
               "Ada Lovelace visits Paris", "--image", image])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("post: Ada Lovelace visits Paris")
    mimg = str(layout.image_dir("mnre", "test") / "toy_mnre_test_000000.jpg")
    rc = main(["predict", "--checkpoint", str(ckpts["mnre"]), "--text", "Ada met Bob in Paris",
               "--head", "0:1", "--tail", "2", "--image", mimg, "--top-k", "2", "--json"])  # fmt: skip
    row = json.loads(capsys.readouterr().out)
    assert rc == 0 and row["head"] == [0, 1] and row["tail"] == [2, 3]
    assert len(row["relations"]) == 2


def test_cli_batch_writes_one_row_per_post(world, tmp_path, capsys):
    _, layout, ckpts, _ = world
    _, records = _records(layout, "twitter2015")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    rc = main(["predict", "--checkpoint", str(ckpts["twitter2015"]), "--input", str(src),
               "--output", str(tmp_path / "out.jsonl")])  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rc == 0 and [r["id"] for r in rows] == [r["id"] for r in records]
    assert all(set(r) == {"id", "tokens", "tags", "entities"} for r in rows)


@pytest.mark.parametrize(
    "dataset, change, message",
    [
        ("twitter2015", {"image": "missing.jpg"}, "image not found"),
        ("twitter2015", {"image": "garbage.jpg"}, "not an image"),
        ("twitter2015", {"tokens": []}, "the text is empty"),
        ("twitter2015", {"tokens": None, "text": "   "}, "the text is empty"),
        ("twitter2015", {"head": [0, 1], "tail": [1, 2]}, "is an MNER checkpoint"),
        ("mnre", {"head": [0, 99]}, "head span 0:99 is out of range"),
        ("mnre", {"tail": "3:1"}, "tail span 3:1 is out of range"),
        ("mnre", {"tail": "x:y"}, "is not a span"),
        ("mnre", {"head": None}, "is an MRE checkpoint; give the head and tail"),
    ],
)
def test_a_bad_post_stops_the_batch_and_writes_nothing(
    world, tmp_path, capsys, dataset, change, message
):
    _, layout, ckpts, _ = world
    _, records = _records(layout, dataset)
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg at all")
    bad = {k: v for k, v in {**records[1], **change}.items() if v is not None}
    lines = [records[0], bad, *records[2:]]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out.jsonl"
    rc = main(["predict", "--checkpoint", str(ckpts[dataset]), "--input", str(src),
               "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("promu: error:")]
    assert rc == 1 and len(errors) == 1 and message in errors[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.jpg", "in.jsonl"]


def test_cli_refuses_a_checkpoint_of_the_other_task(world, capsys):
    _, _, ckpts, _ = world
    rc = main(["predict", "--checkpoint", str(ckpts["twitter2015"]), "--task", "re",
               "--text", "a b"])  # fmt: skip
    assert rc == 1 and "is an MNER checkpoint (twitter2015, hvpnet), not MRE" in (
        capsys.readouterr().err
    )


def test_help_documents_every_input(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--text", "--tokens", "--image", "--boxes", "--head", "--tail",
                 "--input", "--output", "--top-k", "--task", "--json", "--device"):  # fmt: skip
        assert flag in text


def test_a_second_export_to_the_same_target_waits_and_returns_the_first(world, tmp_path):
    import threading
    import time

    from promu_lib.locks import dir_lock

    _, _, _, tmp = world
    run, target, result = tmp / "run_mnre", tmp_path / "ckpt", {}
    second = threading.Thread(target=lambda: result.update(out=pr.export_checkpoint(run, target)))
    with dir_lock(target, "export"):  # the first export holds its target
        second.start()
        time.sleep(0.5)
        assert second.is_alive() and not target.exists()  # the second waits
        pr._export(run, target)
    second.join(timeout=120)
    assert result["out"] == target and pr.Predictor.load(target).task == "re"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
