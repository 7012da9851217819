"""PROMU Table 2: pre-training added on top of another fusion model.

The paper adds each pre-training to MMIB ("continued using multimodal pre-training based on
MMIB": its fusion is pre-trained too). Neither is done here: HVPNeT stands in for MMIB, and only
its BERT is initialised, from the text encoder of a pre-trained fusion encoder (alignment-only or
PROMU; see ``promu_lib.models.task.load_pretrained_backbone``); HVPNeT's own fusion (its visual
prefix and gates) starts from scratch, never pre-trained. The rows are named for that ("HVPNeT
+ PROMU text encoder"), and the paper's MMIB rows are shown beside for reference only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promu_lib.config import Config
from promu_lib.jobs import Finetune
from promu_lib.report import Table
from promu_lib.studies.common import (
    Outputs,
    Results,
    Row,
    _same,
    in_scope,
    pretraining_note,
    recipes_note,
    results_table,
    row_claim,
    row_jobs,
)

NOTEBOOK = "05_table2.ipynb"
TITLE = "Table 2: a pre-trained text encoder in another fusion model"
READER = True
TABLES = ("table2",)
FIGURES = ("table2_f1",)
CLAIMS_TABLE = "table2_claims"

ROWS: tuple[Row, ...] = (
    Row("HVPNeT", "hvpnet", paper=_same("MMIB")),
    Row("HVPNeT + alignment-only text encoder", "hvpnet", "align-only", paper=_same("MMIB+BLIP")),
    Row("HVPNeT + PROMU text encoder", "hvpnet", "promu", paper=_same("MMIB+Ours")),
)


def jobs(cfg: Config, datasets: Sequence[str] | None = None) -> list[Finetune]:
    return row_jobs(ROWS, in_scope(cfg, datasets), cfg.run.seeds)


def table(cfg: Config, results: Results, datasets: Sequence[str]) -> Table:
    return results_table(
        cfg, "table2", ROWS, results, datasets, paper=("promu", "table2_f1"), metrics=("F1",),
        title="A pre-trained text encoder in a fusion model: test F1 (HVPNeT stands in for MMIB; "
        "only its BERT starts from the pre-training, its visual prefix from scratch, where the "
        "paper pre-trains MMIB's fusion too). " + recipes_note(cfg, [r.model for r in ROWS])
        + " " + pretraining_note(cfg),
        paper_source="PROMU Table 2 (MMIB rows)",
    )  # fmt: skip


# (claim, row that should be higher, row that should be lower): indices into ROWS
CLAIMS: tuple[tuple[str, int, int], ...] = (
    ("PROMU's text encoder adds to the fusion model", 2, 0),
    ("the alignment-only text encoder adds to the fusion model", 1, 0),
    ("PROMU's text encoder adds more than the alignment-only one", 2, 1),
)


def claims(cfg: Config, table: Table, datasets: Sequence[str]) -> list[Any]:
    """Each claim of :data:`CLAIMS` on each dataset: gap, 95% interval, verdict."""
    cache: dict = {}  # every row serves two claims: read once
    return [
        row_claim(cfg, "table2", claim, d, ROWS[b], ROWS[w], table, cache)
        for claim, b, w in CLAIMS
        for d in datasets
    ]


def run(
    cfg: Config, results: Results, out_dir: str | Path, datasets: Sequence[str] | None = None
) -> Outputs:
    from promu_lib import plots

    datasets = in_scope(cfg, datasets)
    out = Outputs.start(cfg, out_dir)
    t = out.table(table(cfg, results, datasets))
    out.figure(plots.table_bars(t, title="Table 2: test F1"), "table2_f1")
    out.add_claims(cfg, claims(cfg, t, datasets), CLAIMS_TABLE)
    return out
