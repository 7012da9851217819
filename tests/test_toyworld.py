"""The embedded toy world: deterministic, in the real formats, and the image matters."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from worlds import MICRO, world

from promu_lib.config import ConfigError, load_config
from promu_lib.data.formats import read_boxes, read_captions, read_mnre, read_rel2id, read_twitter
from promu_lib.data.images import load_image
from promu_lib.data.layout import NER_DATASETS, SPLITS, DataLayout
from promu_lib.data.records import ENTITY_TYPES, MNRE_REL2ID, MNRE_RELATIONS
from promu_lib.data.toyworld import (
    BUILDING,
    MANIFEST,
    RELATION_PHRASES,
    build_toy_world,
    is_built,
    read_manifest,
    read_truth,
    relation_quota,
)
from promu_lib.data.toyworld_draw import (
    OBJECT_CLASSES,
    RELATION_SIGNATURES,
    TYPE_CLASSES,
    encode_jpeg,
    read_relation,
    relation_types,
)
from promu_lib.data.toyworld_oracle import (
    entity_spans,
    oracle_ner,
    oracle_re,
    score_references,
    text_only_ner,
    text_only_re,
)
from promu_lib.errors import DataError
from promu_lib.io import sha256_tree
from promu_lib.metrics import ner_scores, re_scores

SMALL = world((60, 20, 40), (40, 10, 20), (90, 40, 40), (2, 1, 1), captions=80, names=30)


def small_cfg(root, **extra):
    return load_config("tiny", overrides={"data.root": str(root), **SMALL, **extra})


def micro_cfg(root, **extra):
    return load_config("tiny", overrides={"data.root": str(root), **MICRO, **extra})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = small_cfg(tmp_path_factory.mktemp("toy") / "data")
    root = build_toy_world(cfg, progress=False)
    return cfg, DataLayout(root=root, data=cfg.data)


# -- building -------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(world, tmp_path):
    cfg, layout = world
    again = build_toy_world(small_cfg(tmp_path / "a"), progress=False)
    assert sha256_tree(again) == sha256_tree(layout.root)
    seed0 = build_toy_world(micro_cfg(tmp_path / "b"), progress=False)
    seed1 = build_toy_world(micro_cfg(tmp_path / "c", **{"data.toy.seed": 1}), progress=False)
    for name in ("twitter2015/train.txt", "mnre/ours_train.txt", "pretrain/captions.jsonl"):
        assert (seed0 / name).read_bytes() != (seed1 / name).read_bytes()


def test_jpeg_encoding_is_deterministic():
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    a = encode_jpeg(Image.fromarray(pixels), 95)
    b = encode_jpeg(Image.fromarray(pixels.copy()), 95)
    assert a == b and a[:2] == b"\xff\xd8"


def test_rerun_is_instant_and_a_killed_build_is_redone(tmp_path):
    cfg = micro_cfg(tmp_path / "w")
    root = build_toy_world(cfg, progress=False)
    digest = sha256_tree(root)
    assert is_built(cfg) and not (root / BUILDING).exists()
    t = time.perf_counter()
    assert build_toy_world(cfg, progress=False) == root
    assert time.perf_counter() - t < 0.5
    # a killed run: marker present, no manifest, an image missing, a stray temp file
    (root / MANIFEST).unlink()
    (root / BUILDING).write_text("{}")
    victim = next((root / "twitter2015_images").glob("*.jpg"))
    victim.unlink()
    (root / "twitter2015_images" / ".x.jpg.123.tmp").write_bytes(b"half")
    assert not is_built(cfg)
    build_toy_world(cfg, progress=False)
    assert victim.exists() and sha256_tree(root) == digest
    # another config rebuilds over the old world
    bigger = micro_cfg(tmp_path / "w", **{"data.toy.n_names": 13})
    assert not is_built(bigger)
    build_toy_world(bigger, progress=False)
    assert is_built(bigger) and not is_built(cfg)


def test_refuses_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="did not write"):
        build_toy_world(micro_cfg(tmp_path / "d"), progress=False)
    assert (tmp_path / "d" / "mine.txt").read_text() == "precious"


def test_paper_profile_has_no_toy_world():
    with pytest.raises(ConfigError, match="no toy world"):
        build_toy_world(load_config("paper"), progress=False)


def test_mnre_quota_is_long_tailed_with_a_floor():
    q = relation_quota(900, 0.5, 6)
    assert sum(q.values()) == 900 and set(q) == set(MNRE_RELATIONS)
    assert max(q, key=q.get) == "None" and 0.4 <= q["None"] / 900 <= 0.6
    assert min(q.values()) == 6 and q["/per/per/peer"] >= 5 * q["/per/per/alumi"]
    with pytest.raises(ConfigError, match="cannot hold"):
        relation_quota(50, 0.5, 6)


# -- the real formats -----------------------------------------------------------------------


def test_files_are_read_by_the_real_readers(world):
    cfg, layout = world
    sizes = {d: getattr(cfg.data.toy, f"{d}_sizes") for d in (*NER_DATASETS, "mnre")}
    for dataset in NER_DATASETS:
        boxes = read_boxes(layout.boxes(dataset))
        for i, split in enumerate(SPLITS):
            posts = read_twitter(layout.split_file(dataset, split))
            assert len(posts) == sizes[dataset][i]
            for p in posts:
                assert p.img_id in boxes
                assert (
                    layout.image_dir(dataset, split) / layout.image_name(dataset, p.img_id)
                ).is_file()
    raw15 = layout.split_file("twitter2015", "train").read_text()
    raw17 = layout.split_file("twitter2017", "train").read_text()
    assert "B-OTHER" in raw15 and "MISC" not in raw15 and "B-MISC" in raw17 and "OTHER" not in raw17

    rel2id = read_rel2id(layout.rel2id())
    assert rel2id == MNRE_REL2ID
    mnre_boxes = read_boxes(layout.boxes("mnre"))
    for i, split in enumerate(SPLITS):
        lines = layout.split_file("mnre", split).read_text().splitlines()
        assert all(
            line.startswith("{'token': [") for line in lines
        )  # dict literals, as the real files
        posts = read_mnre(layout.split_file("mnre", split), rel2id)
        assert len(posts) == sizes["mnre"][i]
        assert all((layout.image_dir("mnre", split) / p.img_id).is_file() for p in posts)
        assert all(p.img_id in mnre_boxes for p in posts)

    pairs = read_captions(layout.captions())
    cap_boxes = read_boxes(layout.boxes("pretrain"))
    assert len(pairs) == cfg.data.toy.n_captions
    assert {p.image for p in pairs} == set(cap_boxes)
    img = load_image(layout.caption_image_dir() / pairs[0].image)
    assert img.mode == "RGB" and img.size == (cfg.data.toy.image_size,) * 2


def test_boxes_look_like_a_detector(world):
    cfg, layout = world
    size = cfg.data.toy.image_size
    boxes = read_boxes(layout.boxes("twitter2015"))
    all_boxes = [b for bs in boxes.values() for b in bs]
    assert all(0 <= b.x1 < b.x2 <= size and 0 <= b.y1 < b.y2 <= size for b in all_boxes)
    assert {b.cls for b in all_boxes} <= set(OBJECT_CLASSES)
    for bs in boxes.values():
        assert [b.score for b in bs] == sorted((b.score for b in bs), reverse=True)
    # jitter: detector boxes are near, not equal to, the drawn ones
    truths = read_truth(layout.truth("twitter2015", "train"))
    drawn = [o for t in truths for o in t["objects"]]
    detected = sum(len(boxes[t["img_id"]]) for t in truths)
    assert 0.8 * len(drawn) <= detected <= 1.2 * len(drawn)
    exact = sum(
        any([b.x1, b.y1, b.x2, b.y2] == o["box"] for b in boxes[t["img_id"]])
        for t in truths
        for o in t["objects"]
    )
    assert exact < 0.1 * len(drawn)


# -- what the world means -------------------------------------------------------------------


def test_entity_types_are_all_present_with_sensible_shares(world):
    _, layout = world
    for dataset in NER_DATASETS:
        posts = read_twitter(layout.split_file(dataset, "train"))
        types = Counter(t for p in posts for _, _, t in entity_spans(p.labels))
        shares = {t: types[t] / sum(types.values()) for t in ENTITY_TYPES}
        assert all(s >= 0.05 for s in shares.values()), shares
        assert max(shares, key=shares.get) in ("PER", "LOC")
        assert all(1 <= len(entity_spans(p.labels)) <= 3 for p in posts)


def test_names_are_ambiguous_in_text(world):
    """A name keeps its usual type most of the time, but far from always."""
    _, layout = world
    posts = [p for d in NER_DATASETS for p in read_twitter(layout.split_file(d, "train"))]
    by_name: dict[tuple, Counter] = {}
    for p in posts:
        for s, e, t in entity_spans(p.labels):
            by_name.setdefault(p.tokens[s:e], Counter())[t] += 1
    mentions = sum(sum(c.values()) for c in by_name.values())
    majority = sum(c.most_common(1)[0][1] for c in by_name.values())
    assert 0.6 <= majority / mentions <= 0.9
    assert any(len(c) > 1 for c in by_name.values())


def test_relevant_images_draw_each_mention_left_to_right_with_its_type(world):
    _, layout = world
    n_irrelevant = n_posts = 0
    for dataset in NER_DATASETS:
        posts = read_twitter(layout.split_file(dataset, "train"))
        truths = read_truth(layout.truth(dataset, "train"))
        n_posts += len(posts)
        for post, truth in zip(posts, truths):
            assert post.img_id == truth["img_id"]
            gold = entity_spans(post.labels)
            assert [tuple(m["span"]) for m in truth["mentions"]] == [(s, e) for s, e, _ in gold]
            owned = [o for o in truth["objects"] if o["mention"] is not None]
            if not truth["relevant"]:
                n_irrelevant += 1
                assert not owned
                continue
            assert [o["mention"] for o in owned] == list(range(len(gold)))
            assert [o["box"][0] for o in owned] == sorted(o["box"][0] for o in owned)
            assert [OBJECT_CLASSES[o["cls"]].entity_type for o in owned] == [t for *_, t in gold]
    assert 0 < n_irrelevant < 0.2 * n_posts


def test_relation_signatures_are_unique_per_type_pair():
    seen = {}
    for rel, (arrangement, icon) in RELATION_SIGNATURES.items():
        if rel == "None":
            continue
        head, tail = relation_types(rel)
        assert rel.split("/")[1:3] == [head.lower(), tail.lower()]
        key = (head, tail, arrangement, icon)
        assert key not in seen, (rel, seen.get(key))
        seen[key] = rel
        assert (
            read_relation(TYPE_CLASSES[head][-1], TYPE_CLASSES[tail][0], arrangement, icon) == rel
        )
    assert read_relation("person", "person", "apart", None) == "None"
    assert set(RELATION_SIGNATURES) == set(MNRE_RELATIONS)


def test_mnre_is_long_tailed_and_every_relation_is_in_every_split(world):
    _, layout = world
    for split in SPLITS:
        posts = read_mnre(layout.split_file("mnre", split))
        counts = Counter(p.relation for p in posts)
        assert set(counts) == set(MNRE_RELATIONS), split
        assert counts.most_common(1)[0][0] == "None"
        for p in posts:  # entity spans name the entities; the types fit the relation
            assert " ".join(p.tokens[p.head.start : p.head.end]) == p.head.name
            assert " ".join(p.tokens[p.tail.start : p.tail.end]) == p.tail.name
        truths = read_truth(layout.truth("mnre", split))
        for p, t in zip(posts, truths):
            if t["relevant"]:
                roles = {o["role"]: o["cls"] for o in t["objects"]}
                types = (
                    OBJECT_CLASSES[roles["head"]].entity_type,
                    OBJECT_CLASSES[roles["tail"]].entity_type,
                )
                assert relation_types(p.relation) in (None, types)


def test_caption_corpus_has_hard_negatives_and_names_what_is_drawn(world):
    cfg, layout = world
    pairs = read_captions(layout.captions())
    truth = {t["img_id"]: t for t in read_truth(layout.truth("pretrain", "train"))}
    matched = [p for p in pairs if p.matched]
    assert len(matched) == len(pairs) - round(len(pairs) * cfg.data.toy.mismatch_rate)

    def nouns(caption):
        return {w for w in caption.split() if w in OBJECT_CLASSES}

    for p in matched:
        t = truth[p.image]
        assert nouns(p.caption) == {o["cls"] for o in t["objects"]}
        if t["relation"] is not None:
            assert RELATION_PHRASES[t["relation"]] in p.caption
    overlap = 0
    for p in pairs:
        if not p.matched:
            drawn = {o["cls"] for o in truth[p.image]["objects"]}
            assert nouns(p.caption) != drawn or any(
                m.image == p.image and m.caption != p.caption for m in matched
            )
            overlap += bool(nouns(p.caption) & drawn)
    assert overlap >= 0.7 * (len(pairs) - len(matched))
    assert any(t["relation"] for t in truth.values()) and any(
        not t["relation"] for t in truth.values()
    )


@pytest.mark.slow  # imports torch
def test_relation_phrases_are_the_minings():
    mining = pytest.importorskip("promu_lib.mining")
    assert RELATION_PHRASES == mining.RELATION_PHRASES


def test_object_classes_are_told_apart_by_their_pixels(world):
    """A nearest-centroid classifier on 4x4 crops already separates the 12 classes."""
    _, layout = world
    feats, labels = [], []
    for t in read_truth(layout.truth("pretrain", "train")):
        img = Image.open(layout.caption_image_dir() / t["img_id"]).convert("RGB")
        for o in t["objects"]:
            x1, y1, x2, y2 = o["box"]
            crop = img.crop((int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2)))).resize((4, 4))
            feats.append(np.asarray(crop, dtype=np.float32).ravel())
            labels.append(o["cls"])
    feats, labels = np.stack(feats), np.array(labels)
    half = len(labels) // 2
    classes = sorted(set(labels[:half]))
    centroids = np.stack([feats[:half][labels[:half] == c].mean(0) for c in classes])
    pred = np.array(classes)[((feats[half:, None] - centroids) ** 2).sum(-1).argmin(1)]
    assert (pred == labels[half:]).mean() >= 0.8


def test_oracle_reads_relevant_images_perfectly_and_text_only_is_below(world):
    _, layout = world
    for dataset in NER_DATASETS:
        train = read_twitter(layout.split_file(dataset, "train"))
        test = read_twitter(layout.split_file(dataset, "test"))
        truths = read_truth(layout.truth(dataset, "test"))
        oracle = oracle_ner(test, truths, train)
        for post, truth, tags in zip(test, truths, oracle):
            if truth["relevant"]:
                assert tags == list(post.labels)
        gold = [p.labels for p in test]
        assert ner_scores(gold, text_only_ner(train, test))["f1"] < ner_scores(gold, oracle)["f1"]
    train = read_mnre(layout.split_file("mnre", "train"))
    test = read_mnre(layout.split_file("mnre", "test"))
    truths = read_truth(layout.truth("mnre", "test"))
    oracle = oracle_re(test, truths, train)
    assert all(o == p.relation for p, t, o in zip(test, truths, oracle) if t["relevant"])
    gold = [p.relation for p in test]
    assert re_scores(gold, text_only_re(train, test))["f1"] < re_scores(gold, oracle)["f1"]


def test_oracle_refuses_misaligned_truth(world):
    _, layout = world
    test = read_twitter(layout.split_file("twitter2015", "test"))
    truths = read_truth(layout.truth("twitter2015", "test"))
    with pytest.raises(ValueError, match="paired with"):
        oracle_ner(test, truths[::-1], test)


@pytest.mark.slow
def test_tiny_profile_world_oracle_vs_text_only(tmp_path):
    """The default tiny sizes: builds in seconds; oracle >= 95 F1, text-only >= 10 F1 lower."""
    cfg = load_config("tiny", overrides={"data.root": str(tmp_path / "tiny")})
    t = time.perf_counter()
    root = build_toy_world(cfg, progress=False)
    build_s = time.perf_counter() - t
    scores = score_references(DataLayout(root=root, data=cfg.data), "test")
    print(
        f"tiny toy world: built in {build_s:.1f} s, {read_manifest(root)['bytes'] / 1e6:.1f} MB; {scores}"
    )
    for dataset, s in scores.items():
        assert s["oracle"] >= 95, (dataset, s)
        assert s["text_only"] <= s["oracle"] - 10, (dataset, s)


def test_other_image_sizes(tmp_path):
    cfg = micro_cfg(tmp_path / "w", **{"data.toy.image_size": 32})
    layout = DataLayout(root=build_toy_world(cfg, progress=False), data=cfg.data)
    post = read_mnre(layout.split_file("mnre", "train"))[0]
    assert load_image(layout.image_dir("mnre", "train") / post.img_id).size == (32, 32)
    boxes = [b for bs in read_boxes(layout.boxes("mnre")).values() for b in bs]
    assert boxes and all(0 <= b.x1 < b.x2 <= 32 and 0 <= b.y1 < b.y2 <= 32 for b in boxes)
