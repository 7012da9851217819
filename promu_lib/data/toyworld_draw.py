"""Drawing the toy world: object classes, relation signatures, layouts, rendering, a fake detector.

Every image is a small scene on a noisy sky-and-ground background. Objects are simple shapes in
a colour of their own, so that a small ViT (8x8 patches) or CNN can tell the twelve classes
apart. A relation between two objects is drawn as an *arrangement* (side by side, touching,
one held by the other, one on top, one big and one small) and/or a small *icon* between them
(heart, star, cap, ...); :data:`RELATION_SIGNATURES` says which.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from promu_lib.data.records import Box

BoxT = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True)
class ObjectClass:
    noun: str  # also the detector's class name
    colour: str  # the adjective captions use
    rgb: tuple[int, int, int]
    aspect: float  # width / height of its box
    entity_type: str | None  # the entity type it depicts (None: scenery, never an entity)


OBJECT_CLASSES: dict[str, ObjectClass] = {
    c.noun: c
    for c in (
        ObjectClass("person", "orange", (235, 125, 20), 0.5, "PER"),
        ObjectClass("house", "blue", (40, 70, 200), 1.0, "LOC"),
        ObjectClass("mountain", "snowy", (95, 85, 75), 1.5, "LOC"),
        ObjectClass("flag", "purple", (150, 40, 180), 0.8, "LOC"),
        ObjectClass("tower", "grey", (125, 125, 140), 0.45, "ORG"),
        ObjectClass("trophy", "golden", (225, 180, 20), 0.7, "MISC"),
        ObjectClass("guitar", "teal", (0, 150, 150), 0.5, "MISC"),
        ObjectClass("ball", "pink", (230, 40, 160), 1.0, "MISC"),
        ObjectClass("dog", "brown", (130, 80, 35), 1.4, None),
        ObjectClass("car", "red", (210, 25, 25), 1.6, None),
        ObjectClass("tree", "green", (25, 140, 45), 0.7, None),
        ObjectClass("boat", "navy", (20, 30, 110), 1.1, None),
    )
}
CLASS_NAMES: tuple[str, ...] = tuple(OBJECT_CLASSES)
TYPE_CLASSES: dict[str, tuple[str, ...]] = {
    t: tuple(c.noun for c in OBJECT_CLASSES.values() if c.entity_type == t)
    for t in ("PER", "LOC", "ORG", "MISC")
}
SCENERY_CLASSES: tuple[str, ...] = tuple(
    c.noun for c in OBJECT_CLASSES.values() if c.entity_type is None
)

ARRANGEMENTS: tuple[str, ...] = ("apart", "size", "adjacent", "held", "stacked")
ICONS: tuple[str, ...] = (
    "heart", "dots", "fence", "bar", "cross", "cap", "equals", "star", "cradle", "triangle",
    "plus", "stripes",
)  # fmt: skip

# relation -> (arrangement, icon). Unique within each entity-type pair, so an image that shows
# the two objects (whose classes give the types) shows the relation. "None" = apart, no icon.
RELATION_SIGNATURES: dict[str, tuple[str, str | None]] = {
    "None": ("apart", None),
    "/per/per/parent": ("size", None),  # a big and a small person
    "/per/per/siblings": ("apart", "dots"),
    "/per/per/couple": ("apart", "heart"),
    "/per/per/neighbor": ("apart", "fence"),
    "/per/per/peer": ("apart", "bar"),
    "/per/per/charges": ("apart", "cross"),
    "/per/per/alumi": ("apart", "cap"),
    "/per/per/alternate_names": ("apart", "equals"),
    "/per/org/member_of": ("apart", "star"),  # a person before a tower, a badge between
    "/per/loc/place_of_residence": ("adjacent", None),  # a person right beside a house
    "/per/loc/place_of_birth": ("apart", "cradle"),
    "/org/org/alternate_names": ("apart", "equals"),
    "/org/org/subsidiary": ("size", None),
    "/org/loc/locate_at": ("stacked", None),
    "/loc/loc/contain": ("size", None),
    "/per/misc/present_in": ("adjacent", None),
    "/per/misc/awarded": ("held", None),  # the trophy in the person's hand
    "/per/misc/race": ("apart", "triangle"),
    "/per/misc/religion": ("apart", "plus"),
    "/per/misc/nationality": ("apart", "stripes"),
    "/misc/misc/part_of": ("adjacent", None),
    "/misc/loc/held_on": ("stacked", None),
}


def relation_types(relation: str) -> tuple[str, str] | None:
    """``"/per/org/member_of"`` -> ``("PER", "ORG")``; ``None`` for the ``"None"`` relation."""
    if relation == "None":
        return None
    _, head, tail, _ = relation.split("/", 3)
    return head.upper(), tail.upper()


def read_relation(head_cls: str, tail_cls: str, arrangement: str, icon: str | None) -> str:
    """The relation a drawn pair shows (what an observer of the image reads; ``"None"`` if none)."""
    types = (OBJECT_CLASSES[head_cls].entity_type, OBJECT_CLASSES[tail_cls].entity_type)
    for rel, sig in RELATION_SIGNATURES.items():
        if rel != "None" and sig == (arrangement, icon) and relation_types(rel) == types:
            return rel
    return "None"


@dataclass
class Scene:
    """What one image shows. ``objects`` are ``(class, box)``; the icon has a box of its own."""

    objects: list[tuple[str, BoxT]]
    icon: str | None = None
    icon_box: BoxT | None = None


# -- layouts ---------------------------------------------------------------------------------


def _fit(cls: str, height: float, max_width: float) -> tuple[float, float]:
    aspect = OBJECT_CLASSES[cls].aspect
    w, h = aspect * height, height
    if w > max_width:
        w, h = max_width, max_width / aspect
    return w, h


def row_layout(classes: list[str], size: int, rng: np.random.Generator) -> list[BoxT]:
    """Objects left to right, one per equal slot, standing on the ground at random depths."""
    n = len(classes)
    slot = size * 0.94 / n
    h_max = size * {1: 0.6, 2: 0.55, 3: 0.45}.get(n, 0.38)
    boxes = []
    for i, cls in enumerate(classes):
        w, h = _fit(cls, h_max * rng.uniform(0.75, 1.0), 0.9 * slot)
        x1 = size * 0.03 + i * slot + rng.uniform(0, slot - w)
        y2 = size * rng.uniform(0.8, 0.97)
        boxes.append((x1, y2 - h, x1 + w, y2))
    return boxes


def pair_layout(
    head: str, tail: str, arrangement: str, icon: str | None, size: int, rng: np.random.Generator
) -> Scene:
    """Head on the left, tail on the right, arranged (and iconned) as the relation says."""
    s = float(size)
    ground = s * rng.uniform(0.85, 0.96)
    if arrangement in ("apart", "size"):
        if arrangement == "size":  # the tail at 40% of the head's height, however wide either is
            hw, hh = _fit(head, s * 0.6, 0.45 * s)
            tw, th = _fit(tail, 0.4 * hh, 0.36 * s)
        else:
            hw, hh = _fit(head, s * rng.uniform(0.38, 0.5), 0.36 * s)
            tw, th = _fit(tail, s * rng.uniform(0.38, 0.5), 0.36 * s)
        hx = s * 0.03 + rng.uniform(0, max(0.0, 0.37 * s - hw))
        tx = s * 0.6 + rng.uniform(0, 0.37 * s - tw)
        hbox = (hx, ground - hh, hx + hw, ground)
        tbox = (tx, ground - th, tx + tw, ground)
    elif arrangement == "adjacent":
        hw, hh = _fit(head, s * rng.uniform(0.38, 0.5), 0.4 * s)
        tw, th = _fit(tail, s * rng.uniform(0.38, 0.5), 0.4 * s)
        hx2 = s * rng.uniform(0.45, 0.55)
        hbox = (hx2 - hw, ground - hh, hx2, ground)
        tbox = (hx2 - 1, ground - th, hx2 - 1 + tw, ground)
    elif arrangement == "held":
        hw, hh = _fit(head, s * rng.uniform(0.45, 0.55), 0.4 * s)
        tw, th = _fit(tail, s * 0.22, 0.25 * s)
        hx = s * rng.uniform(0.15, 0.3)
        hbox = (hx, ground - hh, hx + hw, ground)
        tx = hbox[2] - 0.25 * tw
        ty = hbox[1] + 0.4 * hh - th / 2
        tbox = (tx, ty, tx + tw, ty + th)
    elif arrangement == "stacked":
        tw, th = _fit(tail, s * rng.uniform(0.32, 0.4), 0.5 * s)
        hw, hh = _fit(head, s * 0.28, 0.3 * s)
        cx = s * rng.uniform(0.4, 0.6)
        tbox = (cx - tw / 2, ground - th, cx + tw / 2, ground)
        hbox = (cx - hw / 2, tbox[1] + 1 - hh, cx + hw / 2, tbox[1] + 1)
    else:
        raise ValueError(f"unknown arrangement {arrangement!r}; expected one of {ARRANGEMENTS}")
    icon_box = None
    if icon is not None:
        side = s * 0.16
        cx = (hbox[2] + tbox[0]) / 2
        cy = s * rng.uniform(0.35, 0.55)
        icon_box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return Scene([(head, hbox), (tail, tbox)], icon, icon_box)


# -- drawing ---------------------------------------------------------------------------------

_WHITE, _BLACK, _DARK = (250, 250, 250), (20, 20, 20), (60, 50, 45)


def _draw_object(d: ImageDraw.ImageDraw, cls: str, box: BoxT) -> None:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    rgb = OBJECT_CLASSES[cls].rgb
    if cls == "person":
        r = min(0.14 * h, 0.32 * w)
        d.ellipse((cx - r, y1, cx + r, y1 + 2 * r), fill=(240, 195, 150))
        d.rectangle((x1 + 0.1 * w, y1 + 2 * r, x2 - 0.1 * w, y1 + 0.65 * h), fill=rgb)
        d.rectangle((cx - 0.3 * w, y1 + 0.65 * h, cx - 0.05 * w, y2), fill=(40, 40, 90))
        d.rectangle((cx + 0.05 * w, y1 + 0.65 * h, cx + 0.3 * w, y2), fill=(40, 40, 90))
    elif cls == "house":
        d.rectangle((x1 + 0.1 * w, y1 + 0.45 * h, x2 - 0.1 * w, y2), fill=rgb)
        d.polygon([(x1, y1 + 0.45 * h), (x2, y1 + 0.45 * h), (cx, y1)], fill=(110, 30, 30))
        d.rectangle((cx - 0.1 * w, y1 + 0.7 * h, cx + 0.1 * w, y2), fill=_DARK)
    elif cls == "mountain":
        d.polygon([(x1, y2), (x2, y2), (cx, y1)], fill=rgb)
        d.polygon(
            [(cx, y1), (cx - 0.17 * w, y1 + 0.35 * h), (cx + 0.17 * w, y1 + 0.35 * h)], fill=_WHITE
        )
    elif cls == "flag":
        d.rectangle((x1, y1, x1 + max(1.0, 0.12 * w), y2), fill=(90, 90, 90))
        d.rectangle((x1 + 0.12 * w, y1 + 0.05 * h, x2, y1 + 0.5 * h), fill=rgb)
    elif cls == "tower":
        d.rectangle((x1 + 0.15 * w, y1 + 0.15 * h, x2 - 0.15 * w, y2), fill=rgb)
        d.polygon(
            [(x1 + 0.15 * w, y1 + 0.15 * h), (x2 - 0.15 * w, y1 + 0.15 * h), (cx, y1)], fill=rgb
        )
        r = 0.3 * w
        d.ellipse((cx - r, y1 + 0.38 * h - r, cx + r, y1 + 0.38 * h + r), fill=(245, 215, 0))
    elif cls == "trophy":
        d.polygon(
            [(x1, y1), (x2, y1), (cx + 0.12 * w, y1 + 0.55 * h), (cx - 0.12 * w, y1 + 0.55 * h)],
            fill=rgb,
        )
        d.rectangle((cx - 0.08 * w, y1 + 0.55 * h, cx + 0.08 * w, y1 + 0.8 * h), fill=rgb)
        d.rectangle((x1 + 0.15 * w, y1 + 0.8 * h, x2 - 0.15 * w, y2), fill=(150, 110, 10))
    elif cls == "guitar":
        d.rectangle((cx - 0.1 * w, y1, cx + 0.1 * w, y1 + 0.45 * h), fill=_DARK)
        d.ellipse((x1 + 0.12 * w, y1 + 0.35 * h, x2 - 0.12 * w, y1 + 0.68 * h), fill=rgb)
        d.ellipse((x1, y1 + 0.55 * h, x2, y2), fill=rgb)
    elif cls == "ball":
        d.ellipse((x1, y1, x2, y2), fill=rgb)
        d.line(
            (x1 + 0.1 * w, (y1 + y2) / 2, x2 - 0.1 * w, (y1 + y2) / 2),
            fill=_WHITE,
            width=max(1, round(0.15 * h)),
        )
    elif cls == "dog":
        d.ellipse((x1, y1 + 0.3 * h, x1 + 0.78 * w, y1 + 0.75 * h), fill=rgb)
        r = 0.16 * w
        d.ellipse((x2 - 2 * r, y1, x2, y1 + 2 * r), fill=rgb)
        for lx in (0.12, 0.55):
            d.rectangle((x1 + lx * w, y1 + 0.6 * h, x1 + (lx + 0.1) * w, y2), fill=rgb)
    elif cls == "car":
        d.rectangle((x1 + 0.2 * w, y1 + 0.05 * h, x1 + 0.75 * w, y1 + 0.45 * h), fill=rgb)
        d.rectangle(
            (x1 + 0.28 * w, y1 + 0.12 * h, x1 + 0.68 * w, y1 + 0.4 * h), fill=(170, 210, 240)
        )
        d.rectangle((x1, y1 + 0.4 * h, x2, y1 + 0.8 * h), fill=rgb)
        r = 0.2 * h
        for wx in (0.25, 0.75):
            d.ellipse((x1 + wx * w - r, y2 - 2 * r, x1 + wx * w + r, y2), fill=_BLACK)
    elif cls == "tree":
        d.rectangle((cx - 0.12 * w, y1 + 0.55 * h, cx + 0.12 * w, y2), fill=(100, 60, 20))
        d.ellipse((x1, y1, x2, y1 + 0.7 * h), fill=rgb)
    elif cls == "boat":
        d.polygon(
            [(x1, y1 + 0.65 * h), (x2, y1 + 0.65 * h), (x2 - 0.15 * w, y2), (x1 + 0.15 * w, y2)],
            fill=rgb,
        )
        d.polygon([(cx, y1), (cx, y1 + 0.6 * h), (x2 - 0.1 * w, y1 + 0.6 * h)], fill=_WHITE)
        d.line((cx, y1, cx, y1 + 0.65 * h), fill=_DARK, width=1)
    else:
        raise ValueError(f"unknown object class {cls!r}; expected one of {CLASS_NAMES}")


def _draw_icon(d: ImageDraw.ImageDraw, icon: str, box: BoxT) -> None:
    x1, y1, x2, y2 = box
    s = x2 - x1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    lw = max(1, round(s * 0.22))
    if icon == "heart":
        d.ellipse((x1, y1, cx + 0.05 * s, cy), fill=(230, 0, 40))
        d.ellipse((cx - 0.05 * s, y1, x2, cy), fill=(230, 0, 40))
        d.polygon([(x1, cy - 0.2 * s), (x2, cy - 0.2 * s), (cx, y2)], fill=(230, 0, 40))
    elif icon == "dots":
        r = 0.22 * s
        d.ellipse((cx - r, y1, cx + r, y1 + 2 * r), fill=(0, 200, 80))
        d.ellipse((cx - r, y2 - 2 * r, cx + r, y2), fill=(0, 200, 80))
    elif icon == "fence":
        for fx in (0.1, 0.45, 0.8):
            d.rectangle((x1 + fx * s, y1, x1 + (fx + 0.12) * s, y2), fill=(150, 100, 50))
        d.rectangle((x1, cy - 0.08 * s, x2, cy + 0.08 * s), fill=(150, 100, 50))
    elif icon == "bar":
        d.rectangle((x1 - 0.3 * s, cy - 0.15 * s, x2 + 0.3 * s, cy + 0.15 * s), fill=(0, 210, 230))
    elif icon == "cross":
        d.line((x1, y1, x2, y2), fill=_BLACK, width=lw)
        d.line((x1, y2, x2, y1), fill=_BLACK, width=lw)
    elif icon == "cap":
        d.polygon(
            [(x1, cy - 0.1 * s), (cx, y1), (x2, cy - 0.1 * s), (cx, cy + 0.15 * s)], fill=_BLACK
        )
        d.rectangle((cx - 0.25 * s, cy, cx + 0.25 * s, y2 - 0.1 * s), fill=_BLACK)
        d.line((x2 - 0.1 * s, cy - 0.1 * s, x2 - 0.1 * s, y2), fill=(245, 215, 0), width=1)
    elif icon == "equals":
        d.rectangle((x1, y1 + 0.15 * s, x2, y1 + 0.38 * s), fill=(30, 30, 120))
        d.rectangle((x1, y2 - 0.38 * s, x2, y2 - 0.15 * s), fill=(30, 30, 120))
    elif icon == "star":
        pts = []
        for k in range(10):
            r = s / 2 if k % 2 == 0 else s / 5
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + r * np.cos(a), cy + r * np.sin(a)))
        d.polygon(pts, fill=(255, 160, 0))
    elif icon == "cradle":
        d.ellipse((x1, y1, x2, y2), fill=(120, 200, 255))
        d.ellipse(
            (cx - 0.18 * s, cy - 0.18 * s, cx + 0.18 * s, cy + 0.18 * s), fill=(240, 195, 150)
        )
    elif icon == "triangle":
        d.polygon([(x1, y2), (x2, y2), (cx, y1)], fill=_WHITE, outline=_BLACK)
    elif icon == "plus":
        d.rectangle((cx - 0.12 * s, y1, cx + 0.12 * s, y2), fill=(110, 0, 170))
        d.rectangle((x1, cy - 0.12 * s, x2, cy + 0.12 * s), fill=(110, 0, 170))
    elif icon == "stripes":
        for k, rgb in enumerate(((220, 0, 0), _WHITE, (0, 40, 200))):
            d.rectangle(
                (x1 + k * s / 3, y1 + 0.15 * s, x1 + (k + 1) * s / 3, y2 - 0.15 * s), fill=rgb
            )
    else:
        raise ValueError(f"unknown icon {icon!r}; expected one of {ICONS}")


@functools.lru_cache(maxsize=4)
def _noise_tile(size: int) -> np.ndarray:
    """A fixed pixel-noise texture twice the image size; each image shows a random window."""
    return np.random.default_rng(size).integers(
        -14, 15, size=(2 * size, 2 * size, 3), dtype=np.int16
    )


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A sky over a ground band, both of random light colours, with pixel noise."""
    u = rng.random(9)
    sky = np.array((165, 185, 205)) + u[:3] * (50, 40, 45)
    ground = np.array((140, 160, 100)) + u[3:6] * (60, 50, 50)
    horizon = int(size * (0.6 + 0.15 * u[6]))
    ox, oy = int(u[7] * size), int(u[8] * size)
    img = np.empty((size, size, 3), dtype=np.int16)
    img[:horizon] = sky
    img[horizon:] = ground
    img += _noise_tile(size)[oy : oy + size, ox : ox + size]
    return np.clip(img, 0, 255).astype(np.uint8)


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """The RGB image of a scene (objects first, the icon on top)."""
    img = Image.fromarray(_background(size, rng), mode="RGB")
    d = ImageDraw.Draw(img)
    for cls, box in scene.objects:
        _draw_object(d, cls, box)
    if scene.icon is not None and scene.icon_box is not None:
        _draw_icon(d, scene.icon, scene.icon_box)
    return img


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """JPEG bytes; deterministic for identical pixels and quality (tested)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# -- a detector's view -------------------------------------------------------------------------


def detect(
    scene: Scene,
    size: int,
    rng: np.random.Generator,
    jitter: float,
    miss_rate: float,
    false_alarm_rate: float,
) -> list[Box]:
    """The scene's object boxes as a detector would give them, sorted by score (highest first).

    Each true box is missed with ``miss_rate``, else its corners move by Gaussian noise of
    ``jitter`` times its size; with ``false_alarm_rate`` a box of a random class appears at a
    random place with a lower score. Icons are not objects and never get a box.
    """
    out = []
    for cls, (x1, y1, x2, y2) in scene.objects:
        if rng.random() < miss_rate:
            continue
        w, h = x2 - x1, y2 - y1
        nx = rng.normal(0.0, jitter, size=4) * (w, h, w, h)
        bx1, by1, bx2, by2 = (x1 + nx[0], y1 + nx[1], x2 + nx[2], y2 + nx[3])
        bx1, bx2 = sorted((min(max(bx1, 0), size), min(max(bx2, 0), size)))
        by1, by2 = sorted((min(max(by1, 0), size), min(max(by2, 0), size)))
        if bx2 - bx1 < 1 or by2 - by1 < 1:
            continue
        out.append(Box(bx1, by1, bx2, by2, float(rng.uniform(0.55, 0.99)), cls))
    if rng.random() < false_alarm_rate:
        w, h = rng.uniform(0.12, 0.4, size=2) * size
        x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        cls = CLASS_NAMES[rng.integers(len(CLASS_NAMES))]
        out.append(Box(x1, y1, x1 + w, y1 + h, float(rng.uniform(0.25, 0.55)), cls))
    out.sort(key=lambda b: -b.score)
    return [
        Box(*(round(v, 1) for v in (b.x1, b.y1, b.x2, b.y2)), round(b.score, 3), b.cls) for b in out
    ]
