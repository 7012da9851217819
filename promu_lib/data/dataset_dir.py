"""``promu data check DIR`` on a directory that holds one dataset's files, not a ``data.root``.

What a user has after a download is one dataset's directory: ``train.txt valid.txt test.txt``
(Twitter-2015 or -2017, the UMT/HVPNeT release) or MNRE's ``ours_*.txt`` / ``mnre_*.txt``.
:func:`detect` recognises such a directory and returns the :class:`DataLayout` that reads it
(``data.root`` its parent, ``data.<dataset>_dir`` its name, the images where they usually sit
beside it), with the ``--set data.*`` keys that point a config at it. :func:`layout_help` is
what to print when a directory holds neither a layout nor a dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from promu_lib.config import DataConfig
from promu_lib.data.layout import (
    _MNRE_SPLIT_FILES,
    _TWITTER_SPLIT_FILES,
    MNRE_ORIGINAL_SPLIT_FILES,
    NER_DATASETS,
    DataLayout,
)
from promu_lib.errors import PromuError


class NotThatDataset(PromuError):
    """``--dataset`` names a dataset of the other kind than the directory's files."""


@dataclass(frozen=True)
class DatasetDir:
    """A directory holding one dataset's split files, and how to read it."""

    directory: Path
    dataset: str
    style: str  # "Twitter" | "MNRE"
    layout: DataLayout
    settings: dict[str, str]  # data.* key -> value that point a config at these files
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """What was recognised and the ``--set`` options that give a config this layout."""
        names = [*_TWITTER_SPLIT_FILES.values(), *_MNRE_SPLIT_FILES.values()]
        names += MNRE_ORIGINAL_SPLIT_FILES.values()
        files = ", ".join(repr(n) for n in names if (self.directory / n).is_file())
        sets = " ".join(f"--set data.{k}={_quoted(v)}" for k, v in self.settings.items())
        lines = [
            f"{self.directory} holds one dataset's files ({self.style}-style: {files}); "
            f"checked as {self.dataset}.",
            f"To train on it: --profile paper {sets}",
        ]
        return "\n".join(lines + [f"Note: {n}" for n in self.notes])


def _quoted(value: str) -> str:
    return f"'{value}'" if any(c.isspace() for c in value) else value


def _has_any(directory: Path, names) -> bool:
    return any((directory / n).is_file() for n in names)


def _first_dir(candidates: list[Path], fallback: Path) -> Path:
    return next((c for c in candidates if c.is_dir()), fallback)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _twitter_name(directory: Path, dataset: str | None) -> tuple[str, list[str]]:
    """Which Twitter dataset: ``dataset`` when given, else from the directory's name."""
    if dataset is not None:
        if dataset not in NER_DATASETS:
            raise NotThatDataset(
                f"{directory} holds Twitter-style files (train.txt valid.txt test.txt), not "
                f"{dataset}'s; give --dataset twitter2015 or --dataset twitter2017"
            )
        return dataset, []
    name = directory.name.lower()
    if "2017" in name:
        return "twitter2017", []
    if "2015" in name:
        return "twitter2015", []
    return "twitter2015", [
        f"the name {directory.name!r} does not say 2015 or 2017: read as twitter2015 "
        "(give --dataset twitter2017 for Twitter-2017)"
    ]


def _twitter(directory: Path, data: DataConfig, dataset: str | None) -> DatasetDir:
    name, notes = _twitter_name(directory, dataset)
    root = directory.parent
    images = _first_dir(
        [root / f"{directory.name}_images", root / f"{name}_images", directory / "images"],
        root / f"{directory.name}_images",
    )
    settings = {
        "root": str(root),
        f"{name}_dir": directory.name,
        f"{name}_images": _relative(images, root),
    }
    if not images.is_dir():
        notes.append(
            f"no image directory found beside it: the <IMGID>.jpg files are looked for in "
            f"{images} (set data.{name}_images to where they are)"
        )
    return DatasetDir(directory, name, "Twitter", _layout(data, settings), settings, notes)


def _mnre(directory: Path, data: DataConfig, dataset: str | None) -> DatasetDir:
    if dataset not in (None, "mnre"):
        raise NotThatDataset(
            f"{directory} holds MNRE-style files, not {dataset}'s; give --dataset mnre"
        )
    root = directory.parent
    images = _first_dir(
        [root / "img_org", root / "mnre_images", directory / "img_org", directory / "images"],
        root / "mnre_images",
    )
    settings = {
        "root": str(root),
        "mnre_dir": directory.name,
        "mnre_images": _relative(images, root),
    }
    notes = []
    if not images.is_dir():
        notes.append(
            f"no image directory found beside it: images are looked for in {images}/"
            "{train,val,test}/ (set data.mnre_images to where they are)"
        )
    if not (directory / "ours_rel2id.json").is_file() and (root / "ours_rel2id.json").is_file():
        notes.append(
            f"ours_rel2id.json is one level up (HVPNeT's layout): link it next to the text "
            f"files: ln -s ../ours_rel2id.json {directory}/"
        )
    return DatasetDir(directory, "mnre", "MNRE", _layout(data, settings), settings, notes)


def _layout(data: DataConfig, settings: dict[str, str]) -> DataLayout:
    keys = {k: v for k, v in settings.items() if k != "root"}
    return DataLayout(root=Path(settings["root"]), data=dataclasses.replace(data, **keys))


def detect(directory: Path, data: DataConfig, datasets: tuple[str, ...] = ()) -> DatasetDir | None:
    """The dataset whose split files lie directly in ``directory`` (None when none does: then
    it is read as a ``data.root``). ``datasets`` (``--dataset``, at most one here) names which
    one when the files cannot tell (Twitter-2015 and -2017 share a format); raises
    :class:`NotThatDataset` when it does not fit the files."""
    if len(datasets) > 1:
        if detect(directory, data) is not None:
            raise NotThatDataset(
                f"{directory} holds one dataset's files; give at most one --dataset"
            )
        return None
    dataset = datasets[0] if datasets else None
    if _has_any(directory, _TWITTER_SPLIT_FILES.values()):
        return _twitter(directory, data, dataset)
    mnre_names = [*_MNRE_SPLIT_FILES.values(), *MNRE_ORIGINAL_SPLIT_FILES.values()]
    if _has_any(directory, mnre_names):
        return _mnre(directory, data, dataset)
    return None


def layout_help(root: Path, data: DataConfig) -> str:
    """The layout ``promu data check`` expects under ``root`` and the keys that move it."""
    rows = [
        (f"{data.twitter2015_dir}/train.txt valid.txt test.txt", "data.twitter2015_dir"),
        (f"{data.twitter2015_images}/<IMGID>.jpg", "data.twitter2015_images"),
        (f"{data.twitter2017_dir}/train.txt valid.txt test.txt", "data.twitter2017_dir"),
        (f"{data.twitter2017_images}/<IMGID>.jpg", "data.twitter2017_images"),
        (f"{data.mnre_dir}/ours_train.txt ours_val.txt ours_test.txt", "data.mnre_dir"),
        (f"{data.mnre_dir}/ours_rel2id.json", "data.mnre_dir"),
        (f"{data.mnre_images}/train/ val/ test/", "data.mnre_images"),
    ]
    width = max(len(path) for path, _ in rows)
    tree = "\n".join(f"  {path:<{width}}  {key}" for path, key in rows)
    return (
        f"Nothing of the expected layout was found in {root}. Either give it this layout\n"
        "(README, 'Where the files go'; each path is a data.* key, relative to data.root):\n"
        f"{tree}\n"
        "or point a config at your files (--set data.root=DIR --set data.twitter2015_dir=..., "
        "or a\nconfig file's data section), or run `promu data check` on the directory that "
        "holds one\ndataset's files (train.txt valid.txt test.txt, or MNRE's ours_*.txt / "
        "mnre_*.txt)."
    )
