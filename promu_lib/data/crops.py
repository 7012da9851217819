"""An explicit converter from HVPNeT's object-crop dictionaries to our ``crops`` JSON.

HVPNeT ships its visual-grounding objects as image files plus a pickled dict (``.pth``):
- NER: ``twitter20xx_aux_images/{train,val,test}/crops/<imgname>_pred_yolo_crop_<n>.png`` and
  ``twitter20xx_<split>_dict.pth`` = ``{"<id>.jpg": [crop file names]}`` (keys carry ``.jpg``,
  as its loader appends it to the IMGID).
- MRE: ``img_vg/{train,val,test}/crops/<line index>_pred_yolo_crop_<n>.png`` and
  ``mre_<split>_dict.pth`` = ``{<0-based line index of ours_<split>.txt>: [crop file names]}``.
Crop names are relative to the ``crops`` directory; HVPNeT uses at most the first 3.

What :func:`convert_crops` does: loads the dict with ``torch.load(weights_only=True)`` only
(plain dicts, lists, strings and ints load; a pickle with any other object is refused), maps
the keys to our image ids (NER: drops the extension; MRE: reads the split file and takes the
``img_id`` of that line), checks every crop name is a safe relative name and, by default, that
the file exists, and writes ``{img_id: [crop paths relative to the JSON file's directory]}``.

What it does not do: copy, move or resize crops; produce boxes (a crop file carries no
position in the original image, so the ``boxes`` coordinates of a batch are unknown for these
objects); run a detector. MNRE lines that share an image keep the crops of the first line
(differences are counted as ``conflicts``).

Using the result: :func:`read_crops` gives ``{img_id: [absolute crop paths]}``; a dataset can
call :func:`promu_lib.data.images.load_image` on each path instead of cropping boxes out of the
image.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from promu_lib.data.formats import FileReader, ReadReport, read_mnre, read_twitter
from promu_lib.data.images import name_problem, safe_join
from promu_lib.errors import DataError
from promu_lib.io import atomic_write_json

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_EXAMPLES = 5


def load_crop_dict(path: str | Path) -> dict:
    """HVPNeT's ``{key: [crop names]}`` from a ``.pth``, read with ``weights_only=True``."""
    import torch

    path = Path(path)
    expected = "a torch.save'd dict {image name or line index: [crop file names]}"
    if not path.is_file():
        raise DataError(path, "file not found", expected)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            path,
            "refused by torch.load(weights_only=True): it holds objects other than plain "
            f"dicts, lists, strings and numbers, or is not a torch file ({first[:200]})",
            expected + " (re-save it as plain dicts/lists, or as JSON, from a Python you trust)",
        ) from e
    if not isinstance(obj, dict):
        raise DataError(path, f"holds a {type(obj).__name__}", expected)
    return obj


@dataclass
class CropConversion:
    """What :func:`convert_crops` wrote and what it found wrong."""

    out: Path
    n_images: int = 0
    n_crops: int = 0
    missing_files: list[str] = field(default_factory=list)  # first MAX_EXAMPLES
    n_missing_files: int = 0
    unknown_keys: list[str] = field(default_factory=list)  # keys with no post in the split file
    conflicts: int = 0  # MRE: lines sharing an image but listing other crops


def convert_crops(
    pth: str | Path,
    crops_dir: str | Path,
    out: str | Path,
    *,
    task: str = "ner",
    split_file: str | Path | None = None,
    check_files: bool = True,
    strict: bool = False,
) -> CropConversion:
    """Write our crops JSON from one HVPNeT ``.pth`` dict (see the module docstring).

    ``split_file`` is required for ``task="re"`` (keys are line indices) and, for ``"ner"``,
    used to report keys that match no post. ``crops_dir`` must lie under ``out``'s directory,
    so the JSON can store relative paths. ``strict``: a crop file not found is a DataError and
    nothing is written (else it is counted in the result).
    """
    if task not in ("ner", "re"):
        raise ValueError(f"task must be 'ner' or 're', got {task!r}")
    pth, crops_dir, out = Path(pth), Path(crops_dir), Path(out)
    base = out.parent
    rel_dir = Path(os.path.relpath(crops_dir.resolve(), base.resolve()))
    if ".." in rel_dir.parts:
        raise DataError(
            crops_dir,
            f"the crops directory is not under {base}, the directory of the output JSON",
            "an output path in a directory that contains the crops directory",
        )
    mapping = load_crop_dict(pth)
    key_to_id = _key_to_img_id(mapping, task, split_file, pth)
    result = CropConversion(out)
    crops: dict[str, list[str]] = {}
    for key, names in mapping.items():
        if not isinstance(names, (list, tuple)):
            raise DataError(
                pth, f"key {key!r}: value is a {type(names).__name__}", "a list of crop file names"
            )
        img_id = key_to_id.get(key)
        if img_id is None:
            result.unknown_keys.append(str(key))
            continue
        rel = []
        for name in names:
            safe_join(crops_dir, name, source=pth)  # raises on unsafe names
            if check_files and not (crops_dir / name).is_file():
                result.n_missing_files += 1
                if len(result.missing_files) < MAX_EXAMPLES:
                    result.missing_files.append(str(crops_dir / name))
            rel.append((rel_dir / name).as_posix())
        if img_id in crops:
            result.conflicts += crops[img_id] != rel
            continue
        crops[img_id] = rel
    result.n_images = len(crops)
    result.n_crops = sum(map(len, crops.values()))
    if strict and result.n_missing_files:
        raise DataError(
            pth,
            f"{result.n_missing_files} crop file(s) it names are not in {crops_dir} (e.g. "
            f"{', '.join(result.missing_files)}); nothing written",
            "every crop file under --crops-dir (or --no-check-files)",
        )
    atomic_write_json(out, crops, indent=None)
    return result


def _key_to_img_id(mapping: Mapping, task: str, split_file: str | Path | None, pth: Path) -> dict:
    if task == "re":
        if split_file is None:
            raise ValueError("task='re' needs split_file: MRE crop dicts are keyed by line index")
        # HVPNeT enumerates f.readlines(): index = file line - 1
        return {post.line - 1: post.img_id for post in read_mnre(split_file)}
    out = {}
    for key in mapping:
        if not isinstance(key, str):
            raise DataError(pth, f"key {key!r} is not an image name", "keys like '<id>.jpg' (NER)")
        stem, ext = os.path.splitext(key)
        out[key] = stem if ext.lower() in _IMAGE_SUFFIXES else key
    if split_file is not None:
        known = {post.img_id for post in read_twitter(split_file)}
        out = {k: v for k, v in out.items() if v in known}
    return out


def write_crops(path: str | Path, crops: Mapping[str, Sequence[str]]) -> Path:
    """``{img_id: [crop paths relative to the JSON file's directory]}``."""
    return atomic_write_json(path, {k: list(v) for k, v in crops.items()}, indent=None)


def read_crops(
    path: str | Path, *, on_bad: str = "error", report: ReadReport | None = None
) -> dict[str, list[Path]]:
    """Read a crops JSON; paths come back resolved against the JSON file's directory."""
    r = FileReader(path, on_bad, report)
    expected = "a JSON object {img_id: [relative crop paths]}"
    obj = r.strict_json(r.read_text(expected), None)
    if not isinstance(obj, dict):
        raise r.error(f"a JSON {type(obj).__name__}", expected, 1)
    base = r.path.parent
    out: dict[str, list[Path]] = {}
    for img_id, names in obj.items():
        try:
            if not isinstance(names, list):
                raise r.error(f"image {img_id!r}: value is a {type(names).__name__}", expected)
            bad = next((n for n in names if name_problem(n)), None)
            if bad is not None:
                raise r.error(f"image {img_id!r}: {name_problem(bad)}", expected)
            out[img_id] = [safe_join(base, n, source=r.path) for n in names]
        except DataError as e:
            r.bad(e)
    r.report.records = len(out)
    return out
