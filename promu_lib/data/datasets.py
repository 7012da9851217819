"""Torch datasets for MNER and MRE: word pieces, the post image and its object crops.

Everything that does not change between epochs is computed once at construction: the word
pieces of every post and (``cache_images=True``) the resized image and crop pixels of the
split, kept as uint8 and normalised on the fly, so epochs never decode a JPEG again.

Batches follow the shared contract (``collate``): ``input_ids``, ``attention_mask``, ``image``
(B, 3, S, S), ``objects`` (B, m, 3, S, S), ``object_mask`` (B, m), ``boxes`` (B, m, 4), ``ids``;
MNER adds ``word_starts``/``word_mask``/``tags`` (B, W); MRE adds ``head_start``/``tail_start``/
``label`` (B,). Each item also carries ``index`` (its position in ``dataset.posts``), which the
evaluation uses to find the full gold labels.

Fixes over the reference processor (HVPNeT ``processor/dataset.py``): the closing marker of an
entity that ends at the last token is inserted; overlapping head/tail spans get consistently
nested markers; truncation keeps both entities and all four markers instead of crashing; MNER
labels stay aligned when words are cut off; a missing image is an error or a counted blank,
never a silent placeholder.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from promu_lib.config import Config
from promu_lib.data import pixel_cache
from promu_lib.data.formats import read_boxes, read_mnre, read_twitter
from promu_lib.data.images import ImageLoader, clip_box, crop, load_image, safe_join
from promu_lib.data.layout import DataLayout
from promu_lib.data.pixel_cache import Visual
from promu_lib.data.records import MNRE_REL2ID, NER_TAG2ID, RE_MARKERS, Box, NerPost, RePost
from promu_lib.errors import DataError, MissingAssetError
from promu_lib.progress import iterate

log = logging.getLogger(__name__)
_warned: set[tuple] = set()


def _warn_once(message: str, *args: object) -> None:
    if (message, *args) not in _warned:
        _warned.add((message, *args))
        log.warning(message, *args)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_MODES = ("true", "blank", "shuffled")  # robustness study: real, no image, another post's
IMAGE_TRANSFORMS = ("resize", "resize-crop")
OBJECTS = ("boxes", "crops")  # data.objects: crops cut at detector boxes, or crop image files

# =============================================================================================
# Text
# =============================================================================================


def post_id(post: NerPost | RePost, index: int) -> str:
    """A readable unique id: the image id and the source line (MNRE has many lines per image)."""
    return f"{post.img_id}@L{post.line}" if post.line else f"{post.img_id}@{index}"


def _clip_pieces(ids: list[int], max_len: int) -> list[int]:
    """Keep ``[CLS]``, the first ``max_len - 2`` pieces and ``[SEP]``."""
    return ids if len(ids) <= max_len else ids[: max_len - 1] + ids[-1:]


def _first_pieces(word_ids: Sequence[int | None]) -> dict[int, int]:
    first: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in first:
            first[w] = pos
    return first


@dataclass
class _Encoded:
    input_ids: list[int]
    starts: list[int]  # per word: index of its first piece in input_ids; -1 if cut off
    truncated: bool
    empty_words: int  # words that gave no piece (tokenised as [UNK] instead)


def encode_words(
    tokenizer: PreTrainedTokenizerBase,
    words: Sequence[str],
    max_len: int | None,
    pieces: tuple[list[int], list[int | None]] | None = None,
) -> _Encoded:
    """Word pieces of pre-split ``words``, at most ``max_len`` with ``[CLS]``/``[SEP]``.

    A word that yields no piece (a lone ``\\xa0``, a stripped combining mark) is tokenised as
    ``[UNK]`` so that every word keeps a first piece. ``pieces`` = ``(input_ids, word_ids)``
    when already computed in a batch call.
    """
    if pieces is None:
        enc = tokenizer(list(words), is_split_into_words=True)
        pieces = (enc["input_ids"], enc.word_ids())
    ids, first = list(pieces[0]), _first_pieces(pieces[1])
    empty = len(words) - len(first)
    if empty:
        words = [w if i in first else tokenizer.unk_token for i, w in enumerate(words)]
        enc = tokenizer(list(words), is_split_into_words=True)
        ids, first = list(enc["input_ids"]), _first_pieces(enc.word_ids())
    clipped = ids if max_len is None else _clip_pieces(ids, max_len)
    starts = [first[i] if first[i] < len(clipped) - 1 else -1 for i in range(len(words))]
    return _Encoded(clipped, starts, len(clipped) < len(ids), empty)


def insert_markers(
    tokens: Sequence[str], head: tuple[int, int], tail: tuple[int, int]
) -> tuple[list[str], list[int]]:
    """``tokens`` with ``<s> … </s>`` around ``head`` and ``<o> … </o>`` around ``tail``, and
    the positions of ``<s>, </s>, <o>, </o>`` in the result.

    Spans are ``[start, end)``. At each boundary closing markers come before opening ones; two
    markers at one boundary nest (the longer span opens first, the span opened later closes
    first), so overlapping and identical spans give a well-defined sequence. An entity ending
    at the last token gets its closing marker (the reference drops it).
    """
    n = len(tokens)
    for name, (a, b) in (("head", head), ("tail", tail)):
        if not 0 <= a < b <= n:
            raise ValueError(f"{name} span [{a}, {b}) is not inside a {n}-token sentence")
    # (boundary, closing first, nesting key, marker index into RE_MARKERS)
    events = [
        (head[0], 1, (-head[1], 0), 0),
        (head[1], 0, (-head[0], 1), 1),
        (tail[0], 1, (-tail[1], 1), 2),
        (tail[1], 0, (-tail[0], 0), 3),
    ]
    at: dict[int, list[int]] = {}
    for *_, m in sorted(events):
        at.setdefault(events[m][0], []).append(m)
    out: list[str] = []
    pos = [0] * 4
    for i in range(n + 1):
        for m in at.get(i, ()):
            pos[m] = len(out)
            out.append(RE_MARKERS[m])
        if i < n:
            out.append(tokens[i])
    return out, pos


def _keep_positions(n: int, budget: int, spans: list[tuple[int, int]]) -> list[int]:
    """Which of ``n`` body pieces to keep (at most ``budget``), keeping both marked spans.

    If the stretch from the first to the last marker fits, the kept pieces are one window
    centred on it; otherwise the marker-to-marker spans themselves come first, then the
    pieces nearest to them.
    """
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)  # hi inclusive
    if hi - lo + 1 <= budget:
        start = lo - (budget - (hi - lo + 1)) // 2
        start = max(0, min(start, n - budget))
        return list(range(start, start + budget))

    def distance(p: int) -> int:
        return min(0 if a <= p <= b else min(abs(p - a), abs(p - b)) for a, b in spans)

    markers = {p for span in spans for p in span}
    rest = sorted((p for p in range(n) if p not in markers), key=lambda p: (distance(p), p))
    return sorted([*markers, *rest[: budget - len(markers)]])


def encode_re(
    tokenizer: PreTrainedTokenizerBase, post: RePost, max_len: int
) -> tuple[list[int], int, int, bool]:
    """``(input_ids, head_start, tail_start, truncated)`` with the markers inserted.

    ``head_start``/``tail_start`` index ``<s>``/``<o>`` in ``input_ids``. Truncation keeps all
    four markers (see :func:`_keep_positions`).
    """
    if max_len < 6:
        raise ValueError(f"data.max_len={max_len} cannot hold [CLS], 4 markers and [SEP]")
    head, tail = (post.head.start, post.head.end), (post.tail.start, post.tail.end)
    words, marker_words = insert_markers(post.tokens, head, tail)
    enc = encode_words(tokenizer, words, None)
    ids = enc.input_ids
    pos = [enc.starts[w] for w in marker_words]  # <s>, </s>, <o>, </o>
    truncated = len(ids) > max_len
    if truncated:
        body = ids[1:-1]
        spans = [(pos[0] - 1, pos[1] - 1), (pos[2] - 1, pos[3] - 1)]
        keep = _keep_positions(len(body), max_len - 2, spans)
        new_index = {p: i + 1 for i, p in enumerate(keep)}
        ids = [ids[0], *(body[p] for p in keep), ids[-1]]
        pos = [new_index[p - 1] for p in pos]
    return ids, pos[0], pos[2], truncated


# =============================================================================================
# Images
# =============================================================================================


def to_pixels(image: Image.Image, size: int, transform: str = "resize") -> torch.Tensor:
    """uint8 (3, size, size): a plain resize, or ``resize-crop`` = the reference's Resize 256 ->
    CenterCrop 224, scaled to ``size`` (shorter side to size*256/224, then a centre crop)."""
    if transform == "resize":
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    elif transform == "resize-crop":
        image = TF.center_crop(TF.resize(image, round(size * 256 / 224)), [size, size])
    else:
        raise ValueError(f"image transform {transform!r}; expected one of {IMAGE_TRANSFORMS}")
    return TF.pil_to_tensor(image)


def transform_boxes(
    boxes: torch.Tensor, width: int, height: int, size: int, transform: str = "resize"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of a ``width`` x ``height`` image in the pixels :func:`to_pixels` makes of it.

    boxes (..., 4) normalised (x1, y1, x2, y2) in the original image -> the same objects,
    normalised in the transformed image and clipped to it, and (...) bool: whether a box keeps
    any area (``resize-crop`` can cut an object off entirely). ``resize`` changes nothing.
    """
    if transform not in IMAGE_TRANSFORMS:
        raise ValueError(f"image transform {transform!r}; expected one of {IMAGE_TRANSFORMS}")
    out = boxes.clone().float()
    if transform == "resize-crop":  # the arithmetic of TF.resize(int) then TF.center_crop
        short_side = round(size * 256 / 224)
        if width <= height:
            new_w, new_h = short_side, int(short_side * height / width)
        else:
            new_w, new_h = int(short_side * width / height), short_side
        left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)
        out[..., 0::2] = ((out[..., 0::2] * new_w - left) / size).clamp(0.0, 1.0)
        out[..., 1::2] = ((out[..., 1::2] * new_h - top) / size).clamp(0.0, 1.0)
    keeps_area = (out[..., 2] > out[..., 0]) & (out[..., 3] > out[..., 1])
    return out, keeps_area


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, S, S) -> float, ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


@dataclass
class ImageSource:
    """Where a split's images and detector boxes are, and how to make pixels of them."""

    image_dir: Path
    boxes: Mapping[str, Sequence[Box]]
    size: int
    max_objects: int
    transform: str = "resize"
    suffix: str = ""  # appended to the image id to get the file name (Twitter: ".jpg")
    on_missing: str = "error"
    on_bad_box: str = "error"
    source: Path | None = None  # the data file that names the images (for error messages)
    boxes_path: Path | None = None
    # data.objects="crops": each image's object crop files (the crops index), used instead of
    # ``boxes``: the first ``max_objects`` in the index's order, no positions (boxes stay zero)
    crops: Mapping[str, Sequence[Path]] | None = None
    crops_path: Path | None = None
    bad_boxes: int = 0  # bad boxes, or unreadable crop files, skipped (on_bad_box="skip")
    loader: ImageLoader = field(init=False)

    def __post_init__(self) -> None:
        self.loader = ImageLoader(on_missing=self.on_missing, blank_size=(self.size, self.size))

    @property
    def n_missing(self) -> int:
        return self.loader.n_blank

    def visual(self, img_id: str, line: int | None = None) -> Visual:
        path = safe_join(self.image_dir, img_id + self.suffix, self.source, line)
        try:
            image = self.loader(path)
        except DataError as e:  # name the line that refers to the image too
            if self.source is None:
                raise
            raise DataError(self.source, f"image {path}: {e.problem}", e.expected, line) from e
        m, size = self.max_objects, self.size
        if str(path) in self.loader.blanks:  # missing and on_missing="blank": counted there
            return Visual.blank(size, m)
        out = Visual.blank(size, m)
        out.image, out.present = to_pixels(image, size, self.transform), True
        if self.crops is not None:
            return self._crop_files(out, img_id)
        boxes = sorted(self.boxes.get(img_id, ()), key=lambda b: -b.score)  # stable on ties
        w, h = image.size
        k = 0
        for box in boxes:
            if k == m:
                break
            try:
                b = clip_box(box, w, h, self.boxes_path)
            except DataError as e:
                if self.on_bad_box == "error":  # name the image (and the boxes file)
                    if self.boxes_path is None:
                        raise DataError(f"image {img_id!r}", e.problem, e.expected) from e
                    raise DataError(
                        self.boxes_path, f"image {img_id!r}: {e.problem}", e.expected
                    ) from e
                self.bad_boxes += 1
                continue
            out.objects[k] = to_pixels(crop(image, b), size, self.transform)
            out.object_mask[k] = True
            out.boxes[k] = torch.tensor([b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h])
            k += 1
        return out

    def _crop_files(self, out: Visual, img_id: str) -> Visual:
        """``out`` with the image's crop files as its objects (same transform as the image)."""
        assert self.crops is not None
        k = 0
        for path in self.crops.get(img_id, ()):
            if k == self.max_objects:
                break
            try:
                crop_image = load_image(path)
            except DataError as e:
                if self.on_bad_box == "error":
                    where = self.crops_path if self.crops_path is not None else f"image {img_id!r}"
                    raise DataError(
                        where, f"image {img_id!r}: crop {path}: {e.problem}", e.expected
                    ) from e
                self.bad_boxes += 1
                continue
            out.objects[k] = to_pixels(crop_image, self.size, self.transform)
            out.object_mask[k] = True
            k += 1
        return out


# =============================================================================================
# Datasets
# =============================================================================================


class PostDataset(Dataset):
    """Posts of one split, encoded once; images cached as uint8 or loaded per item.

    ``image_mode``: ``"true"`` (the post's image), ``"blank"`` (zeros, no objects) or
    ``"shuffled"`` (the image of another post: a fixed derangement drawn from ``seed``).
    ``images=None`` gives text-only batches (no image keys).
    """

    task: str = ""

    def __init__(
        self,
        posts: Sequence[NerPost | RePost],
        tokenizer: PreTrainedTokenizerBase,
        max_len: int,
        images: ImageSource | None = None,
        *,
        image_mode: str = "true",
        seed: int = 0,
        cache_images: bool = True,
        pixel_cache_dir: Path | None = None,
        progress: bool = True,
        name: str = "",
    ) -> None:
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode {image_mode!r}; expected one of {IMAGE_MODES}")
        if not posts:
            raise ValueError(f"{name or 'dataset'}: no posts")
        self.posts = list(posts)
        self.ids = [post_id(p, i) for i, p in enumerate(self.posts)]
        self.pad_id = int(tokenizer.pad_token_id)
        self.max_len = max_len
        self.images, self.image_mode, self.name = images, image_mode, name
        self.stats: dict[str, int] = {"posts": len(self.posts), "truncated": 0}
        self._encode(tokenizer)
        self.image_of = self._image_order(seed)
        self._cache: list[Visual] | None = None
        if images is not None and image_mode != "blank" and cache_images:
            self._cache = self._decode_all(images, pixel_cache_dir, progress)
        if self.stats["truncated"]:  # also in ``stats``; said once per process, not per job
            _warn_once(
                "%s: %d of %d posts are longer than data.max_len=%d pieces and were truncated",
                name or self.task,
                self.stats["truncated"],
                len(self.posts),
                max_len,
            )
        self._report_images()

    def _decode_all(
        self, images: ImageSource, cache_dir: Path | None, progress: bool
    ) -> list[Visual]:
        """Every post's pixels, read from ``cache_dir`` when an earlier job decoded them."""
        path = None
        if cache_dir is not None:
            key = pixel_cache.cache_key(images, [p.img_id for p in self.posts])
            path = Path(cache_dir) / f"{key}.safetensors"
            cached = pixel_cache.load(path, images) if path.is_file() else None
            if cached is not None:  # the key covers every post's image: same length
                return cached
        desc = f"images {self.name}".strip()
        todo = iterate(self.posts, len(self.posts), desc, lines=4) if progress else self.posts
        visuals = [images.visual(p.img_id, p.line or None) for p in todo]
        if path is not None:
            pixel_cache.save(path, visuals, images)
        return visuals

    def _encode(self, tokenizer: PreTrainedTokenizerBase) -> None:
        raise NotImplementedError

    def _bad_post(self, index: int, problem: str, expected: str) -> DataError:
        """Posts built in code skip the readers' checks: name the post instead of a file."""
        post = self.posts[index]
        return DataError(self.name or f"{self.task} posts", problem, expected, post.line or None)

    def _image_order(self, seed: int) -> list[int]:
        n = len(self.posts)
        if self.image_mode != "shuffled" or n < 2:
            return list(range(n))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        image_of = [0] * n
        for k, i in enumerate(order):  # a cycle through a random order: nobody keeps its own
            image_of[i] = order[(k + 1) % n]
        return image_of

    def _report_images(self) -> None:
        if self.images is None:
            return
        self.stats["missing_images"] = self.images.n_missing
        self.stats["bad_boxes"] = self.images.bad_boxes
        if self.images.n_missing:
            log.warning(
                "%s: %d missing or unreadable images replaced by blanks (data.on_missing_image="
                "'blank'); first: %s",
                self.name or self.task,
                self.images.n_missing,
                next(iter(self.images.loader.blanks)),
            )

    def visual(self, index: int) -> Visual | None:
        if self.images is None:
            return None
        if self.image_mode == "blank":
            return Visual.blank(self.images.size, self.images.max_objects)
        j = self.image_of[index]
        if self._cache is not None:
            return self._cache[j]
        return self.images.visual(self.posts[j].img_id, self.posts[j].line or None)

    def __len__(self) -> int:
        return len(self.posts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"id": self.ids[index], "index": index, **self._text_item(index)}
        v = self.visual(index)
        if v is not None:
            item.update(v.tensors())
        return item

    def _text_item(self, index: int) -> dict[str, Any]:
        raise NotImplementedError


class NerDataset(PostDataset):
    """MNER posts: the first piece of each word carries its tag (Twitter-2015/2017)."""

    task = "ner"

    def _encode(self, tokenizer: PreTrainedTokenizerBase) -> None:
        words = [list(p.tokens) for p in self.posts]
        batch = tokenizer(words, is_split_into_words=True)
        self.input_ids, self.starts, self.tags = [], [], []
        self.stats["dropped_words"] = self.stats["empty_words"] = 0
        for i, post in enumerate(self.posts):
            if not post.tokens or len(post.labels) != len(post.tokens):
                raise self._bad_post(
                    i,
                    f"post {self.ids[i]} has {len(post.tokens)} tokens and {len(post.labels)} labels",
                    "one label per token, at least one token",
                )
            if unknown := sorted(set(post.labels) - set(NER_TAG2ID)):
                raise self._bad_post(
                    i, f"post {self.ids[i]} has labels {unknown}", f"one of {', '.join(NER_TAG2ID)}"
                )
            pieces = (batch["input_ids"][i], batch.word_ids(i))
            enc = encode_words(tokenizer, post.tokens, self.max_len, pieces)
            self.input_ids.append(enc.input_ids)
            self.starts.append(enc.starts)
            self.tags.append([NER_TAG2ID[t] for t in post.labels])
            self.stats["truncated"] += enc.truncated
            self.stats["dropped_words"] += sum(s < 0 for s in enc.starts)
            self.stats["empty_words"] += enc.empty_words

    def _text_item(self, index: int) -> dict[str, Any]:
        starts = torch.tensor(self.starts[index])
        mask = starts >= 0
        return {
            "input_ids": torch.tensor(self.input_ids[index]),
            "word_starts": starts.clamp(min=0),
            "word_mask": mask,
            "tags": torch.tensor(self.tags[index]) * mask,
        }

    def gold(self, index: int) -> list[str]:
        return list(self.posts[index].labels)


class ReDataset(PostDataset):
    """MRE posts with ``<s> head </s>`` and ``<o> tail </o>`` markers (MNRE)."""

    task = "re"

    def _encode(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.input_ids, self.heads, self.tails, self.labels = [], [], [], []
        for i, post in enumerate(self.posts):
            if post.relation not in MNRE_REL2ID:
                raise self._bad_post(
                    i,
                    f"post {self.ids[i]} has relation {post.relation!r}",
                    "one of the 23 relations of MNRE v2",
                )
            ids, h, t, truncated = encode_re(tokenizer, post, self.max_len)
            self.input_ids.append(ids)
            self.heads.append(h)
            self.tails.append(t)
            self.labels.append(MNRE_REL2ID[post.relation])
            self.stats["truncated"] += truncated

    def _text_item(self, index: int) -> dict[str, Any]:
        return {
            "input_ids": torch.tensor(self.input_ids[index]),
            "head_start": self.heads[index],
            "tail_start": self.tails[index],
            "label": self.labels[index],
        }

    def gold(self, index: int) -> str:
        return self.posts[index].relation


def load_split(
    cfg: Config,
    dataset: str,
    split: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    layout: DataLayout | None = None,
    with_images: bool = True,
    image_mode: str = "true",
    seed: int = 0,
    fraction: float = 1.0,
    progress: bool | None = None,
    pixel_cache_dir: Path | None = None,
) -> PostDataset:
    """The dataset of one split as the config describes it.

    ``fraction < 1`` keeps that share of the posts, drawn WITHOUT replacement from ``seed``
    (the reference draws with replacement), in file order. Decoded pixels are cached in
    ``pixel_cache_dir`` (default ``<run.output_dir>/cache/pixels``) when ``data.cache_images``.
    """
    layout = layout or DataLayout.of(cfg)
    d = cfg.data
    path = layout.split_file(dataset, split)
    if not path.is_file():
        raise MissingAssetError(
            f"the {dataset} {split} split",
            [str(path)],
            "Build the toy world first (stage 00, promu_lib.data.toyworld.build_toy_world) or put "
            "the real files there "
            "(see REFERENCE.md, 'Data formats').",
        )
    if dataset == "mnre":
        posts: list = read_mnre(path, on_bad=d.on_bad_record)
    else:
        posts = read_twitter(path, on_bad=d.on_bad_record)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    if fraction < 1.0:
        rng = np.random.default_rng(seed)
        keep = rng.choice(len(posts), size=max(1, round(fraction * len(posts))), replace=False)
        posts = [posts[i] for i in sorted(keep.tolist())]
    images = _image_source(cfg, layout, dataset, split, path, posts) if with_images else None
    cls = ReDataset if dataset == "mnre" else NerDataset
    return cls(
        posts,
        tokenizer,
        d.max_len,
        images,
        image_mode=image_mode,
        seed=seed,
        cache_images=d.cache_images,
        pixel_cache_dir=(pixel_cache_dir or cfg.output_root() / "cache" / "pixels")
        if d.cache_images
        else None,
        progress=cfg.run.progress if progress is None else progress,
        name=f"{dataset}/{split}",
    )


def _image_source(
    cfg: Config,
    layout: DataLayout,
    dataset: str,
    split: str,
    source: Path,
    posts: Sequence[NerPost | RePost] = (),
) -> ImageSource:
    d = cfg.data
    boxes: Mapping[str, Sequence[Box]] = {}
    boxes_path = layout.boxes(dataset)
    crops, crops_path = None, None
    if d.max_objects > 0 and d.objects == "crops":
        crops_path = layout.crops_index(dataset, split)
        crops = _read_crops_index(crops_path, posts, d.max_objects, d.on_bad_record, source)
    elif d.max_objects > 0:
        if not boxes_path.is_file():
            raise MissingAssetError(
                f"the object boxes of {dataset}",
                [str(boxes_path)],
                "Run the label-mining stage (detector boxes), or set data.max_objects=0 to "
                "train without object crops.",
            )
        boxes = read_boxes(boxes_path, on_bad=d.on_bad_record)
    return ImageSource(
        image_dir=layout.image_dir(dataset, split),
        boxes=boxes,
        size=d.image_size,
        max_objects=d.max_objects,
        transform=d.image_transform,
        suffix=layout.image_name(dataset, ""),
        on_missing=d.on_missing_image,
        on_bad_box=d.on_bad_record,
        source=source,
        boxes_path=boxes_path,
        crops=crops,
        crops_path=crops_path,
    )


def _read_crops_index(
    path: Path, posts: Sequence[NerPost | RePost], m: int, on_bad: str, source: Path
) -> dict[str, list[Path]]:
    """The crops index of a split, every crop the posts will use checked to exist: a missing
    one is a DataError naming the index, the image and the split file's line (``on_bad="skip"``
    drops it, counted in the log)."""
    from promu_lib.data.crops import read_crops

    if not path.is_file():
        raise MissingAssetError(
            "the object crops index (data.objects=crops)",
            [str(path)],
            "Write it with `promu data convert-crops` from HVPNeT's crop dict of this split "
            "(README, 'Object crops'), point data.crops_index at it, or set data.objects=boxes.",
        )
    crops = read_crops(path, on_bad=on_bad)
    dropped = 0
    for post in posts:
        names = crops.get(post.img_id)
        if not names:
            continue
        missing = [p for p in names[:m] if not p.is_file()]
        if missing and on_bad == "error":
            raise DataError(
                path,
                f"image {post.img_id!r} (line {post.line} of {source}): crop file {missing[0]} "
                "not found",
                "every crop file the index names (re-run `promu data convert-crops`)",
            )
        if missing:
            dropped += len(missing)
            crops[post.img_id] = [p for p in names if p not in missing]
    if dropped:
        log.warning("%s: %d crop files not found, skipped (data.on_bad_record=skip)", path, dropped)
    return crops


# =============================================================================================
# Batching
# =============================================================================================


def _pad(rows: Sequence[torch.Tensor], value: int | bool) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)


def collate(items: Sequence[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """Pad and stack items into the contract's batch dict."""
    ids = _pad([it["input_ids"] for it in items], pad_id)
    lengths = torch.tensor([len(it["input_ids"]) for it in items])
    batch: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": (torch.arange(ids.shape[1]) < lengths[:, None]).long(),
        "ids": [it["id"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
    }
    first = items[0]
    if "word_starts" in first:
        batch["word_starts"] = _pad([it["word_starts"] for it in items], 0)
        batch["word_mask"] = _pad([it["word_mask"] for it in items], False)
        batch["tags"] = _pad([it["tags"] for it in items], 0)
    if "label" in first:
        for key in ("head_start", "tail_start", "label"):
            batch[key] = torch.tensor([it[key] for it in items])
    if "image" in first:
        # uint8 -> normalised float once per batch; blank images and padded objects are zeros
        present = torch.stack([it["image_present"] for it in items])
        mask = torch.stack([it["object_mask"] for it in items])
        image = normalize(torch.stack([it["image"] for it in items]))
        batch["image"] = image * present.view(-1, 1, 1, 1)
        objects = normalize(torch.stack([it["objects"] for it in items]))
        batch["objects"] = objects * mask[..., None, None, None]
        batch["object_mask"] = mask
        batch["boxes"] = torch.stack([it["boxes"] for it in items])
    return batch


class EpochSampler(Sampler[int]):
    """A fixed order per (seed, epoch): resuming at epoch e replays exactly epoch e's order."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as torch's DataLoader counts)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def capped_workers(num_workers: int) -> int:
    """``num_workers`` data-loading processes, at most :func:`available_cores` (the ``paper``
    profile asks for 4; more workers than cores may freeze the loader), with a note when cut."""
    cores = available_cores()
    if num_workers <= cores:
        return num_workers
    _warn_once("num_workers=%d capped at %d, the cores of this machine", num_workers, cores)
    return cores


def make_loader(
    dataset: PostDataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and ``loader.sampler.set_epoch(e)``;
    ``num_workers`` is capped at the machine's cores (:func:`capped_workers`)."""
    num_workers = capped_workers(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle, seed),
        collate_fn=functools.partial(collate, pad_id=dataset.pad_id),
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
