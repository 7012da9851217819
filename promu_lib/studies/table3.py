"""PROMU Table 3: prompt designs.

Two entity templates, (1) "This is an image of [ENTITY]." and (2) "An image of [ENTITY] is
shown here.", times three relation templates (A), (B), (C) (``promu_lib.mining``): each pair
mines its own pseudo-labels (the teacher is shared), pre-trains PROMU and fine-tunes it. Pair
1+A is Table 1's PROMU row. The paper finds active-voice prompts slightly better than passive
ones: :func:`claims` compares the all-active pair 1+A with the all-passive 2+B.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promu_lib.config import Config
from promu_lib.jobs import Finetune, Pretrain
from promu_lib.report import Table, paper_value
from promu_lib.studies.common import (
    NOT_RUN,
    Outputs,
    Results,
    in_scope,
    jobs_claim,
    per_seed,
    pretraining_note,
    seeds_of,
)

NOTEBOOK = "06_table3.ipynb"
TITLE = "Table 3: prompt designs"
READER = True
TABLES = ("table3",)
FIGURES = ("table3_f1",)
CLAIMS_TABLE = "table3_claims"


ENTITY_TEMPLATE_NAMES: tuple[str, ...] = ("1", "2")  # paper's (1), (2) -> mining index 0, 1


RELATION_TEMPLATE_NAMES: tuple[str, ...] = ("A", "B", "C")  # paper's A, B, C -> index 0, 1, 2


def template_pairs() -> list[tuple[str, int, int]]:
    """(paper name "1+A", entity template index, relation template index) for the 2 x 3 grid."""
    return [
        (f"{e}+{r}", i, j)
        for i, e in enumerate(ENTITY_TEMPLATE_NAMES)
        for j, r in enumerate(RELATION_TEMPLATE_NAMES)
    ]


def template_job(dataset: str, seed: int, entity: int, relation: int) -> Finetune:
    init = Pretrain("promu", entity_template=entity, relation_template=relation, seed=seed)
    return Finetune(dataset, "promu", init=init, seed=seed)


def template_jobs(datasets: Sequence[str], seeds: Sequence[int]) -> list[Finetune]:
    return [
        template_job(d, s, e, r) for _, e, r in template_pairs() for d in datasets for s in seeds
    ]


def template_table(cfg: Config, results: Results, datasets: Sequence[str]) -> Table:
    """Test F1 of PROMU pre-trained with each (entity, relation) template pair."""
    from promu_lib.mining import ENTITY_TEMPLATES, RELATION_TEMPLATES

    table = Table.for_config(
        cfg, "table3", list(datasets), paper_source="PROMU Table 3",
        title="Prompt designs: test F1 of PROMU pre-trained with entity template (1)/(2) and "
        "relation template (A)/(B)/(C). " + pretraining_note(cfg),
    )  # fmt: skip
    for name, e, r in template_pairs():
        measured, reasons = {}, {}
        for d in datasets:
            values = per_seed(results, [template_job(d, s, e, r) for s in seeds_of(cfg)])
            if values:
                measured[d] = values
            else:
                reasons[d] = NOT_RUN
        published = {d: paper_value("promu", "table3", "f1", name, d) for d in datasets}
        table.add_row(
            name, measured, published, reasons=reasons,
            rerun=f"promu pretrain --set mining.entity_template={e} "
            f"--set mining.relation_template={r}  # then promu finetune --model promu --init ..",
            config={"entity_template": ENTITY_TEMPLATES[e], "relation_template": RELATION_TEMPLATES[r]},
        )  # fmt: skip
    return table


def jobs(cfg: Config, datasets: Sequence[str] | None = None) -> list[Finetune]:
    """Every template pair on every dataset (default: ``cfg.scope.table3_datasets``) and seed."""
    return template_jobs(in_scope(cfg, datasets, "table3_datasets"), cfg.run.seeds)


def templates() -> list[str]:
    """``"1+A: 'This is ...' + 'This image ...'"`` per pair, in the paper's numbering."""
    from promu_lib.mining import ENTITY_TEMPLATES, RELATION_TEMPLATES

    return [
        f"{name}: {ENTITY_TEMPLATES[e]!r} + {RELATION_TEMPLATES[r]!r}"
        for name, e, r in template_pairs()
    ]


def claims(cfg: Config, table: Table, datasets: Sequence[str]) -> list[Any]:
    """Active voice (1+A) against passive voice (2+B), per dataset (the paper: active slightly
    better, within 1 F1)."""
    rows = {r.name: r for r in table.rows}
    out = []
    for d in datasets:
        a, b = rows["1+A"].cells[d].paper, rows["2+B"].cells[d].paper
        paper = None if a is None or b is None else a - b
        out.append(
            jobs_claim(
                cfg, "table3", "active-voice prompts (1+A) beat passive ones (2+B)", d,
                ("1+A", lambda s, d=d: template_job(d, s, 0, 0)),
                ("2+B", lambda s, d=d: template_job(d, s, 1, 1)), paper,
            )
        )  # fmt: skip
    return out


def run(
    cfg: Config, results: Results, out_dir: str | Path, datasets: Sequence[str] | None = None
) -> Outputs:
    from promu_lib import plots

    datasets = in_scope(cfg, datasets, "table3_datasets")
    out = Outputs.start(cfg, out_dir)
    t = out.table(template_table(cfg, results, datasets))
    out.figure(plots.table_bars(t, title="Table 3: test F1 per prompt pair"), "table3_f1")
    out.add_claims(cfg, claims(cfg, t, datasets), CLAIMS_TABLE)
    return out
