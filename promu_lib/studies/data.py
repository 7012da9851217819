"""The data of the profile: the embedded toy world built (or your files checked), counted and
shown.

For the toy profiles :func:`prepare` builds the toy world (kept when it is already built for
this config); for ``paper`` it checks your real files. Either way every file is read with the
validating readers, so a missing or malformed file stops here with the file, the line and what
was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from promu_lib.config import Config
from promu_lib.report import Table, paper_value
from promu_lib.studies.common import Outputs, Results

if TYPE_CHECKING:
    from promu_lib.data.check import DataCheck

NOTEBOOK = "00_data.ipynb"
TITLE = "Data: the toy world (or your data), checked"
READER = False
TABLES = ("data_sizes", "data_labels")
FIGURES = ("data_examples",)


def prepare(cfg: Config) -> DataCheck:
    """Build the toy world of a toy profile (kept when already built for this config), then
    check the data directory; print the check and raise ``DataError`` when it fails."""
    from promu_lib.data.check import check_data
    from promu_lib.data.layout import DataLayout
    from promu_lib.errors import DataError
    from promu_lib.progress import bars_enabled

    layout = DataLayout.of(cfg)
    if cfg.data.toy is not None:
        from promu_lib.data.toyworld import build_toy_world

        build_toy_world(cfg, progress=bars_enabled(cfg.run.progress))
    check = check_data(layout)
    print(check)
    if not check.ok:
        raise DataError(layout.root, "; ".join(check.problems), "a complete data directory")
    return check


def data_tables(check: Any, cfg: Config) -> tuple[Table, Table]:
    """From a :class:`promu_lib.data.check.DataCheck`: posts per split beside the sizes the
    PROMU paper gives (``data_sizes``), and entities per type / relations per label
    (``data_labels``)."""
    splits = ("train", "dev", "test")
    common = {"digits": 0, "show_n": False}
    sizes = Table.for_config(
        cfg, "data_sizes", splits, title="Posts per split", paper_source="PROMU Sec. 5.1",
        **common,
    )  # fmt: skip
    labels = Table.for_config(
        cfg, "data_labels", splits, title="Entities per type (MNER) and relations per label (MRE)",
        with_paper=False, **common,
    )  # fmt: skip
    by_dataset: dict[str, dict[str, Any]] = {}
    for sc in check.splits:
        by_dataset.setdefault(sc.dataset, {})[sc.split] = sc
    for dataset, per_split in by_dataset.items():
        measured, reasons = {}, {}
        for split, sc in per_split.items():
            if not sc.found:
                reasons[split] = "file not found"
            elif sc.error:
                reasons[split] = "file invalid (see the data check)"
            else:
                measured[split] = sc.n_posts
        paper = paper_value("promu", "datasets", dataset) or [None] * 3
        sizes.add_row(dataset, measured, dict(zip(splits, paper)), reasons=reasons)
        names = dict.fromkeys(n for sc in per_split.values() for n in sc.labels)
        for name in names:
            counts = {s: sc.labels.get(name, 0) for s, sc in per_split.items() if s in measured}
            labels.add_row(f"{dataset} {name}", counts, reasons=reasons)
    return sizes, labels


def run(cfg: Config, results: Results | None, out_dir: str | Path, n_examples: int = 4) -> Outputs:
    """Prepare and check the data, count posts and labels, draw a few posts. ``results`` is
    unused (nothing trains here)."""
    from promu_lib import plots
    from promu_lib.data.layout import DataLayout

    check = prepare(cfg)
    out = Outputs.start(cfg, out_dir)
    for table in data_tables(check, cfg):
        out.table(table)
    fig = plots.example_posts_figure(DataLayout.of(cfg), n_examples, seed=cfg.run.seeds[0])
    out.figure(fig, "data_examples")
    return out
