"""Object boxes for new posts, and a picture of a prediction (``promu predict --detect/--draw``).

HVPNeT and PROMU see the global image and the crops of the top-``m`` detector boxes
(``data.max_objects``). A post to predict on rarely comes with boxes, so :func:`with_boxes` runs
a detector (the YOLO the label-mining stage wraps, :class:`promu_lib.detect.YoloDetector`) on
each post's image and keeps its ``m`` best boxes; :func:`draw_result` draws the image with
those boxes and the predicted entities (MNER) or relations (MRE) to a PNG.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from promu_lib.data.images import load_image
from promu_lib.data.records import Box
from promu_lib.detect import Detector, YoloDetector
from promu_lib.errors import PromuError
from promu_lib.io import atomic_write_bytes

DETECTORS = ("none", "yolo")
BATCH = 16  # images per detector call
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6")
TYPE_COLOURS = {"PER": "#e6194b", "LOC": "#3cb44b", "ORG": "#4363d8", "MISC": "#f58231"}
MIN_WIDTH, MAX_WIDTH = 480, 1024  # the drawn image is scaled into this range


class DetectorError(PromuError):
    """The detector asked for cannot be built (unknown name, no weights)."""


def build_detector(
    kind: str, weights: str | None = None, max_det: int = 10, device: str | None = None
) -> Detector | None:
    """``"yolo"``: ultralytics YOLO from the local ``weights`` file (nothing is downloaded);
    ``"none"``: no detector (None)."""
    if kind == "none":
        return None
    if kind != "yolo":
        raise DetectorError(f"unknown detector {kind!r}; expected one of {', '.join(DETECTORS)}")
    if not weights:
        raise DetectorError(
            "--detect yolo needs --yolo-weights PATH: a local YOLO .pt file (e.g. yolov8n.pt "
            "from the ultralytics releases; nothing is downloaded)"
        )
    return YoloDetector(weights, max_det=max(1, max_det), device=device)


def _image_path(record: dict[str, Any], base_dir: Path) -> Path | None:
    image = record.get("image")
    if not isinstance(image, str) or not image:
        return None
    path = Path(image)
    return path if path.is_absolute() else base_dir / path


def with_boxes(
    records: Sequence[dict[str, Any]], detector: Detector, max_objects: int, base_dir: Path
) -> list[dict[str, Any]]:
    """``records`` where each one with an image and no ``boxes`` gets the ``max_objects`` best
    boxes ``detector`` finds in it (pixel corners, score, class). A record without a readable
    image is left as it is (the predictor's checks name the problem)."""
    out = [dict(r) if isinstance(r, dict) else r for r in records]
    todo = []
    for i, r in enumerate(out):
        path = _image_path(r, base_dir) if isinstance(r, dict) and "boxes" not in r else None
        image = _readable(path) if path is not None else None
        if image is not None:
            todo.append((i, path.name, image))
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        found = detector.detect([im for _, _, im in chunk], [name for _, name, _ in chunk])
        for (i, _, _), boxes in zip(chunk, found):
            ranked = sorted(boxes, key=lambda b: -b.score)[: max(0, max_objects)]
            out[i]["boxes"] = [_as_list(b) for b in ranked]
    return out


def _as_list(box: Box) -> list:
    """``[x1, y1, x2, y2, score, class]``, pixels to 0.01, score to 1e-4 (JSON-friendly)."""
    return [round(float(v), 2) for v in (box.x1, box.y1, box.x2, box.y2)] + [
        round(float(box.score), 4),
        str(box.cls),
    ]


def _readable(path: Path) -> Image.Image | None:
    """The decoded image, or None when it is missing or unreadable (left to the predictor's
    checks, which name the problem)."""
    try:
        return load_image(path)
    except PromuError:
        return None


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def _result_lines(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(text, colour) lines under the image: the post, then each entity or relation."""
    tokens = result["tokens"]
    lines = [(line, "#000000") for line in textwrap.wrap(" ".join(tokens), 70)]
    if "entities" in result:
        for e in result["entities"] or []:
            colour = TYPE_COLOURS.get(e["type"], "#444444")
            lines.append((f"{e['type']:<4} {e['text']}  ({e['score']:.2f})", colour))
        if not result["entities"]:
            lines.append(("(no entity)", "#666666"))
        return lines
    h, t = result["head"], result["tail"]
    head, tail = " ".join(tokens[h[0] : h[1]]), " ".join(tokens[t[0] : t[1]])
    lines.append((f"head {head!r}, tail {tail!r}", "#444444"))
    lines += [(f"{r['probability']:.2f}  {r['relation']}", "#4363d8") for r in result["relations"]]
    return lines


def draw_result(
    image_path: str | Path, result: dict[str, Any], out: str | Path, boxes: list | None = None
) -> Path:
    """``out`` (PNG): the post's image with the boxes the model saw (``boxes``, default
    ``result["boxes"]``; labelled class and score), and beneath it the post and its predicted
    entities or relations."""
    image = load_image(image_path)
    scale = min(MAX_WIDTH, max(MIN_WIDTH, image.width)) / image.width
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    font, small = _font(16), _font(13)
    lines = _result_lines(result)
    line_h = 22
    canvas = Image.new("RGB", (image.width, image.height + 12 + line_h * len(lines)), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, box in enumerate((result.get("boxes") if boxes is None else boxes) or []):
        x1, y1, x2, y2 = (float(v) * scale for v in box[:4])
        colour = COLOURS[k % len(COLOURS)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=3)
        label = f"{box[5] if len(box) > 5 else 'object'} {float(box[4]) if len(box) > 4 else 1:.2f}"
        draw.rectangle(draw.textbbox((x1 + 2, y1 + 2), label, font=small), fill=colour)
        draw.text((x1 + 2, y1 + 2), label, fill="white", font=small)
    y = image.height + 6
    for text, colour in lines:
        draw.text((8, y), text, fill=colour, font=font)
        y += line_h
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    return atomic_write_bytes(Path(out), buf.getvalue())
