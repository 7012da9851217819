"""Loading images safely: RGB out, a :class:`~promu_lib.errors.DataError` naming the file for
anything else, and image names that cannot escape their directory.

HVPNeT falls back silently to a placeholder whenever an image fails to open; here that is an
explicit, counted choice (:class:`ImageLoader` with ``on_missing="blank"``).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from promu_lib.data.records import Box
from promu_lib.errors import DataError

# Larger images are refused before decoding (decompression bombs). 8192 x 8192 is far above any
# tweet image; PIL's own limit (~89 MP warning, ~179 MP error) is left untouched.
MAX_PIXELS: int = 8192 * 8192
# A blank stand-in image is the ImageNet mean colour, so that it normalises to about zero.
BLANK_RGB: tuple[int, int, int] = (124, 116, 104)


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a safe relative path (``None`` when it is one).

    Safe means: a non-empty string, not absolute (POSIX or Windows), no ``..`` component, no
    backslash, no NUL byte.
    """
    if not isinstance(name, str) or not name.strip():
        return f"image name {name!r} is empty or not a string"
    if "\x00" in name:
        return f"image name {name!r} contains a NUL byte"
    if "\\" in name:
        return f"image name {name!r} contains a backslash"
    if (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or (PureWindowsPath(name).drive)
    ):
        return f"image name {name!r} is an absolute path"
    if ".." in PurePosixPath(name).parts:
        return f"image name {name!r} contains '..'"
    return None


def safe_join(
    directory: str | Path,
    name: str,
    source: str | Path | None = None,
    line: int | None = None,
) -> Path:
    """``directory / name``, refusing names that are absolute or climb out with ``..``.

    The check is on the name itself, so symlinks a user placed inside ``directory`` are
    honoured. The error names ``source`` (the data file the name came from) and its ``line``
    when given, else the directory.
    """
    directory = Path(directory)
    problem = name_problem(name)
    if problem is None:
        joined = Path(os.path.normpath(directory / name))
        base = Path(os.path.normpath(directory))
        if joined == base or base not in joined.parents:
            problem = f"image name {name!r} resolves outside {directory}"
    if problem is not None:
        raise DataError(
            source if source is not None else directory,
            problem,
            f"a file name relative to {directory} (no '..', not absolute)",
            line,
        )
    return directory / name


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``path`` and return a fully decoded RGB image (the file is closed on return).

    Grayscale, CMYK, RGBA, palette and 16-bit images are converted to RGB. Missing, empty,
    truncated or unreadable files and images above ``max_pixels`` raise :class:`DataError`.
    """
    path = Path(path)
    expected = "a readable image file (JPEG, PNG, ...)"
    if not path.is_file():
        raise DataError(path, "image not found", expected)
    if path.stat().st_size == 0:
        raise DataError(path, "image file is empty (0 bytes)", expected)
    try:
        with warnings.catch_warnings():  # the size limit below is ours; PIL's warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise DataError(
                    path,
                    f"image is {w}x{h} = {w * h} pixels (possible decompression bomb)",
                    f"at most {max_pixels} pixels",
                )
            im.load()
            return _to_rgb(im)
    except DataError:
        raise
    except UnidentifiedImageError as e:
        raise DataError(path, "not an image PIL can identify", expected) from e
    except Image.DecompressionBombError as e:
        raise DataError(
            path,
            f"image is too large (possible decompression bomb): {e}",
            f"at most {max_pixels} pixels",
        ) from e
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise DataError(path, f"image data is corrupt or truncated ({e})", expected) from e
    except Exception as e:  # ultralytics patches Image.open (a HEIF fallback) with other errors
        raise DataError(
            path, f"not an image PIL can identify ({type(e).__name__})", expected
        ) from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high bit depth: rescale to 8 bits
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL asks for this before dropping palette transparency
    return im.convert("RGB")


def clip_box(box: Box, width: int, height: int, source: str | Path | None = None) -> Box:
    """``box`` clipped to a ``width`` x ``height`` image.

    A box that keeps no area after clipping (entirely outside the image, or inverted) raises
    :class:`DataError` naming ``source`` (the boxes file) when given.
    """
    x1, y1 = max(0.0, float(box.x1)), max(0.0, float(box.y1))
    x2, y2 = min(float(width), float(box.x2)), min(float(height), float(box.y2))
    if not (x2 > x1 and y2 > y1):
        raise DataError(
            source if source is not None else "<box>",
            f"box {box.as_list()[:4]} has no area inside the {width}x{height} image",
            "x1 < x2, y1 < y2 and an overlap with the image",
        )
    return Box(x1, y1, x2, y2, box.score, box.cls)


def crop(image: Image.Image, box: Box) -> Image.Image:
    """The pixels of ``image`` under ``box`` (clipped first; corners rounded outwards)."""
    b = clip_box(box, *image.size)
    left, top = math.floor(b.x1), math.floor(b.y1)
    right, bottom = max(math.ceil(b.x2), left + 1), max(math.ceil(b.y2), top + 1)
    return image.crop((left, top, right, bottom))


ON_MISSING = ("error", "blank")


@dataclass
class ImageLoader:
    """:func:`load_image` with the ``data.on_missing_image`` policy.

    ``on_missing="error"`` raises on any missing or unreadable image. ``"blank"`` returns a
    ``blank_size`` image of :data:`BLANK_RGB` instead and records the path and the reason in
    ``blanks``, so the count can be reported. (Counts live in one process: with DataLoader
    workers each worker keeps its own.)
    """

    on_missing: str = "error"
    blank_size: tuple[int, int] = (64, 64)
    max_pixels: int = MAX_PIXELS
    blanks: dict[str, str] = field(default_factory=dict)  # path -> reason

    def __post_init__(self) -> None:
        if self.on_missing not in ON_MISSING:
            raise ValueError(f"on_missing must be one of {ON_MISSING}, got {self.on_missing!r}")

    @property
    def n_blank(self) -> int:
        return len(self.blanks)

    def __call__(self, path: str | Path) -> Image.Image:
        try:
            return load_image(path, self.max_pixels)
        except DataError as e:
            if self.on_missing == "error":
                raise
            self.blanks[str(path)] = e.problem
            return Image.new("RGB", self.blank_size, BLANK_RGB)
