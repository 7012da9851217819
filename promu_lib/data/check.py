"""``promu data check``: what a data directory holds, what is wrong with it and what is missing.

:func:`check_data` reads every file of the layout (:class:`~promu_lib.data.layout.DataLayout`)
with the validating readers and returns a :class:`DataCheck`: per dataset and split the number
of posts, entities per type (NER) or relations per label (RE), missing images (count, first
names, the directory looked in) and the SHA-256 of each text file. ``report.ok`` is False when
something required is missing or invalid; ``str(report)`` is the text the CLI prints, and
``report.to_dict()`` is plain data for a notebook or a JSON file.

Required: the three split files of each requested dataset, ``ours_rel2id.json`` for MNRE, and
every image a post names when ``data.on_missing_image == "error"``. Optional (reported, never
failing when absent): the caption corpus and the box files.
"""

from __future__ import annotations

import dataclasses
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from promu_lib.data.crops import read_crops
from promu_lib.data.formats import (
    ReadReport,
    count_entities,
    read_boxes,
    read_captions,
    read_mnre,
    read_rel2id,
    read_twitter,
)
from promu_lib.data.images import clip_box, load_image, safe_join
from promu_lib.data.layout import DATASETS, MNRE_ORIGINAL_SPLIT_FILES, SPLITS, DataLayout
from promu_lib.data.records import MNRE_RELATIONS
from promu_lib.errors import DataError
from promu_lib.io import sha256_file

MAX_EXAMPLES = 5  # names listed per kind of problem
_HELP = "see README section 'Use your own data'"
_WHERE_FROM = {
    "twitter2015": "the Twitter-2015 files train.txt/valid.txt/test.txt from the UMT/HVPNeT release",
    "twitter2017": "the Twitter-2017 files train.txt/valid.txt/test.txt from the UMT/HVPNeT release",
    "mnre": "the MNRE-v2 files ours_train.txt/ours_val.txt/ours_test.txt (original names "
    + "/".join(repr(n) for n in MNRE_ORIGINAL_SPLIT_FILES.values())
    + ") from thecharm/MNRE",
}


@dataclass
class SplitCheck:
    """One split file of one dataset."""

    dataset: str
    split: str
    path: Path
    found: bool = False
    sha256: str | None = None
    n_posts: int = 0
    labels: dict[str, int] = field(default_factory=dict)  # entities per type / relations
    b_tags: dict[str, int] = field(default_factory=dict)  # NER: B- tags per type (papers' counts)
    image_dir: Path | None = None
    n_images: int = 0  # distinct images named by the posts
    n_images_missing: int = 0
    missing_images: list[str] = field(default_factory=list)  # first MAX_EXAMPLES
    n_images_unreadable: int = 0  # only with verify_images
    unreadable_images: list[str] = field(default_factory=list)  # "name: problem"
    notes: dict[str, int] = field(default_factory=dict)  # tolerated oddities (ReadReport.notes)
    error: str | None = None


@dataclass
class FileCheck:
    """A file other than a split: rel2id, the caption corpus, a boxes file, a crops index."""

    kind: str  # "rel2id" | "captions" | "boxes" | "crops"
    name: str  # dataset the file belongs to ("pretrain" for captions; crops: "<dataset>/<split>")
    path: Path
    required: bool
    found: bool = False
    sha256: str | None = None
    summary: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # first missing images / bad boxes
    error: str | None = None


@dataclass
class DataCheck:
    """The result of :func:`check_data`; ``ok`` is False when ``problems`` is not empty."""

    root: Path
    on_missing_image: str
    splits: list[SplitCheck] = field(default_factory=list)
    files: list[FileCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each one makes the check fail
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self)) | {"ok": self.ok}

    def __str__(self) -> str:
        return render(self)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


# ---------------------------------------------------------------------------------------------


def check_data(
    layout: DataLayout,
    datasets: tuple[str, ...] = DATASETS,
    verify_images: bool = False,
    on_missing_image: str | None = None,
    captions: bool = True,
) -> DataCheck:
    """Check ``layout.root``. Every box is checked against its image's size (read from the
    image's header); ``verify_images`` also decodes every image (slower), otherwise images are
    only looked up."""
    policy = on_missing_image or layout.data.on_missing_image
    report = DataCheck(root=layout.root, on_missing_image=policy)
    rel2id = None
    if "mnre" in datasets:
        rel2id = _check_rel2id(layout, report)
    for dataset in datasets:
        posts_by_split = {}
        for split in SPLITS:
            sc, posts = _check_split(layout, dataset, split, rel2id, verify_images)
            report.splits.append(sc)
            posts_by_split[split] = posts
            if not sc.found:
                rel = _rel(sc.path, layout.root)
                report.problems.append(
                    f"{rel} not found under {layout.root}; expected {_WHERE_FROM[dataset]} — {_HELP}"
                )
            elif sc.error:
                report.problems.append(sc.error)
            elif sc.n_images_missing or sc.n_images_unreadable:
                msg = _image_problem(sc)
                if policy == "error":
                    report.problems.append(msg + "; data.on_missing_image='error'")
                else:
                    report.warnings.append(
                        msg + f"; they will be blank (on_missing_image={policy!r})"
                    )
        _check_boxes(layout, dataset, posts_by_split, verify_images, report)
        for split, posts in posts_by_split.items():
            _check_crops(layout, dataset, split, posts, report)
    if captions:  # False: a directory of one dataset (promu_lib.data.dataset_dir)
        _check_captions(layout, verify_images, report)
    return report


def _image_problem(sc: SplitCheck) -> str:
    head = f"{sc.dataset} {sc.split}: "
    if not sc.image_dir.is_dir():
        return head + f"image directory {sc.image_dir} does not exist ({sc.n_images} images needed)"
    parts = [
        f"{n} of {sc.n_images} images {what}"
        for n, what in ((sc.n_images_missing, "missing"), (sc.n_images_unreadable, "unreadable"))
        if n
    ]
    examples = ", ".join(sc.missing_images + sc.unreadable_images)
    return head + f"{' and '.join(parts)} in {sc.image_dir} (e.g. {examples})"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _read_file(fc: FileCheck, read: Callable[[Path], Any], report: DataCheck) -> Any:
    """``read(fc.path)`` of a file that exists, its checksum recorded; None (and the error in
    ``fc`` and the report's problems) when it does not parse."""
    fc.found, fc.sha256 = True, sha256_file(fc.path)
    try:
        return read(fc.path)
    except DataError as e:
        fc.error = str(e)
        report.problems.append(fc.error)
        return None


def _check_rel2id(layout: DataLayout, report: DataCheck) -> dict[str, int] | None:
    fc = FileCheck("rel2id", "mnre", layout.rel2id(), required=True)
    report.files.append(fc)
    if not fc.path.is_file():
        report.problems.append(
            f"{_rel(fc.path, layout.root)} not found under {layout.root}; expected the one-line "
            f"ours_rel2id.json of MNRE v2 (23 relations, None = 0) — {_HELP}"
        )
        return None
    rel2id = _read_file(fc, read_rel2id, report)
    if rel2id is None:
        return None
    fc.summary = {"relations": len(rel2id)}
    return rel2id


def _check_split(layout, dataset, split, rel2id, verify_images):
    path = layout.split_file(dataset, split)
    sc = SplitCheck(dataset, split, path, image_dir=layout.image_dir(dataset, split))
    if not path.is_file():
        return sc, []
    sc.found, sc.sha256 = True, sha256_file(path)
    rr = ReadReport()
    try:
        if dataset == "mnre":
            posts = read_mnre(path, rel2id, report=rr)
            order = {r: i for i, r in enumerate(MNRE_RELATIONS)}
            counts = Counter(p.relation for p in posts)
            sc.labels = dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order))))
        else:
            posts = read_twitter(path, report=rr)
            sc.labels = dict(count_entities(posts))
            sc.b_tags = dict(count_b_tags(posts))
    except DataError as e:
        sc.error = str(e)
        return sc, []
    sc.n_posts, sc.notes = len(posts), dict(rr.notes)
    names = {}
    for p in posts:
        names.setdefault(layout.image_name(dataset, p.img_id), p.line)
    sc.n_images = len(names)
    for name, line in names.items():
        try:
            file = safe_join(sc.image_dir, name, source=path, line=line)
        except DataError as e:
            sc.error = str(e)
            return sc, posts
        if not file.is_file():
            sc.n_images_missing += 1
            if len(sc.missing_images) < MAX_EXAMPLES:
                sc.missing_images.append(name)
        elif verify_images:
            try:
                load_image(file)
            except DataError as e:
                sc.n_images_unreadable += 1
                if len(sc.unreadable_images) < MAX_EXAMPLES:
                    sc.unreadable_images.append(f"{name}: {e.problem}")
    return sc, posts


def _check_boxes(layout, dataset, posts_by_split, verify_images, report) -> None:
    fc = FileCheck("boxes", dataset, layout.boxes(dataset), required=False)
    report.files.append(fc)
    if not fc.path.is_file():
        return
    boxes = _read_file(fc, read_boxes, report)
    if boxes is None:
        return
    posts = [(split, p) for split, ps in posts_by_split.items() for p in ps]
    without = {p.img_id for _, p in posts} - set(boxes)
    fc.summary = {
        "images": len(boxes),
        "boxes": sum(map(len, boxes.values())),
        "posts_without_entry": sum(p.img_id in without for _, p in posts),
    }
    outside = 0
    for split, img_id in dict.fromkeys((split, p.img_id) for split, p in posts):
        file = layout.image_dir(dataset, split) / layout.image_name(dataset, img_id)
        size = _image_size(file) if img_id in boxes else None
        for j, b in enumerate(boxes[img_id] if size else ()):
            try:
                clip_box(b, *size, source=fc.path)
            except DataError as e:
                outside += 1
                if len(fc.examples) < MAX_EXAMPLES:
                    fc.examples.append(f"image {img_id!r} box {j}: {e.problem}")
    if verify_images or outside:
        fc.summary["boxes_outside_image"] = outside
        if outside:
            report.problems.append(
                f"{fc.path}: {outside} box(es) lie outside their image "
                f"(e.g. {'; '.join(fc.examples)}); expected boxes in pixel coordinates of the image"
            )


def _check_crops(layout, dataset, split, posts, report) -> None:
    """The crops index of a split (``data.crops_index``): required with ``data.objects=crops``,
    else reported only when present. Every crop file it lists for the split's posts must exist."""
    d = layout.data
    required = d.objects == "crops" and d.max_objects > 0
    fc = FileCheck("crops", f"{dataset}/{split}", layout.crops_index(dataset, split), required)
    if not (required or fc.path.is_file()):
        return
    report.files.append(fc)
    if not fc.path.is_file():
        report.problems.append(
            f"{fc.path} not found (data.objects=crops); expected the crops index that `promu data "
            "convert-crops` writes from HVPNeT's crop dict of this split (README, 'Object crops')"
        )
        return
    crops = _read_file(fc, read_crops, report)
    if crops is None:
        return
    used = {p.img_id: crops[p.img_id] for p in posts if crops.get(p.img_id)}
    missing = [str(f) for files in used.values() for f in files if not f.is_file()]
    fc.summary = {
        "images": len(crops),
        "crops": sum(map(len, crops.values())),
        "posts_with_crops": sum(p.img_id in used for p in posts),
        "missing_files": len(missing),
    }
    fc.examples = missing[:MAX_EXAMPLES]
    if missing:
        msg = (
            f"{fc.path}: {len(missing)} crop file(s) it lists are missing (e.g. "
            f"{', '.join(fc.examples)}); expected every crop file (re-run convert-crops)"
        )
        (report.problems if required else report.warnings).append(msg)


def _image_size(file: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header; None when it is missing or unreadable (its
    split's check reports that, with --verify-images)."""
    if not file.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                return im.size
    except Exception:  # not an image, a bomb, truncated: PIL raises many types (see load_image)
        return None


def _check_captions(layout, verify_images, report) -> None:
    fc = FileCheck("captions", "pretrain", layout.captions(), required=False)
    report.files.append(fc)
    if not fc.path.is_file():
        report.warnings.append(
            f"{_rel(fc.path, layout.root)} not found under {layout.root} (optional: the "
            "pre-training caption corpus, JSON lines {id, caption, image, matched})"
        )
        return
    pairs = _read_file(fc, read_captions, report)
    if pairs is None:
        return
    image_dir = layout.caption_image_dir()
    missing = 0
    for name in sorted({p.image for p in pairs}):
        file = safe_join(image_dir, name, source=fc.path)
        problem = None if file.is_file() else "not found"
        if problem is None and verify_images:
            try:
                load_image(file)
            except DataError as e:
                problem = e.problem
        if problem is not None:
            missing += 1
            if len(fc.examples) < MAX_EXAMPLES:
                fc.examples.append(f"{name}: {problem}")
    fc.summary = {
        "pairs": len(pairs),
        "matched": sum(p.matched for p in pairs),
        "images_missing_or_unreadable": missing,
    }
    if missing:
        msg = f"{fc.path}: {missing} caption image(s) missing or unreadable in {image_dir} (e.g. {', '.join(fc.examples)})"
        (report.problems if report.on_missing_image == "error" else report.warnings).append(msg)


# ---------------------------------------------------------------------------------------------


def render(report: DataCheck) -> str:
    """The readable text of a :class:`DataCheck`."""
    out = [f"Data check of {report.root} (on_missing_image={report.on_missing_image!r})"]
    for dataset in dict.fromkeys(s.dataset for s in report.splits):
        out.append(f"\n{dataset}")
        for f in report.files:
            if f.kind == "rel2id" and f.name == dataset:
                out.append(_file_line(f, report.root))
        for s in (s for s in report.splits if s.dataset == dataset):
            out.extend(_split_lines(s, report.root))
        for f in report.files:
            if (f.kind == "boxes" and f.name == dataset) or (
                f.kind == "crops" and f.name.startswith(f"{dataset}/")
            ):
                out.append(_file_line(f, report.root))
    captions = [_file_line(f, report.root) for f in report.files if f.kind == "captions"]
    if captions:
        out.extend(["\npre-training", *captions])
    if report.warnings:
        out.append(f"\nWARNINGS ({len(report.warnings)})")
        out.extend(f"  - {w}" for w in report.warnings)
    if report.problems:
        out.append(f"\nPROBLEMS ({len(report.problems)})")
        out.extend(f"  - {p}" for p in report.problems)
    out.append(f"\nRESULT: {'OK' if report.ok else 'FAILED'}")
    return "\n".join(out)


def _split_lines(s: SplitCheck, root: Path) -> list[str]:
    head = f"  {s.split:<5} {_rel(s.path, root)}"
    if not s.found:
        return [f"{head}  NOT FOUND"]
    if s.error:
        return [f"{head}  INVALID (sha256 {s.sha256[:12]})"]
    unit = "records" if s.dataset == "mnre" else "posts"
    lines = [
        f"{head}  {s.n_posts} {unit}, images {s.n_images - s.n_images_missing}/{s.n_images} "
        f"found in {_rel(s.image_dir, root)}, sha256 {s.sha256[:12]}"
    ]
    if s.dataset == "mnre":
        lines += _count_lines("relations", s.labels)
    else:
        lines += _count_lines("entities as seqeval reads them", s.labels)  # I- w/o B-: one
        lines += _count_lines("B- tags (what the papers count)", s.b_tags)
    if s.notes:
        lines.append("        tolerated: " + ", ".join(f"{k} x{v}" for k, v in s.notes.items()))
    return lines


def _count_lines(what: str, counts: dict[str, int]) -> list[str]:
    """``what: A 3, B 1, total 4`` wrapped at 96 columns, each "name count" kept together."""
    labels = ", ".join(f"{k}\xa0{v}" for k, v in [*counts.items(), ("total", sum(counts.values()))])
    wrapped = textwrap.wrap(
        f"{what}: {labels}", 96, initial_indent=" " * 8, subsequent_indent=" " * 10
    )
    return [w.replace("\xa0", " ") for w in wrapped]


def count_b_tags(posts) -> Counter:
    """``B-`` tags per entity type: the entity counts the papers publish (an ``I-`` without its
    ``B-`` counts as no entity here, as one in seqeval's :func:`count_entities`)."""
    counts: Counter = Counter({t: 0 for t in count_entities([])})
    for post in posts:
        counts.update(lab[2:] for lab in post.labels if lab.startswith("B-"))
    return counts


def _file_line(f: FileCheck, root: Path) -> str:
    head = f"  {f.kind:<8} {_rel(f.path, root)}"
    if not f.found:
        return f"{head}  {'NOT FOUND' if f.required else 'absent (optional)'}"
    if f.error:
        return f"{head}  INVALID (sha256 {f.sha256[:12]})"
    summary = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in f.summary.items())
    return f"{head}  {summary}, sha256 {f.sha256[:12]}"
