"""Object detectors for label mining: the objects O_i of PROMU Eq. 6 (the paper uses YOLO).

A :class:`Detector` maps images to pixel boxes. Two implementations:

- :class:`PrecomputedBoxes` reads a boxes file (``{image id: [[x1, y1, x2, y2, score, class]]}``,
  the toy world's and our real-data format); it looks boxes up by image key, not by pixels.
- :class:`YoloDetector` runs ultralytics YOLO on the images (offline: no hub, no telemetry).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

from PIL import Image

from promu_lib.config import Config
from promu_lib.data.records import Box
from promu_lib.errors import MissingAssetError
from promu_lib.paths import resolve

log = logging.getLogger(__name__)


class Detector(Protocol):
    def detect(self, images: list[Image.Image], keys: list[str] | None = None) -> list[list[Box]]:
        """Boxes (pixel corners, score, class) per image, best first. ``keys`` name the images."""
        ...


class PrecomputedBoxes:
    """Boxes from a file written by :func:`promu_lib.data.formats.write_boxes`.

    An image key absent from the file gets no boxes; such keys are counted in ``missing_keys``
    so the caller can report them (a real detector also finds nothing in some images). Boxes
    come best first (by score, file order on ties), whatever the file's order: mining keeps
    the first ``data.max_objects``.
    """

    def __init__(self, path: str | Path, on_bad: str = "error") -> None:
        from promu_lib.data.formats import read_boxes

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingAssetError(
                "object boxes file",
                str(self.path),
                "Build the data of the profile first (`promu data`), point data.boxes_dir at "
                "your boxes, or set mining.detector=yolo to detect objects.",
            )
        self.boxes = read_boxes(self.path, on_bad=on_bad)
        self.missing_keys: set[str] = set()

    def detect(self, images: list[Image.Image], keys: list[str] | None = None) -> list[list[Box]]:
        if keys is None or len(keys) != len(images):
            raise ValueError("PrecomputedBoxes needs one key per image (the image id in the file)")
        out = []
        for key in keys:
            if key not in self.boxes:
                self.missing_keys.add(key)
            out.append(sorted(self.boxes.get(key, []), key=lambda b: -b.score))
        return out


def _import_ultralytics():
    # Must be set before the first import: ultralytics decides ONLINE at import time, and
    # offline it never checks for updates, downloads assets or sends telemetry.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    _unpatch_pil_open()
    return YOLO


def _unpatch_pil_open() -> None:
    """Undo ultralytics' patch of ``PIL.Image.open`` (ultralytics.utils.patches): on any image
    PIL cannot identify it pip-installs a HEIF plugin and logs, in every later ``Image.open`` of
    the process. promu reads its images itself (``promu_lib.data.images.load_image``) and hands
    YOLO decoded images, so an unreadable file stays one DataError, nothing installed."""
    from ultralytics.utils import patches

    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


class YoloDetector:
    """ultralytics YOLO. ``weights``: a local ``.pt`` file, or a model ``.yaml`` (random weights,
    only for tests and smoke runs). Boxes come sorted by confidence, at most ``max_det``."""

    def __init__(
        self,
        weights: str | Path,
        conf: float = 0.25,
        max_det: int = 10,
        imgsz: int = 640,
        device: str | None = None,
    ) -> None:
        name = str(weights)
        if not name.endswith((".yaml", ".yml")):
            path = resolve(name)
            if not path.is_file():
                raise MissingAssetError(
                    "YOLO weights",
                    str(path),
                    "Put a YOLO checkpoint there (e.g. yolov8n.pt from the ultralytics "
                    "releases) and set mining.yolo_weights to its path; nothing is downloaded.",
                )
            name = str(path)
        self.model = _import_ultralytics()(name)
        self.conf, self.max_det, self.imgsz, self.device = conf, max_det, imgsz, device

    def detect(self, images: list[Image.Image], keys: list[str] | None = None) -> list[list[Box]]:
        if not images:
            return []
        results = self.model.predict(
            [im.convert("RGB") for im in images],
            conf=self.conf,
            max_det=self.max_det,
            imgsz=self.imgsz,
            device=self.device,
            verbose=False,
        )
        out = []
        for r in results:
            xyxy = r.boxes.xyxy.tolist()
            scores = r.boxes.conf.tolist()
            classes = [r.names[int(c)] for c in r.boxes.cls.tolist()]
            boxes = [
                Box(*xy, score=s, cls=c)
                for xy, s, c in zip(xyxy, scores, classes)
                if xy[2] > xy[0] and xy[3] > xy[1]
            ]
            out.append(sorted(boxes, key=lambda b: -b.score))
        return out


def build_detector(cfg: Config) -> Detector:
    """The detector named by ``cfg.mining.detector`` for the caption corpus."""
    from promu_lib.data.layout import DataLayout

    kind = cfg.mining.detector
    if kind == "boxes":
        layout = DataLayout.of(cfg)
        return PrecomputedBoxes(layout.boxes("pretrain"), on_bad=cfg.data.on_bad_record)
    if kind == "yolo":
        if not cfg.mining.yolo_weights:
            raise MissingAssetError(
                "YOLO weights",
                "mining.yolo_weights (unset)",
                "Set mining.yolo_weights to a local YOLO .pt file.",
            )
        device = None if cfg.run.device == "auto" else cfg.run.device  # None: ultralytics picks
        return YoloDetector(cfg.mining.yolo_weights, max_det=cfg.data.max_objects, device=device)
    raise ValueError(f"mining.detector must be 'boxes' or 'yolo', got {kind!r}")
