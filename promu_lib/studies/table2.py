"""PROMU Table 2: pre-training added on top of another fusion model.

The paper adds each pre-training to MMIB; MMIB is not built here: HVPNeT stands in for it, its
BERT initialised from the text encoder of a pre-trained fusion encoder (alignment-only or
PROMU; see ``promu_lib.models.task.load_pretrained_backbone``). The paper's MMIB rows are shown
beside for reference only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from promu_lib.config import Config
from promu_lib.jobs import Finetune
from promu_lib.report import Table
from promu_lib.studies.common import (
    Outputs,
    Results,
    Row,
    _same,
    compare_rows,
    in_scope,
    results_table,
    row_jobs,
)

NOTEBOOK = "05_table2.ipynb"
TITLE = "Table 2: pre-training on top of a fusion model"
READER = True
TABLES = ("table2",)
FIGURES = ("table2_f1",)

ROWS: tuple[Row, ...] = (
    Row("HVPNeT", "hvpnet", paper=_same("MMIB")),
    Row("HVPNeT + alignment-only pre-training", "hvpnet", "align-only", paper=_same("MMIB+BLIP")),
    Row("HVPNeT + PROMU pre-training", "hvpnet", "promu", paper=_same("MMIB+Ours")),
)


def jobs(cfg: Config, datasets: Sequence[str] | None = None) -> list[Finetune]:
    return row_jobs(ROWS, in_scope(cfg, datasets), cfg.run.seeds)


def table(cfg: Config, results: Results, datasets: Sequence[str]) -> Table:
    return results_table(
        cfg, "table2", ROWS, results, datasets, paper=("promu", "table2_f1"), metrics=("F1",),
        title="Pre-training added to a fusion model: test F1 (HVPNeT stands in for MMIB)",
        paper_source="PROMU Table 2 (MMIB rows)",
    )  # fmt: skip


def claims(table: Table) -> list[str]:
    """Each pre-training over plain HVPNeT, then PROMU over alignment-only."""
    lines = [compare_rows(table, better.name, ROWS[0].name).sentence() for better in ROWS[1:]]
    return [*lines, compare_rows(table, ROWS[2].name, ROWS[1].name).sentence()]


def run(
    cfg: Config, results: Results, out_dir: str | Path, datasets: Sequence[str] | None = None
) -> Outputs:
    from promu_lib import plots

    out = Outputs.start(cfg, out_dir)
    t = out.table(table(cfg, results, in_scope(cfg, datasets)))
    out.figure(plots.table_bars(t, title="Table 2: test F1"), "table2_f1")
    out.lines = claims(t)
    return out
