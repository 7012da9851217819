"""The embedded toy world: Twitter-2015/2017-like MNER, MNRE-like MRE and a caption corpus.

No multimodal data or pretrained weights can be downloaded here, so the default profile runs on
this generated world, built so that the papers' questions are real questions in it:

- Invented names each have a usual type (``name_usual_type_prob``) but appear as others too;
  most post templates carry no type cue. The image draws one object per mention, left to right
  in mention order, whose class shows the type (PER person; LOC house, mountain, flag; ORG
  tower; MISC trophy, guitar, ball). So the text gives a prior and the image the answer, unless
  the image is irrelevant (it then shows unrelated objects).
- MNRE's 23 relations with a long tail ("None" the largest class; alumi, neighbor, race,
  religion rare but present in every split). A relation is drawn as an arrangement and/or an
  icon between the two objects (``toyworld_draw.RELATION_SIGNATURES``) and is named by some
  sentences ("X is a member of Y"), not by most.
- Captions (NewsCLIPpings-like) name the drawn objects and relations; a share of pairs carries
  another caption's image that shares some nouns (hard negatives).

Everything is written in the real on-disk formats (``formats.write_*``) at the paths of
:class:`~promu_lib.data.layout.DataLayout`, plus detector-like boxes and truth files that only
the toy world has. The same config (``data.toy`` and the layout names) gives byte-identical
files; ``toyworld.json``, written last, marks a complete world.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from promu_lib.config import Config, ConfigError, ToyWorldConfig, config_hash
from promu_lib.data import toyworld_text as text
from promu_lib.data.formats import (
    write_boxes,
    write_captions,
    write_mnre,
    write_rel2id,
    write_twitter,
)
from promu_lib.data.layout import NER_DATASETS, SPLITS, DataLayout
from promu_lib.data.records import (
    ENTITY_TYPES,
    RELATION_PHRASES,
    Box,
    CaptionPair,
    NerPost,
    RePost,
    Span,
)
from promu_lib.data.toyworld_draw import (
    CLASS_NAMES,
    OBJECT_CLASSES,
    RELATION_SIGNATURES,
    SCENERY_CLASSES,
    TYPE_CLASSES,
    Scene,
    detect,
    encode_jpeg,
    pair_layout,
    relation_types,
    render,
    row_layout,
)
from promu_lib.errors import DataError
from promu_lib.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl
from promu_lib.paths import resolve
from promu_lib.progress import Progress, log_every

__all__ = [
    "RELATION_PHRASES",
    "RELATION_WEIGHTS",
    "build_toy_world",
    "is_built",
    "read_manifest",
    "read_truth",
    "relation_quota",
    "world_hash",
]

GENERATOR_VERSION = 1  # bump when the generator's output changes for the same config
MANIFEST = "toyworld.json"
BUILDING = "toyworld.building"  # present while a build runs; marks a directory as ours

# Entity-type shares (PER, LOC, ORG, MISC) of the real train splits: Twitter-2015 PER 2217,
# LOC 2091, OTHER 931, ORG 927; Twitter-2017 PER 2943, LOC 731, ORG 1674, MISC 701.
TYPE_MIX: dict[str, tuple[float, ...]] = {
    "twitter2015": (0.36, 0.34, 0.15, 0.15),
    "twitter2017": (0.48, 0.12, 0.28, 0.12),
}
N_MENTIONS_P = (0.5, 0.35, 0.15)  # posts with 1, 2, 3 entities
NONE_PAIR_MIX = (0.55, 0.15, 0.15, 0.15)  # entity types of "None" pairs
# Relative frequency of the 22 relations (MNRE-like long tail; "None" comes on top).
RELATION_WEIGHTS: dict[str, float] = {
    "/per/per/peer": 10.0,
    "/per/org/member_of": 8.0,
    "/per/misc/present_in": 7.0,
    "/per/loc/place_of_residence": 5.0,
    "/misc/misc/part_of": 4.0,
    "/per/per/couple": 3.5,
    "/org/loc/locate_at": 3.0,
    "/loc/loc/contain": 2.5,
    "/per/misc/awarded": 2.5,
    "/misc/loc/held_on": 2.0,
    "/per/per/parent": 1.5,
    "/per/per/siblings": 1.2,
    "/org/org/alternate_names": 1.0,
    "/org/org/subsidiary": 0.8,
    "/per/misc/nationality": 0.8,
    "/per/loc/place_of_birth": 0.7,
    "/per/per/alternate_names": 0.6,
    "/per/per/charges": 0.5,
    "/per/per/alumi": 0.2,
    "/per/per/neighbor": 0.2,
    "/per/misc/race": 0.15,
    "/per/misc/religion": 0.15,
}
_STREAMS = {"names": 0, "twitter2015": 1, "twitter2017": 2, "mnre": 3, "pretrain": 4}

SaveImage = Callable[[Path, Scene, np.random.Generator], None]  # draws, encodes, writes


# -- names -----------------------------------------------------------------------------------


class _NamePool:
    """Invented names with a usual type each, drawn with a mild Zipf skew."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.names = text.make_names(n, rng)
        usual = np.array([ENTITY_TYPES[i % 4] for i in range(n)])[rng.permutation(n)]
        weights = 1.0 / (np.arange(n) + 5.0)
        self._pools = {}
        for t in ENTITY_TYPES:
            for same in (True, False):
                idx = np.flatnonzero((usual == t) == same)
                w = weights[: len(idx)]
                self._pools[t, same] = (idx, w / w.sum())

    def draw(self, etype: str, rng: np.random.Generator, p_usual: float, avoid=()) -> text.Name:
        """A name for a mention of type ``etype``: usually one whose usual type it is."""
        for _ in range(100):
            idx, p = self._pools[etype, bool(rng.random() < p_usual)]
            name = self.names[idx[rng.choice(len(idx), p=p)]]
            if name not in avoid:
                return name
        raise ConfigError(f"data.toy.n_names={len(self.names)} is too small for distinct mentions")


# -- Twitter-2015/2017 -------------------------------------------------------------------------


def _ner_post(
    img_id: str, names: _NamePool, toy: ToyWorldConfig, dataset: str, rng: np.random.Generator
) -> tuple[NerPost, Scene, dict]:
    k = int(rng.choice(3, p=N_MENTIONS_P)) + 1
    types = [ENTITY_TYPES[i] for i in rng.choice(4, size=k, p=TYPE_MIX[dataset])]
    mentions: list[text.Name] = []
    for t in types:
        mentions.append(names.draw(t, rng, toy.name_usual_type_prob, avoid=mentions))
    relevant = bool(rng.random() >= getattr(toy, f"{dataset}_irrelevant_rate"))
    if relevant:
        classes = [text.pick(rng, TYPE_CLASSES[t]) for t in types]
        owners: list[int | None] = list(range(k))
        if k < 3 and rng.random() < toy.distractor_rate:
            at = int(rng.integers(k + 1))
            classes.insert(at, text.pick(rng, SCENERY_CLASSES))
            owners.insert(at, None)
    else:
        classes = [text.pick(rng, CLASS_NAMES) for _ in range(int(rng.integers(1, 4)))]
        owners = [None] * len(classes)
    scene = Scene(list(zip(classes, row_layout(classes, toy.image_size, rng))))
    scenery = [c for c, o in zip(classes, owners) if o is None and c in SCENERY_CLASSES]

    tokens: list[str] = ["RT", text.handle(rng), ":"] if rng.random() < 0.3 else []
    labels = ["O"] * len(tokens)
    spans = []
    for i, (name, t) in enumerate(zip(mentions, types)):
        if i:
            tokens.append(text.pick(rng, (",", "and", ".", "|")))
            labels.append("O")
        cue = rng.random() < toy.ner_cue_rate
        clause, at = text.fill(
            text.pick(rng, text.NER_CUES[t] if cue else text.NER_NEUTRAL), {"E": name}
        )
        s, e = at["E"]
        spans.append((len(tokens) + s, len(tokens) + e))
        labels += ["O"] * s + [f"B-{t}"] + [f"I-{t}"] * (e - s - 1) + ["O"] * (len(clause) - e)
        tokens += clause
    if scenery or rng.random() < 0.4:
        noun = scenery[0] if scenery and rng.random() < 0.8 else text.pick(rng, text.FILLER_NOUNS)
        extra, _ = text.fill(text.pick(rng, text.NER_FILLERS), {"noun": (noun,)})
        tokens += [text.pick(rng, (",", "-", "."))] + extra
    if rng.random() < 0.3:
        tokens.append(text.pick(rng, text.HASHTAGS))
    if rng.random() < 0.15:
        tokens.append(
            "http://t.co/" + "".join(rng.choice(list("abcdefghkmnpqrstuvwxyz0123456789"), 6))
        )
    labels += ["O"] * (len(tokens) - len(labels))

    post = NerPost(img_id, tuple(tokens), tuple(labels))
    truth = {
        "img_id": img_id,
        "relevant": relevant,
        "mentions": [{"name": " ".join(n), "span": list(sp)} for n, sp in zip(mentions, spans)],
        "objects": [
            {"cls": c, "box": _round(b), "mention": o} for (c, b), o in zip(scene.objects, owners)
        ],
    }
    return post, scene, truth


def _build_ner(
    layout: DataLayout, dataset: str, names: _NamePool, toy: ToyWorldConfig, save: SaveImage
) -> dict:
    stats, boxes = {}, {}
    for si, split in enumerate(SPLITS):
        rng = np.random.default_rng([toy.seed, _STREAMS[dataset], si])
        posts, truths = [], []
        for i in range(getattr(toy, f"{dataset}_sizes")[si]):
            img_id = f"toy_{dataset}_{split}_{i:06d}"
            post, scene, truth = _ner_post(img_id, names, toy, dataset, rng)
            save(layout.image_dir(dataset, split) / layout.image_name(dataset, img_id), scene, rng)
            boxes[img_id] = _detect(scene, toy, rng)
            posts.append(post)
            truths.append(truth)
        write_twitter(
            layout.split_file(dataset, split),
            posts,
            other_as="OTHER" if dataset == "twitter2015" else "MISC",
        )
        atomic_write_jsonl(layout.truth(dataset, split), truths)
        entities = Counter(lab[2:] for p in posts for lab in p.labels if lab.startswith("B-"))
        stats[split] = {
            "posts": len(posts),
            "entities": dict(sorted(entities.items())),
            "irrelevant_images": sum(not t["relevant"] for t in truths),
        }
    write_boxes(layout.boxes(dataset), boxes)
    return stats


# -- MNRE ----------------------------------------------------------------------------------------


def relation_quota(n: int, none_share: float, minimum: int) -> dict[str, int]:
    """Lines per relation in a split of ``n``: the long tail of :data:`RELATION_WEIGHTS` with
    at least ``minimum`` per relation; "None" gets the rest."""
    related = n * (1.0 - none_share)
    total = sum(RELATION_WEIGHTS.values())
    counts = {r: max(minimum, round(related * w / total)) for r, w in RELATION_WEIGHTS.items()}
    none = n - sum(counts.values())
    if none < 0:
        raise ConfigError(
            f"an MNRE split of {n} lines cannot hold {minimum} lines of each of the 22 relations; "
            "raise data.toy.mnre_sizes or lower data.toy.mnre_min_per_relation"
        )
    return {"None": none, **counts}


def _re_post(
    img_id: str, relation: str, names: _NamePool, toy: ToyWorldConfig, rng: np.random.Generator
) -> tuple[RePost, Scene, dict]:
    types = relation_types(relation) or tuple(
        ENTITY_TYPES[i] for i in rng.choice(4, 2, p=NONE_PAIR_MIX)
    )
    head = names.draw(types[0], rng, toy.name_usual_type_prob)
    tail = names.draw(types[1], rng, toy.name_usual_type_prob, avoid=(head,))
    cue = relation != "None" and rng.random() < toy.re_cue_rate
    template = text.pick(rng, text.RE_CUES[relation] if cue else text.RE_NEUTRAL)
    tokens, at = text.fill(
        template, {"h": head, "t": tail, "noun": (text.pick(rng, text.FILLER_NOUNS),)}
    )
    if rng.random() < 0.25:
        prefix = ["RT", text.handle(rng), ":"]
        tokens = prefix + tokens
        at = {k: (s + 3, e + 3) for k, (s, e) in at.items()}
    if rng.random() < 0.3:
        tokens.append(text.pick(rng, text.HASHTAGS))
    post = RePost(
        tuple(tokens),
        Span(" ".join(head), *at["h"]),
        Span(" ".join(tail), *at["t"]),
        img_id,
        relation,
    )
    relevant = bool(rng.random() >= toy.mnre_irrelevant_rate)
    if relevant:
        arrangement, icon = RELATION_SIGNATURES[relation]
        classes = [text.pick(rng, TYPE_CLASSES[t]) for t in types]
        scene = pair_layout(classes[0], classes[1], arrangement, icon, toy.image_size, rng)
        roles: list[str | None] = ["head", "tail"]
    else:
        arrangement = icon = None
        classes = [text.pick(rng, CLASS_NAMES) for _ in range(int(rng.integers(1, 4)))]
        scene = Scene(list(zip(classes, row_layout(classes, toy.image_size, rng))))
        roles = [None] * len(classes)
    truth = {
        "img_id": img_id,
        "relevant": relevant,
        "objects": [
            {"cls": c, "box": _round(b), "role": r} for (c, b), r in zip(scene.objects, roles)
        ],
        "arrangement": arrangement,
        "icon": icon,
        "icon_box": _round(scene.icon_box) if scene.icon_box else None,
    }
    return post, scene, truth


def _build_mnre(layout: DataLayout, names: _NamePool, toy: ToyWorldConfig, save: SaveImage) -> dict:
    stats, boxes = {}, {}
    write_rel2id(layout.rel2id())
    for si, split in enumerate(SPLITS):
        rng = np.random.default_rng([toy.seed, _STREAMS["mnre"], si])
        quota = relation_quota(
            toy.mnre_sizes[si], toy.mnre_none_share, toy.mnre_min_per_relation[si]
        )
        relations = [r for r, c in quota.items() for _ in range(c)]
        posts, truths = [], []
        for i, j in enumerate(rng.permutation(len(relations))):
            img_id = f"toy_mnre_{split}_{i:06d}.jpg"
            post, scene, truth = _re_post(img_id, relations[j], names, toy, rng)
            save(layout.image_dir("mnre", split) / img_id, scene, rng)
            boxes[img_id] = _detect(scene, toy, rng)
            posts.append(post)
            truths.append(truth)
        write_mnre(layout.split_file("mnre", split), posts, style="python")
        atomic_write_jsonl(layout.truth("mnre", split), truths)
        stats[split] = {
            "lines": len(posts),
            "relations": dict(Counter(p.relation for p in posts).most_common()),
            "irrelevant_images": sum(not t["relevant"] for t in truths),
        }
    write_boxes(layout.boxes("mnre"), boxes)
    return stats


# -- captions -----------------------------------------------------------------------------------


def _caption_scene(toy: ToyWorldConfig, rng: np.random.Generator) -> tuple[Scene, str, str | None]:
    if rng.random() < toy.caption_relation_rate:
        relation = text.pick(rng, list(RELATION_PHRASES))
        arrangement, icon = RELATION_SIGNATURES[relation]
        classes = [text.pick(rng, TYPE_CLASSES[t]) for t in relation_types(relation)]
        scene = pair_layout(classes[0], classes[1], arrangement, icon, toy.image_size, rng)
        sizes = ("big", "small") if arrangement == "size" else ("", "")
        phrases = [
            text.noun_phrase(c, OBJECT_CLASSES[c].colour, rng, sz) for c, sz in zip(classes, sizes)
        ]
        return scene, text.caption(phrases, RELATION_PHRASES[relation], rng), relation
    classes = [text.pick(rng, CLASS_NAMES) for _ in range(int(rng.integers(1, 4)))]
    scene = Scene(list(zip(classes, row_layout(classes, toy.image_size, rng))))
    phrases = [text.noun_phrase(c, OBJECT_CLASSES[c].colour, rng) for c in classes]
    return scene, text.caption(phrases, None, rng), None


def _hard_negative(i: int, scenes: list, matched: np.ndarray, rng: np.random.Generator) -> int:
    """A matched scene that shares an object class with scene ``i`` but does not show the same."""
    mine = {c for c, _ in scenes[i][0].objects}
    fallback = None
    for j in rng.choice(matched, size=min(40, len(matched)), replace=False):
        other = {c for c, _ in scenes[j][0].objects}
        differs = other != mine or scenes[j][2] != scenes[i][2]
        if j != i and differs:
            if mine & other:
                return int(j)
            fallback = int(j) if fallback is None else fallback
    if fallback is None:
        raise ConfigError("data.toy.n_captions is too small to draw mismatched caption pairs")
    return fallback


def _build_captions(layout: DataLayout, toy: ToyWorldConfig, save: SaveImage) -> dict:
    rng = np.random.default_rng([toy.seed, _STREAMS["pretrain"], 0])
    n = toy.n_captions
    scenes = [_caption_scene(toy, rng) for _ in range(n)]
    mismatched = np.zeros(n, dtype=bool)
    mismatched[rng.choice(n, size=round(n * toy.mismatch_rate), replace=False)] = True
    matched = np.flatnonzero(~mismatched)
    image_of = {int(i): f"toy_cap_{i:06d}.jpg" for i in matched}
    boxes, truths = {}, []
    for i in matched:
        scene, _, relation = scenes[i]
        save(layout.caption_image_dir() / image_of[int(i)], scene, rng)
        boxes[image_of[int(i)]] = _detect(scene, toy, rng)
        truths.append({
            "img_id": image_of[int(i)],
            "relevant": True,
            "objects": [{"cls": c, "box": _round(b)} for c, b in scene.objects],
            "relation": relation,
            "icon_box": _round(scene.icon_box) if scene.icon_box else None,
        })  # fmt: skip
    pairs = []
    for i in range(n):
        image = image_of[_hard_negative(i, scenes, matched, rng)] if mismatched[i] else image_of[i]
        pairs.append(CaptionPair(f"cap_{i:06d}", scenes[i][1], image, not mismatched[i]))
    write_captions(layout.captions(), pairs)
    write_boxes(layout.boxes("pretrain"), boxes)
    atomic_write_jsonl(layout.truth("pretrain", "train"), truths)
    return {"pairs": n, "matched": int(len(matched)), "images": int(len(matched))}


# -- building ------------------------------------------------------------------------------------


def _round(box) -> list[float]:
    return [round(float(v), 1) for v in box]


def _detect(scene: Scene, toy: ToyWorldConfig, rng: np.random.Generator) -> list[Box]:
    return detect(
        scene, toy.image_size, rng, toy.box_jitter, toy.box_miss_rate, toy.box_false_alarm_rate
    )


def _layout_keys() -> tuple[str, ...]:
    names = ("twitter2015_dir", "twitter2015_images", "twitter2017_dir", "twitter2017_images",
             "mnre_dir", "mnre_images", "captions_file", "captions_images", "boxes_dir")  # fmt: skip
    return tuple(f"data.{k}" for k in names)


def world_hash(cfg: Config) -> str:
    """Hash of what decides the world's bytes: ``data.toy``, the layout names, the version."""
    return config_hash(cfg, "data.toy", *_layout_keys(), extra={"generator": GENERATOR_VERSION})


def _owned_paths(layout: DataLayout) -> list[Path]:
    """Every file or directory a build writes (and a rebuild may delete)."""
    paths = [layout.split_file(d, "train").parent for d in (*NER_DATASETS, "mnre")]
    paths += [layout.image_dir(d, "train") for d in NER_DATASETS]
    paths += [
        layout.image_dir("mnre", "train").parent,
        layout.caption_image_dir(),
        layout.captions(),
    ]
    paths += [layout.boxes(d) for d in (*NER_DATASETS, "mnre", "pretrain")]
    paths += [layout.truth("mnre", "train").parent]
    return paths


def read_manifest(root: str | Path) -> dict | None:
    """The ``toyworld.json`` of a data directory, or None when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def is_built(cfg: Config) -> bool:
    """Whether ``cfg``'s data root holds a complete toy world of exactly this config."""
    root = resolve(cfg.data_root())
    manifest = read_manifest(root)
    return (
        manifest is not None
        and manifest.get("config_hash") == world_hash(cfg)
        and not (root / BUILDING).exists()
    )


def read_truth(path: str | Path) -> list[dict]:
    """A truth file (JSON lines, one dict per post/line/image, in file order)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _prepare(layout: DataLayout) -> None:
    """Make ``layout.root`` ready for a fresh build, deleting only a previous toy world."""
    root = layout.root
    ours = (root / MANIFEST).exists() or (root / BUILDING).exists()
    if root.exists() and any(root.iterdir()) and not ours:
        raise DataError(
            root,
            "holds files that the toy world did not write; refusing to build over them",
            "an empty or absent directory, or a toy world (with toyworld.json); set data.root "
            "to another directory",
        )
    for path in _owned_paths(layout):
        if root not in path.parents:  # a layout name that points at the root or outside it
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (root / MANIFEST).unlink(missing_ok=True)
    atomic_write_json(root / BUILDING, {"note": "a toy world build is under way or was killed"})


def build_toy_world(cfg: Config, progress: bool = True) -> Path:
    """Generate the toy world of ``cfg.data.toy`` under ``cfg.data_root()``; return that root.

    A complete world of the same config is kept as it is (a rerun returns at once); a partial
    one from a killed run, or one of another config, is deleted and rebuilt. A directory holding
    anything else is never touched (DataError).
    """
    toy = cfg.data.toy
    if toy is None:
        raise ConfigError(
            f"profile {cfg.profile!r} has no toy world (data.toy is null): it reads real data"
        )
    if toy.n_names < 8 or toy.image_size < 32:
        raise ConfigError("data.toy needs n_names >= 8 (two per entity type) and image_size >= 32")
    layout = DataLayout.of(cfg)
    if is_built(cfg):
        return layout.root
    _prepare(layout)

    total = sum(toy.twitter2015_sizes) + sum(toy.twitter2017_sizes) + sum(toy.mnre_sizes)
    total += toy.n_captions - round(toy.n_captions * toy.mismatch_rate)
    bar = Progress(total, "toy world images", progress, log_every=log_every(total))

    def save(path: Path, scene: Scene, rng: np.random.Generator) -> None:
        # no fsync per image: one os.sync() before the manifest commits them all (~4x faster)
        data = encode_jpeg(render(scene, toy.image_size, rng), toy.jpeg_quality)
        atomic_write_bytes(path, data, fsync=False)
        bar.update()

    names = _NamePool(toy.n_names, np.random.default_rng([toy.seed, _STREAMS["names"]]))
    stats = {d: _build_ner(layout, d, names, toy, save) for d in NER_DATASETS}
    stats["mnre"] = _build_mnre(layout, names, toy, save)
    stats["pretrain"] = _build_captions(layout, toy, save)
    bar.close()

    files = [
        p
        for q in _owned_paths(layout)
        for p in ([q] if q.is_file() else q.rglob("*"))
        if p.is_file()
    ]
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "config_hash": world_hash(cfg),
        "toy": cfg.to_dict()["data"]["toy"],
        "stats": stats,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
    }
    os.sync()
    atomic_write_json(layout.root / MANIFEST, manifest)
    (layout.root / BUILDING).unlink()
    return layout.root
