"""PROMU Fig 4: F1 gains from pre-training on the tail relations and on ORG / MISC.

The paper: gains are largest where data is scarce, on the 8 rarest relations of MNRE (+25.5%
on average vs +9.9% over all relations) and on ORG and MISC (+14.0%, +9.5% vs +9.7% / +6.0%
over all types). Here the gain is PROMU pre-training over the same fusion model fine-tuned from
scratch (Table 1's runs), per seed; the tail is the 8 relations with the fewest training lines
among those in the test split. Relative gains are in percent of the scratch model's F1 (a
class the scratch model never gets right has none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promu_lib.analysis import f1_gains, mean_gain, tail_relations
from promu_lib.config import Config
from promu_lib.jobs import Finetune
from promu_lib.report import Table, paper_value
from promu_lib.studies.common import (
    Outputs,
    Results,
    in_scope,
    jobs_claim,
    pretraining_note,
    promu_job,
    scratch_job,
    scratch_vs_promu_jobs,
    seed_counts,
)

NOTEBOOK = "08_fig4_tail.ipynb"
TITLE = "Fig 4: gains on tail relations and ORG/MISC"
READER = True
TABLES = ("fig4_gains",)
FIGURES = ("fig4_tail",)
CLAIMS_TABLE = "fig4_tail_claims"
GAIN_GAP = "mean per-class F1 gain on the subset minus over all classes (points)"


FIG4_ROWS: tuple[tuple[str, str | None], ...] = (
    ("MRE: the 8 tail relations", "fig4_tail_relations_avg_f1_gain_pct"),
    ("MRE: all relations", "fig4_all_relations_avg_f1_gain_pct"),
    ("MNER: ORG", "fig4_ner_org_gain_pct"),
    ("MNER: MISC", "fig4_ner_misc_gain_pct"),
    ("MNER twitter2015: all types", None),
    ("MNER twitter2017: all types", None),
)


FIG4_COLUMNS: tuple[str, str] = ("gain (F1 points)", "gain (%)")


def per_class_f1(result: Mapping[str, Any]) -> dict[str, float]:
    """Test F1 per entity type (MNER) or per relation (MRE) of a fine-tuning result."""
    test = result["test"]
    per = test.get("per_relation") if "per_relation" in test else test.get("per_type", {})
    return {k: float(v["f1"]) for k, v in per.items()}


def class_support(result: Mapping[str, Any]) -> dict[str, int]:
    test = result["test"]
    per = test.get("per_relation") if "per_relation" in test else test.get("per_type", {})
    return {k: int(v["support"]) for k, v in per.items()}


def tail_set(train_counts: Mapping[str, int], result: Mapping[str, Any], k: int = 8) -> list[str]:
    """The ``k`` rarest relations in training among those with test examples (a relation
    absent from the test split has no F1 to gain)."""
    support = class_support(result)
    present = {r: c for r, c in train_counts.items() if support.get(r, 0) > 0}
    return tail_relations(present, k)


@dataclass
class Fig4Gains:
    """Per-seed gains of ``new`` over ``base``: ``per_class[group]`` maps class -> list of
    per-seed gains (F1 points), ``summary[row][column]`` holds per-seed averages."""

    per_class: dict[str, dict[str, list[float]]]
    summary: dict[str, dict[str, list[float]]]
    tail: list[str]


def _summaries(
    a: Mapping[str, float], b: Mapping[str, float], classes: Sequence[str]
) -> tuple[float, float]:
    """Average gain over ``classes`` in F1 points and in percent of the base F1."""
    return (
        mean_gain(f1_gains(a, b, classes)),
        mean_gain(f1_gains(a, b, classes, relative=True)),
    )


def fig4_gains(
    results: Results,
    seeds: Sequence[int],
    train_relation_counts: Mapping[str, int] | None,
    base: Callable[[str, int], Any] | None = None,
    new: Callable[[str, int], Any] | None = None,
    ner_datasets: Sequence[str] = ("twitter2015", "twitter2017"),
    k: int = 8,
) -> Fig4Gains:
    """Gains of ``new(dataset, seed)`` over ``base(dataset, seed)`` (both job factories):
    per tail relation and per entity type, and the averages PROMU's Fig 4 reports.

    Defaults: ``base`` = :func:`scratch_job`, ``new`` = :func:`promu_job`. Relative gains
    where the base F1 is 0 are left out of the averages (NaN)."""
    base, new = base or scratch_job, new or promu_job
    per_class: dict[str, dict[str, list[float]]] = {}
    summary: dict[str, dict[str, list[float]]] = {
        r: {c: [] for c in FIG4_COLUMNS} for r, _ in FIG4_ROWS
    }
    tail: list[str] = []

    def add(row: str, pair: tuple[float, float]) -> None:
        for col, v in zip(FIG4_COLUMNS, pair):
            if math.isfinite(v):
                summary[row][col].append(v)

    for s in seeds:
        a, b = results.get(base("mnre", s)), results.get(new("mnre", s))
        if a is not None and b is not None and train_relation_counts is not None:
            fa, fb = per_class_f1(a), per_class_f1(b)
            tail = tail or tail_set(train_relation_counts, a, k)
            every = sorted(r for r in class_support(a) if class_support(a)[r] > 0)
            for r, g in f1_gains(fa, fb, tail).items():
                per_class.setdefault("mnre", {}).setdefault(r, []).append(g)
            add(FIG4_ROWS[0][0], _summaries(fa, fb, tail))
            add(FIG4_ROWS[1][0], _summaries(fa, fb, every))
        pooled: dict[str, list[tuple[float, float]]] = {"ORG": [], "MISC": []}
        for d in ner_datasets:
            a, b = results.get(base(d, s)), results.get(new(d, s))
            if a is None or b is None:
                continue
            fa, fb = per_class_f1(a), per_class_f1(b)
            types = sorted(t for t in class_support(a) if class_support(a)[t] > 0)
            for t, g in f1_gains(fa, fb, types).items():
                per_class.setdefault(d, {}).setdefault(t, []).append(g)
            for typ in pooled:
                if typ in types:
                    pooled[typ].append(_summaries(fa, fb, [typ]))
            row = f"MNER {d}: all types"
            if row in summary:
                add(row, _summaries(fa, fb, types))
        for typ, pairs in pooled.items():  # one value per seed: the mean over the Twitter sets
            if pairs:
                add(f"MNER: {typ}", tuple(_nanmean(col) for col in zip(*pairs)))
    return Fig4Gains(per_class, summary, tail)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def fig4_table(cfg: Config, gains: Fig4Gains) -> Table:
    """The averages of Fig 4 beside the paper's (relative gains, in percent)."""
    table = Table.for_config(
        cfg, "fig4_gains", FIG4_COLUMNS, paper_source="PROMU Sec. 5, Fig 4 (relative gains, %)",
        title="Average F1 gain of PROMU pre-training over the same fusion model without it: "
        "the 8 rarest relations vs all relations, ORG/MISC vs all entity types "
        "(MNER rows: ORG and MISC pooled over the Twitter sets; % of the base F1, classes "
        "with base F1 0 left out). " + pretraining_note(cfg),
    )  # fmt: skip
    # the paper's "9.7% and 6.0% for all entity types": Twitter-2015, then Twitter-2017
    all_types = paper_value("promu", "text_claims", "fig4_ner_all_types_gain_pct") or [None, None]
    for i, (name, key) in enumerate(FIG4_ROWS):
        p = paper_value("promu", "text_claims", key) if key else all_types[i - 4]
        values = gains.summary[name]
        reasons = {c: "no pair of runs with a defined gain" for c in FIG4_COLUMNS if not values[c]}
        table.add_row(name, values, {FIG4_COLUMNS[1]: p}, reasons=reasons)
    return table


def train_relation_counts(cfg: Config) -> dict[str, int]:
    """Lines per relation in the MNRE train split (the tail of Fig 4 is the rarest)."""
    from collections import Counter

    from promu_lib.data.formats import read_mnre
    from promu_lib.data.layout import DataLayout

    layout = DataLayout.of(cfg)
    posts = read_mnre(layout.split_file("mnre", "train"), on_bad=cfg.data.on_bad_record)
    return dict(Counter(p.relation for p in posts))


def jobs(cfg: Config, datasets: Sequence[str] | None = None) -> list[Finetune]:
    """The fusion model with and without PROMU pre-training on every dataset and seed."""
    return scratch_vs_promu_jobs(in_scope(cfg, datasets), cfg.run.seeds)


def _gain_claim(cfg: Config, claim: str, dataset: str, subset: Sequence[str], cache: dict) -> Any:
    """PROMU over scratch on ``dataset``: is the mean per-class gain on ``subset`` larger than
    over every class with test support? (Points, not the paper's percent: a relative gain is
    undefined where the scratch model scores 0.)"""
    from promu_lib.evidence import subset_gain_gap

    seed = cfg.run.seeds[0]
    first = seed_counts(cfg, [scratch_job(dataset, seed)], cache)
    better = ("PROMU pre-training", lambda s: promu_job(dataset, s))
    worse = ("no pre-training", lambda s: scratch_job(dataset, s))
    if first is None:
        return jobs_claim(cfg, "fig4_tail", claim, dataset, better, worse, cache=cache)
    gold = first[0].array[..., 2].sum(0)
    classes = [c for c, n in zip(first[0].classes, gold) if n > 0]
    sub = [classes.index(c) for c in subset if c in classes]
    stat = subset_gain_gap(sub, range(len(classes)))
    return jobs_claim(
        cfg, "fig4_tail", claim, dataset, better, worse, cache=cache,
        statistic=stat, classes=classes, statistic_name=GAIN_GAP,
    )  # fmt: skip


def claims(cfg: Config, datasets: Sequence[str], tail: Sequence[str]) -> list[Any]:
    """Fig 4's claims: the gain of pre-training is larger on the tail relations (MNRE), and on
    ORG and on MISC (each Twitter set), than over all classes."""
    out, cache = [], {}  # ORG and MISC compare the same runs: read once
    if "mnre" in datasets and tail:
        out.append(_gain_claim(cfg, "larger gain on the 8 tail relations", "mnre", tail, cache))
    for d in (d for d in datasets if d != "mnre"):
        for typ in ("ORG", "MISC"):
            out.append(_gain_claim(cfg, f"larger gain on {typ}", d, [typ], cache))
    return out


def run(
    cfg: Config, results: Results, out_dir: str | Path, datasets: Sequence[str] | None = None
) -> Outputs:
    """The gains per class and their averages beside the paper's."""
    from promu_lib import plots

    datasets = in_scope(cfg, datasets)
    counts = train_relation_counts(cfg) if "mnre" in datasets else None
    ner = [d for d in datasets if d != "mnre"]
    gains = fig4_gains(results, cfg.run.seeds, counts, ner_datasets=ner)
    out = Outputs.start(cfg, out_dir)
    tail = {r: counts[r] for r in gains.tail} if counts else None
    out.lines = [f"tail relations (train lines): {tail}"]
    out.table(fig4_table(cfg, gains))
    out.figure(plots.fig4_figure(gains), "fig4_tail")
    out.add_claims(cfg, claims(cfg, datasets, gains.tail), CLAIMS_TABLE)
    return out
