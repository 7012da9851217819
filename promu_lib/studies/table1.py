"""PROMU Table 1: main results and ablations (test P/R/F1 on Twitter-2015, Twitter-2017, MNRE).

The rows that the paper fills with external systems are stood in for by models of this
repository (toy-world stand-ins named):

- text-only baselines: ``bert`` (BERT-CRF for MNER, MTB-style markers for MRE);
- HVPNeT: ``hvpnet``;
- the CLIP/Oscar/VisualBERT/BLIP pre-training rows: our fusion model pre-trained with the
  alignment losses only (ITM + CIT), pre-training variant ``align-only``;
- PROMU and its three ablations: variants ``promu``, ``no-coe``, ``no-cir``, ``hard``.

Add a row: one more :class:`~promu_lib.studies.common.Row` in :data:`ROWS` (a model of
``promu_lib.models.registry`` and, optionally, a pre-training variant of
``promu_lib.jobs.PRETRAIN_VARIANTS``).
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
    row_of,
)

NOTEBOOK = "04_table1.ipynb"
TITLE = "Table 1: main results and ablations"
READER = True
TABLES = ("table1",)
FIGURES = ("table1_f1",)
CLAIMS_TABLE = "table1_claims"

ROWS: tuple[Row, ...] = (
    Row(
        "Text only (BERT-CRF / MTB)",
        "bert",
        paper={"twitter2015": "BERT-CRF", "twitter2017": "BERT-CRF", "mnre": "MTB"},
    ),
    Row("HVPNeT", "hvpnet", paper=_same("HVPNeT")),
    Row("Fusion model, no pre-training", "promu"),
    Row(
        "Alignment-only pre-training (ITM+CIT; stands in for CLIP/BLIP rows)",
        "promu",
        "align-only",
        paper=_same("BLIP"),
    ),
    Row("PROMU (ours)", "promu", "promu", paper=_same("PROMU (Ours)")),
    Row(
        "w/o entity-object alignment",
        "promu",
        "no-coe",
        paper=_same("Ours w/o Entity-Object Alignment"),
    ),
    Row(
        "w/o relation-image alignment",
        "promu",
        "no-cir",
        paper=_same("Ours w/o Relation-Image Alignment"),
    ),
    Row("w/o soft pseudo-labels", "promu", "hard", paper=_same("Ours w/o Soft Pseudo Labels")),
)

# (claim, (model, pre-training) of the row that should be higher, of the row that should be lower)
CLAIMS: tuple[tuple[str, tuple[str, str | None], tuple[str, str | None]], ...] = (
    ("multimodal beats text-only", ("hvpnet", None), ("bert", None)),
    ("PROMU pre-training beats no pre-training", ("promu", "promu"), ("promu", None)),
    ("PROMU beats alignment-only pre-training", ("promu", "promu"), ("promu", "align-only")),
    ("entity-object alignment helps", ("promu", "promu"), ("promu", "no-coe")),
    ("relation-image alignment helps", ("promu", "promu"), ("promu", "no-cir")),
    ("soft pseudo-labels beat hard ones", ("promu", "promu"), ("promu", "hard")),
)


def jobs(cfg: Config, datasets: Sequence[str] | None = None) -> list[Finetune]:
    """Every row on every dataset (default: the profile's scope) and seed."""
    return row_jobs(ROWS, in_scope(cfg, datasets), cfg.run.seeds)


def table(cfg: Config, results: Results, datasets: Sequence[str]) -> Table:
    return results_table(
        cfg, "table1", ROWS, results, datasets,
        paper=("promu", "table1_prf"), paper_std=("promu", "table1_f1_std"),
        title=f"Main results: test P/R/F1. {recipes_note(cfg, [r.model for r in ROWS])} "
        + pretraining_note(cfg),
        paper_source="PROMU Table 1",
    )  # fmt: skip


def claims(cfg: Config, table: Table, datasets: Sequence[str]) -> list[Any]:
    """Each claim of :data:`CLAIMS` on each dataset: gap, 95% interval, verdict
    (``promu_lib.evidence``), with the paper's gap from ``table``."""
    cache: dict = {}  # PROMU's runs serve five claims: read once
    return [
        row_claim(
            cfg, "table1", claim, d, row_of(ROWS, *better), row_of(ROWS, *worse), table, cache
        )
        for claim, better, worse in CLAIMS
        for d in datasets
    ]


# benchmarks/results/
MEASUREMENTS: tuple[str, ...] = ("seed_spread", "promu_vs_hvpnet", "itm_negatives")


def measurements() -> str:
    """The controlled runs behind Table 1's reading, as last measured and committed
    (``benchmarks/seed_spread.py``: how much a pre-training seed adds to the spread;
    ``benchmarks/promu_vs_hvpnet.py``: why HVPNeT beats the fusion model here;
    ``benchmarks/itm_negatives.py``: what ITM's optional hard negatives change), each with the
    command, date and commit that wrote it."""
    import re

    from promu_lib.paths import resolve

    parts = []
    for name in MEASUREMENTS:
        path = resolve("benchmarks/results") / f"{name}.md"
        if not path.is_file():
            parts.append(f"*benchmarks/{name}.py has not been run on this checkout.*")
            continue
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"<!-- written by `(.*?)` on (\S+), commit (\S+); do not edit -->",
                      r"*Measured by `\1` on \2 (commit \3).*", text)  # fmt: skip
        parts.append(text.replace("\n# ", "\n### ", 1))
    return "\n\n".join(parts)


def run(
    cfg: Config, results: Results, out_dir: str | Path, datasets: Sequence[str] | None = None
) -> Outputs:
    """Table 1, its bar chart and the claims checked on it."""
    from promu_lib import plots

    datasets = in_scope(cfg, datasets)
    out = Outputs.start(cfg, out_dir)
    t = out.table(table(cfg, results, datasets))
    out.figure(plots.table_bars(t, title="Table 1: test F1"), "table1_f1")
    out.add_claims(cfg, claims(cfg, t, datasets), CLAIMS_TABLE)
    return out
