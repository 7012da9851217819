"""``promu data detect``: run a detector over every image of a dataset and write its boxes file.

The output is ``boxes/<dataset>.json`` in the project's own format (``{img_id: [[x1, y1, x2, y2,
score, class], ...]}`` in pixels, best first: :func:`promu_lib.data.formats.write_boxes`), the
file the fine-tuning datasets crop their objects from (``data.objects=boxes``).

How a run goes:

- The images are those the split files refer to (train, dev, test), each image once, keyed as
  the datasets look them up (Twitter: the ``IMGID``; MNRE: the ``img_id`` file name), in sorted
  key order. A missing or unreadable image is a :class:`DataError` naming the file and the
  split file's line that refers to it (``data.on_missing_image=blank``: skipped and counted).
- The images are cut into shards of ``detect.shard_size`` and each shard into batches of
  ``detect.batch_size``. Each finished shard is written at once, atomically, to
  ``<out>.parts/shard-NNNNN.json``; a killed run keeps them and the next run starts at the first
  shard not written. The boxes file itself is written once, atomically, from the shards, and
  the partial files are then removed: a boxes file is never half-written.
- The same images, settings and weights give the same file: the order, the shards and the
  batches are fixed, and a resumed run detects exactly the batches the killed one did not.
  ``<out>.parts/manifest.json`` records what the shards were made with; partial files made
  with anything else are discarded, never mixed in.
- It reports how many images got 0, 1, 2 or 3+ boxes, and draws a grid of sample images with
  their boxes (:func:`draw_grid`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from promu_lib.data.formats import box_problem, read_mnre, read_twitter, write_boxes
from promu_lib.data.images import load_image, safe_join
from promu_lib.data.layout import SPLITS, DataLayout
from promu_lib.data.records import Box
from promu_lib.errors import DataError, MissingAssetError
from promu_lib.io import atomic_write_json
from promu_lib.progress import bar_class, bars_enabled, log_stream

MANIFEST = "manifest.json"


class Detector(Protocol):
    """What :func:`detect_dataset` calls (``promu_lib.detect.Detector``, restated here: the data
    modules import no model): boxes per image, ``keys`` naming the images."""

    def detect(
        self, images: list[Image.Image], keys: list[str] | None = None
    ) -> list[list[Box]]: ...


@dataclass(frozen=True)
class ImageRef:
    """One image of a dataset: its key in the boxes file, its file, and a line that names it."""

    key: str
    path: Path
    source: Path  # the split file
    line: int | None


@dataclass
class DetectSummary:
    """What :func:`detect_dataset` wrote."""

    dataset: str
    out: Path
    images: int = 0
    boxes: int = 0
    histogram: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HIST_BINS, 0))
    skipped_images: list[str] = field(default_factory=list)  # on_missing="blank"
    resumed_shards: int = 0
    shards: int = 0
    seconds: float = 0.0
    grid: Path | None = None

    def lines(self) -> list[str]:
        h = ", ".join(f"{k} box{'es' if k != '1' else ''}: {v}" for k, v in self.histogram.items())
        rate = self.images / self.seconds if self.seconds > 0 else float("nan")
        out = [
            f"{self.dataset}: wrote {self.out}: {self.images} images, {self.boxes} boxes "
            f"({self.seconds:.1f} s, {rate:.1f} images/s)",
            f"  images with {h}",
        ]
        if self.resumed_shards:
            out.append(f"  resumed: {self.resumed_shards} of {self.shards} shards read back")
        if self.skipped_images:
            out.append(
                f"  {len(self.skipped_images)} missing or unreadable images skipped "
                f"(data.on_missing_image=blank), e.g. {self.skipped_images[0]}"
            )
        if self.grid is not None:
            out.append(f"  sample grid: {self.grid}")
        return out


HIST_BINS = ("0", "1", "2", "3+")


def histogram(counts: Sequence[int]) -> dict[str, int]:
    """How many images got 0, 1, 2 and 3 or more boxes."""
    out = dict.fromkeys(HIST_BINS, 0)
    for n in counts:
        out[HIST_BINS[min(n, 3)]] += 1
    return out


def dataset_images(layout: DataLayout, dataset: str, on_bad: str = "error") -> list[ImageRef]:
    """Every image the split files of ``dataset`` refer to, once, in sorted key order; the
    first line that names an image is the one its errors cite. MissingAssetError when no split
    file exists."""
    refs: dict[str, ImageRef] = {}
    found = []
    for split in SPLITS:
        path = layout.split_file(dataset, split)
        if not path.is_file():
            continue
        found.append(path)
        posts = (
            read_mnre(path, on_bad=on_bad)
            if dataset == "mnre"
            else read_twitter(path, on_bad=on_bad)
        )
        image_dir = layout.image_dir(dataset, split)
        for post in posts:
            if post.img_id in refs:
                continue
            name = layout.image_name(dataset, post.img_id)
            file = safe_join(image_dir, name, path, post.line or None)
            refs[post.img_id] = ImageRef(post.img_id, file, path, post.line or None)
    if not found:
        raise MissingAssetError(
            f"the {dataset} split files",
            [str(layout.split_file(dataset, s)) for s in SPLITS],
            "Point the data section of the config at the dataset (`promu data check` shows "
            "where it looks), or leave it out with --dataset.",
        )
    return [refs[k] for k in sorted(refs)]


def _fingerprint(refs: Sequence[ImageRef], settings: dict) -> str:
    """What the shards depend on: the images (key, file name, size, mtime) and the settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for ref in refs:
        try:
            st = ref.path.stat()
            h.update(json.dumps([ref.key, str(ref.path), st.st_size, st.st_mtime_ns]).encode())
        except OSError:
            h.update(json.dumps([ref.key, str(ref.path), None]).encode())
    return h.hexdigest()[:20]


def _load(ref: ImageRef, on_missing: str) -> Image.Image | None:
    try:
        return load_image(ref.path)
    except DataError as e:
        if on_missing == "blank":
            return None
        raise DataError(ref.source, f"image {ref.path}: {e.problem}", e.expected, ref.line) from e


class _Bar:
    """A tqdm bar counting images (tqdm shows images/s), or a log line every ~10%."""

    def __init__(self, total: int, desc: str, initial: int, enabled: bool) -> None:
        self.total, self.desc, self.n = total, desc, initial
        self.start, self.start_n = time.perf_counter(), initial
        self.bar = None
        if enabled and bars_enabled():
            self.bar = bar_class()(
                total=total, initial=initial, desc=desc, unit="img", dynamic_ncols=True
            )
        self.log, self.every = enabled and self.bar is None, max(1, math.ceil(total / 10))

    def update(self, n: int) -> None:
        before, self.n = self.n, self.n + n
        if self.bar is not None:
            self.bar.update(n)
        elif self.log and (self.n // self.every > before // self.every or self.n == self.total):
            dt = time.perf_counter() - self.start
            rate = (self.n - self.start_n) / dt if dt > 0 else float("nan")
            print(
                f"[promu] {self.desc} {self.n}/{self.total} images ({rate:.1f} images/s)",
                file=log_stream(),
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def detect_dataset(
    layout: DataLayout,
    dataset: str,
    detector: Detector,
    out: str | Path,
    *,
    settings: dict | None = None,
    batch_size: int = 16,
    shard_size: int = 512,
    max_det: int | None = None,
    on_missing: str = "error",
    on_bad: str = "error",
    grid: str | Path | None = None,
    grid_images: int = 16,
    progress: bool = True,
) -> DetectSummary:
    """Detect objects in every image of ``dataset`` and write ``out`` (see the module
    docstring). ``settings`` (the detector, its weights and thresholds) go into the
    fingerprint of the partial files; ``max_det`` keeps the best boxes of each image."""
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    clock = time.perf_counter()
    out = Path(out)
    refs = dataset_images(layout, dataset, on_bad)
    parts = out.with_name(out.name + ".parts")
    manifest = {
        "fingerprint": _fingerprint(refs, settings or {}),
        "images": len(refs),
        "shard_size": shard_size,
        "batch_size": batch_size,
        "max_det": max_det,
    }
    _prepare_parts(parts, manifest)
    shards = [refs[i : i + shard_size] for i in range(0, len(refs), shard_size)]
    summary = DetectSummary(dataset, out, shards=len(shards))
    done = [_shard_file(parts, k).is_file() for k in range(len(shards))]
    summary.resumed_shards = sum(done)
    initial = sum(len(s) for s, d in zip(shards, done) if d)
    bar = _Bar(len(refs), f"detect {dataset}", initial, progress)
    try:
        for k, shard in enumerate(shards):
            if not done[k]:
                boxes, skipped = _detect_shard(
                    detector, shard, batch_size, max_det, on_missing, bar
                )
                _write_shard(parts, k, manifest, boxes, skipped)
    finally:
        bar.close()
    merged: dict[str, list[Box]] = {}
    for k in range(len(shards)):
        shard = json.loads(_shard_file(parts, k).read_text(encoding="utf-8"))
        for key, rows in shard["boxes"].items():
            merged[key] = [Box(*row) for row in rows]
        summary.skipped_images += shard["skipped"]
    write_boxes(out, merged)
    shutil.rmtree(parts, ignore_errors=True)  # none when there were no images
    summary.images = len(merged)
    summary.boxes = sum(map(len, merged.values()))
    summary.histogram = histogram([len(v) for v in merged.values()])
    if grid is not None and grid_images > 0:
        summary.grid = draw_grid(refs, merged, grid, grid_images, title=dataset)
    summary.seconds = time.perf_counter() - clock
    return summary


def _shard_file(parts: Path, k: int) -> Path:
    return parts / f"shard-{k:05d}.json"


def _prepare_parts(parts: Path, manifest: dict) -> None:
    """Keep the partial files of an earlier run with the same manifest; discard any other.
    The directory itself appears with the first shard (:func:`_write_shard`)."""
    if parts.is_dir():
        try:
            same = json.loads((parts / MANIFEST).read_text(encoding="utf-8")) == manifest
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(parts)


def _write_shard(parts: Path, k: int, manifest: dict, boxes: dict, skipped: list) -> None:
    if not (parts / MANIFEST).is_file():
        atomic_write_json(parts / MANIFEST, manifest)
    rows = {key: [b.as_list() for b in v] for key, v in boxes.items()}
    atomic_write_json(_shard_file(parts, k), {"boxes": rows, "skipped": skipped}, indent=None)


def _detect_shard(
    detector: Detector,
    shard: Sequence[ImageRef],
    batch_size: int,
    max_det: int | None,
    on_missing: str,
    bar: _Bar,
) -> tuple[dict[str, list[Box]], list[str]]:
    boxes: dict[str, list[Box]] = {}
    skipped: list[str] = []
    for i in range(0, len(shard), batch_size):
        batch = shard[i : i + batch_size]
        loaded = [(ref, _load(ref, on_missing)) for ref in batch]
        skipped += [str(ref.path) for ref, im in loaded if im is None]
        kept = [(ref, im) for ref, im in loaded if im is not None]
        found = detector.detect([im for _, im in kept], [ref.key for ref, _ in kept])
        if len(found) != len(kept):
            raise RuntimeError(f"the detector returned {len(found)} results for {len(kept)} images")
        for (ref, _), bs in zip(kept, found):
            bad = next((p for p in map(box_problem, (b.as_list() for b in bs)) if p), None)
            if bad:  # what the boxes reader would refuse is never written
                raise RuntimeError(f"the detector gave image {ref.path} a box that {bad}")
            best = sorted(bs, key=lambda b: -b.score)  # stable: the detector's order on ties
            boxes[ref.key] = best[:max_det] if max_det is not None else best
        bar.update(len(batch))
    return boxes, skipped


def sample_refs(refs: Sequence[ImageRef], n: int) -> list[ImageRef]:
    """``n`` images spread evenly over the sorted list (the same ones every run)."""
    if n >= len(refs):
        return list(refs)
    return [refs[round(i * (len(refs) - 1) / max(1, n - 1))] for i in range(n)]


def draw_grid(
    refs: Sequence[ImageRef],
    boxes: dict[str, list[Box]],
    path: str | Path,
    n: int = 16,
    tile: int = 192,
    title: str = "",
) -> Path:
    """A PNG grid of ``n`` sample images, each with its boxes, class and score."""
    from PIL import ImageDraw

    picked = [r for r in sample_refs(refs, n) if r.key in boxes]
    cols = max(1, math.ceil(math.sqrt(len(picked))))
    rows = max(1, math.ceil(len(picked) / cols))
    head = 18
    sheet = Image.new("RGB", (cols * tile, rows * (tile + head) + head), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), f"{title}: {len(picked)} sample images, their boxes", fill="black")
    colours = ("red", "blue", "green", "orange", "magenta", "cyan", "yellow", "purple")
    for i, ref in enumerate(picked):
        im = load_image(ref.path)
        scale = tile / max(im.size)
        small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        x0, y0 = (i % cols) * tile, head + (i // cols) * (tile + head)
        sheet.paste(small, (x0, y0 + head))
        bs = boxes[ref.key]
        draw.text((x0 + 2, y0 + 2), f"{ref.key[-28:]} ({len(bs)})", fill="black")
        for j, b in enumerate(bs):
            c = colours[j % len(colours)]
            xy = [x0 + b.x1 * scale, y0 + head + b.y1 * scale]
            xy += [x0 + b.x2 * scale, y0 + head + b.y2 * scale]
            draw.rectangle(xy, outline=c, width=2)
            draw.text((xy[0] + 2, xy[1] + 1), f"{b.cls} {b.score:.2f}", fill=c)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(path)
    return path
