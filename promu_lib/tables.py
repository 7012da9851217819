"""The stage notebooks' tables, built from job results (``experiments.run_jobs``).

Each builder takes the ``{job: result}`` dict of :func:`promu_lib.experiments.run_jobs` (a
fine-tuning result is its ``metrics.json`` dict) and returns a :class:`promu_lib.report.Table`:
one value per seed in every measured cell, the papers' number beside it, and an empty cell
with its reason where a job was not run (a dataset or seed left out by the notebook's
parameters). Nothing here trains; the notebooks ask :func:`run_jobs` for the jobs that
:func:`row_jobs` (and friends) list, then pass the results in.

- PROMU Table 1 / Table 2 / HVPNeT Table 1 (variants): :func:`results_table`
- PROMU Table 3 (prompt templates): :func:`template_jobs`, :func:`template_table`
- PROMU Fig 4 (gains on tail relations and ORG/MISC): :func:`fig4_gains`, :func:`fig4_table`
- HVPNeT low-resource curve and cross-task transfer: :func:`low_resource_table`,
  :func:`cross_task_jobs`, :func:`cross_task_table`
- stages 01-03: :func:`mining_summary`, :func:`pseudo_label_agreement`,
  :func:`pretrain_summary`, :func:`finetune_summary`
- a claim of a paper checked on measured rows: :func:`compare_rows`
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promu_lib.analysis import f1_gains, mean_gain, tail_relations
from promu_lib.config import Config
from promu_lib.experiments import PRETRAIN_VARIANTS, Finetune, Pretrain, Row
from promu_lib.report import Table, paper_value

Results = Mapping[Any, Any]  # job -> result, as run_jobs returns it

METRICS: dict[str, str] = {"P": "precision", "R": "recall", "F1": "f1"}
NOT_RUN = "not run (left out by this notebook's parameters)"


def seeds_of(cfg: Config) -> list[int]:
    return list(cfg.run.seeds)


# ---------------------------------------------------------------------------------------------
# Reading results
# ---------------------------------------------------------------------------------------------


def result_metric(
    result: Mapping[str, Any] | None, key: str = "f1", split: str = "test"
) -> float | None:
    """``result[split][key]`` of a fine-tuning result (``None`` for a missing result)."""
    if result is None or result.get(split) is None:
        return None
    return float(result[split][key])


def per_seed(
    results: Results, jobs: Sequence[Any], key: str = "f1", split: str = "test"
) -> list[float]:
    """``result[split][key]`` of each job (one per seed) that has a result."""
    values = (result_metric(results.get(job), key, split) for job in jobs)
    return [v for v in values if v is not None]


def row_jobs(
    rows: Sequence[Row], datasets: Sequence[str], seeds: Sequence[int], **kw: Any
) -> list[Finetune]:
    """Every fine-tuning job of ``rows`` x ``datasets`` x ``seeds`` (``kw`` goes to Row.job)."""
    return [r.job(d, s, **kw) for r in rows for d in datasets for s in seeds]


def finetune_results(results: Results) -> dict[Finetune, dict[str, Any]]:
    """Only the fine-tuning results (run_jobs also returns what the jobs depended on)."""
    return {j: r for j, r in results.items() if isinstance(j, Finetune)}


# ---------------------------------------------------------------------------------------------
# Result tables (PROMU Tables 1-2, HVPNeT Table 1)
# ---------------------------------------------------------------------------------------------


def _paper_metric(entry: Any, metric: str) -> float | None:
    """A published [P, R, F1] triple or a bare F1 -> the value of ``metric`` (P/R/F1)."""
    if entry is None:
        return None
    if isinstance(entry, list):
        return float(entry[list(METRICS).index(metric)])
    return float(entry) if metric == "F1" else None


def row_rerun(row: Row) -> str:
    """The shell commands that rerun one row on one dataset."""
    model = f"promu finetune --dataset DATASET --model {row.model}"
    if row.pretrain is None:
        return model
    sets = " ".join(f"--set {k}={v}" for k, v in PRETRAIN_VARIANTS[row.pretrain].items())
    pre = f"promu pretrain {sets}".rstrip()
    return f"{pre}  # prints ENCODER; then: {model} --init ENCODER"


def results_table(
    cfg: Config,
    name: str,
    rows: Sequence[Row],
    results: Results,
    datasets: Sequence[str],
    *,
    paper: tuple[str, ...] = ("promu", "table1_prf"),
    paper_std: tuple[str, ...] | None = None,
    metrics: Sequence[str] = ("P", "R", "F1"),
    title: str = "",
    paper_source: str = "",
) -> Table:
    """Test P/R/F1 (``metrics``) per dataset of each row, per seed, beside the paper's.

    ``paper``: where the published rows live (``paper_numbers()`` keys); each row's
    ``row.paper[dataset]`` names its published row. ``paper_std``: where published F1 standard
    deviations live, if any. Columns are ``"<dataset> <metric>"``.
    """
    seeds = seeds_of(cfg)
    columns = [f"{d} {m}" for d in datasets for m in metrics]
    table = Table.for_config(cfg, name, columns, title=title, paper_source=paper_source, digits=2)
    for row in rows:
        measured, published, reasons = {}, {}, {}
        for d in datasets:
            key = row.paper.get(d)
            entry = paper_value(*paper, key, d) if key else None
            std = paper_value(*paper_std, key, d) if (key and paper_std) else None
            for m in metrics:
                col = f"{d} {m}"
                values = per_seed(results, [row.job(d, s) for s in seeds], METRICS[m])
                if values:
                    measured[col] = values
                else:
                    reasons[col] = NOT_RUN
                p = _paper_metric(entry, m)
                published[col] = (p, std) if (p is not None and m == "F1" and std) else p
        config = {"model": row.model, "pretrain": row.pretrain, "paper_row": dict(row.paper)}
        if row.pretrain:
            config["pretrain_overrides"] = PRETRAIN_VARIANTS[row.pretrain]
        table.add_row(
            row.name, measured, published,
            reasons=reasons, rerun=row_rerun(row), config=config,
        )  # fmt: skip
    return table


# ---------------------------------------------------------------------------------------------
# Claims: one measured row against another, beside the paper's difference
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """``better`` minus ``worse`` (mean over seeds) per column, and the paper's difference."""

    better: str
    worse: str
    diffs: dict[str, float | None]
    paper: dict[str, float | None]

    @property
    def holds(self) -> dict[str, bool]:
        """Per column with both rows measured: whether ``better`` is above ``worse``."""
        return {c: d > 0 for c, d in self.diffs.items() if d is not None}

    def sentence(self) -> str:
        """E.g. ``"PROMU (ours) vs w/o soft pseudo-labels: +1.20 on twitter2015 F1 (paper
        +1.85), ... — higher in 2 of 3 columns."``"""
        parts = []
        for col, d in self.diffs.items():
            p = self.paper.get(col)
            paper = f" (paper {p:+.2f})" if p is not None else ""
            parts.append(f"{'n/a' if d is None else f'{d:+.2f}'} on {col}{paper}")
        n_up, n = sum(self.holds.values()), len(self.holds)
        verdict = f"higher in {n_up} of {n} measured columns" if n else "not measured"
        return f"{self.better} vs {self.worse}: " + ", ".join(parts) + f" — {verdict}."


def compare_rows(
    table: Table, better: str, worse: str, columns: Sequence[str] | None = None
) -> Comparison:
    """Difference of the mean of row ``better`` and row ``worse`` in ``columns`` (default: the
    table's F1 columns, else all), with the paper's difference where it gives both."""
    rows = {r.name: r for r in table.rows}
    missing = [n for n in (better, worse) if n not in rows]
    if missing:
        raise KeyError(f"no row {missing} in table {table.name}; rows: {list(rows)}")
    if columns is None:
        columns = [c for c in table.columns if c.endswith("F1")] or list(table.columns)
    a, b = rows[better].cells, rows[worse].cells
    diffs, paper = {}, {}
    for c in columns:
        diffs[c] = None if a[c].mean is None or b[c].mean is None else a[c].mean - b[c].mean
        paper[c] = None if a[c].paper is None or b[c].paper is None else a[c].paper - b[c].paper
    return Comparison(better, worse, diffs, paper)


# ---------------------------------------------------------------------------------------------
# PROMU Table 3: prompt templates
# ---------------------------------------------------------------------------------------------

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
    init = Pretrain("promu", entity_template=entity, relation_template=relation)
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
        "relation template (A)/(B)/(C)",
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


# ---------------------------------------------------------------------------------------------
# PROMU Fig 4: gains on the tail relations and on ORG / MISC
# ---------------------------------------------------------------------------------------------

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
        "with base F1 0 left out)",
    )  # fmt: skip
    # the paper's "9.7% and 6.0% for all entity types": Twitter-2015, then Twitter-2017
    all_types = paper_value("promu", "text_claims", "fig4_ner_all_types_gain_pct") or [None, None]
    for i, (name, key) in enumerate(FIG4_ROWS):
        p = paper_value("promu", "text_claims", key) if key else all_types[i - 4]
        values = gains.summary[name]
        reasons = {c: "no pair of runs with a defined gain" for c in FIG4_COLUMNS if not values[c]}
        table.add_row(name, values, {FIG4_COLUMNS[1]: p}, reasons=reasons)
    return table


# ---------------------------------------------------------------------------------------------
# HVPNeT: low-resource curve, cross-task transfer
# ---------------------------------------------------------------------------------------------


def fraction_label(f: float) -> str:
    return f"{100 * f:g}%"


def low_resource_table(
    cfg: Config,
    results: Results,
    models: Mapping[str, Callable[[str, int, float], Any]],
    datasets: Sequence[str],
    fractions: Sequence[float],
) -> tuple[Table, dict[str, dict[str, list[list[float]]]]]:
    """Test F1 per model and dataset at each training fraction; also returns, per dataset,
    ``{model: [per-seed F1 at each fraction]}`` for ``analysis.low_resource_curve``.
    ``models[name](dataset, seed, fraction)`` gives the job."""
    cols = [fraction_label(f) for f in fractions]
    table = Table.for_config(
        cfg, "hvpnet_low_resource", cols, with_paper=False,
        title="Low-resource setting (HVPNeT Fig 3): test F1 against the share of training data",
    )  # fmt: skip
    curves: dict[str, dict[str, list[list[float]]]] = {}
    for d in datasets:
        for name, job in models.items():
            scores = [per_seed(results, [job(d, s, f) for s in seeds_of(cfg)]) for f in fractions]
            curves.setdefault(d, {})[name] = scores
            measured = {c: v for c, v in zip(cols, scores) if v}
            reasons = {c: NOT_RUN for c, v in zip(cols, scores) if not v}
            table.add_row(f"{d}: {name}", measured, reasons=reasons)
    return table, curves


CROSS_TASK: tuple[tuple[str, str], ...] = (("twitter2017", "mnre"), ("mnre", "twitter2017"))


def _cross_job(src: str, dst: str, model: str, seed: int, transfer: bool) -> Finetune:
    init = Finetune(src, model, seed=seed) if transfer else None
    return Finetune(dst, model, init=init, seed=seed)


def cross_task_jobs(
    seeds: Sequence[int], model: str = "hvpnet", pairs: Sequence[tuple[str, str]] = CROSS_TASK
) -> list[Finetune]:
    """Direct and transferred fine-tuning jobs (HVPNeT Table 3): the target dataset trained
    from scratch, and from the backbone of the same model fine-tuned on the source dataset."""
    return [
        _cross_job(src, dst, model, s, transfer)
        for src, dst in pairs
        for s in seeds
        for transfer in (False, True)
    ]


def cross_task_table(
    cfg: Config,
    results: Results,
    model: str = "hvpnet",
    pairs: Sequence[tuple[str, str]] = CROSS_TASK,
) -> Table:
    """Test F1 on the target task, direct vs after the source task (HVPNeT Table 3)."""
    cols = [f"{src} → {dst}" for src, dst in pairs]
    table = Table.for_config(
        cfg, "hvpnet_cross_task", cols, paper_source="HVPNeT Table 3 (HMNeT)",
        title=f"Cross-task transfer: test F1 of {model} on the target dataset, trained directly "
        "or starting from its backbone fine-tuned on the source dataset",
    )  # fmt: skip
    for k, name in enumerate(("direct", "after the source task")):
        measured, published, reasons = {}, {}, {}
        for col, (src, dst) in zip(cols, pairs):
            jobs = [_cross_job(src, dst, model, s, transfer=k == 1) for s in seeds_of(cfg)]
            values = per_seed(results, jobs)
            if values:
                measured[col] = values
            else:
                reasons[col] = NOT_RUN
            paper = paper_value("hvpnet", "table3_cross_task_f1", "HMNeT", f"{src}_to_{dst}")
            published[col] = paper[k] if paper else None
        table.add_row(f"{model}: {name}", measured, published, reasons=reasons)
    return table


# ---------------------------------------------------------------------------------------------
# Stages 01-03: mining, pre-training, fine-tuning overviews
# ---------------------------------------------------------------------------------------------


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pseudo_label_agreement(
    labels: Any, truth: Sequence[Mapping[str, Any]], min_iou: float = 0.5
) -> dict[str, float | int]:
    """How often the top-1 pseudo-labels name what the toy world drew.

    Entities: each mined box is matched to the drawn object of highest IoU (>= ``min_iou``);
    agreement = top-1 noun == that object's class. Relations: over images that draw a
    relation, top-1 relation label == the drawn relation. ``labels`` is a
    :class:`promu_lib.mining.PseudoLabels`; ``truth`` the rows of ``truth("pretrain", "train")``.
    """
    ent_hits = ent_n = rel_hits = rel_n = 0
    top_noun = labels.q_ent.argmax(-1)
    top_rel = labels.q_rel.argmax(-1)
    for t in truth:
        try:
            i = labels.row(t["img_id"])
        except KeyError:
            continue
        w, h = (float(x) for x in labels.image_size[i])
        for j in range(labels.boxes.shape[1]):
            if not bool(labels.object_mask[i, j]):
                continue
            box = [float(v) * s for v, s in zip(labels.boxes[i, j], (w, h, w, h))]
            best = max(t["objects"], key=lambda o: _iou(box, o["box"]), default=None)
            if best is None or _iou(box, best["box"]) < min_iou:
                continue
            ent_n += 1
            ent_hits += labels.nouns[int(top_noun[i, j])] == best["cls"]
        if t.get("relation"):
            rel_n += 1
            rel_hits += labels.relation_labels[int(top_rel[i])] == t["relation"]
    return {
        "entity_agreement": 100.0 * ent_hits / ent_n if ent_n else math.nan,
        "entity_boxes_matched": ent_n,
        "relation_agreement": 100.0 * rel_hits / rel_n if rel_n else math.nan,
        "relation_images": rel_n,
        "entity_chance": 100.0 / max(1, len(labels.nouns)),
        "relation_chance": 100.0 / max(1, len(labels.relation_labels)),
    }


def mining_summary(
    cfg: Config, labels: Any, agreement: Mapping[str, float | int] | None = None
) -> Table:
    """Counts and confidences of the mined pseudo-labels, and their agreement with the toy
    world's truth when there is one (the papers report no such numbers)."""
    s = labels.meta.get("summary", {})
    table = Table.for_config(
        cfg, "mining_summary", ["value"], with_paper=False, show_n=False,
        title="Label mining: pseudo-labels of the caption images (Sec. 4.2-4.3); agreement = "
        "top-1 label equals what the toy world drew, in %",
    )  # fmt: skip
    rows: list[tuple[str, Any]] = [
        ("caption images", s.get("images")),
        ("objects (detector boxes)", s.get("objects")),
        ("confident objects", s.get("confident_objects")),
        ("entity labels M (top nouns)", len(labels.nouns)),
        ("relation labels R", len(labels.relation_labels)),
        ("mean top-1 probability, entity (Eq. 6)", s.get("mean_max_q_ent")),
        ("mean top-1 probability, relation (Eq. 9)", s.get("mean_max_q_rel")),
    ]
    if agreement is not None:
        rows += [
            ("entity agreement with truth (%)", agreement["entity_agreement"]),
            ("entity chance level (%)", agreement["entity_chance"]),
            ("relation agreement with truth (%)", agreement["relation_agreement"]),
            ("relation chance level (%)", agreement["relation_chance"]),
        ]
    for name, value in rows:
        ok = value is not None and math.isfinite(float(value))
        table.add_row(
            name, {"value": value} if ok else {}, reasons=None if ok else {"value": "not available"}
        )
    return table


def pretrain_history(encoder_file: str | Path) -> list[dict[str, float]]:
    """The logged steps (``metrics.jsonl``) of the pre-training run that wrote ``encoder_file``."""
    import json

    path = Path(encoder_file).parent / "metrics.jsonl"
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pretrain_summary(cfg: Config, histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Table:
    """The last logged value of each loss per pre-training variant (a switched-off loss is
    not computed: empty)."""
    from promu_lib.models.pretraining import LOSS_NAMES

    cols = [*LOSS_NAMES, "total"]
    table = Table.for_config(
        cfg, "pretrain_summary", cols, with_paper=False, digits=3, show_n=False,
        title="Pre-training (Eq. 11): each loss at the last logged step, per variant",
    )  # fmt: skip
    for variant, hist in histories.items():
        last = hist[-1] if hist else {}
        measured = {c: last[c] for c in cols if c in last}
        reasons = {c: "switched off" if hist else "no logged step" for c in cols if c not in last}
        table.add_row(variant, measured, reasons=reasons, config=PRETRAIN_VARIANTS.get(variant))
    return table


def finetune_summary(
    cfg: Config, rows: Sequence[Row], results: Results, datasets: Sequence[str]
) -> Table:
    """Best dev F1 per row and dataset (the epoch selection's score; test F1 is Table 1)."""
    table = Table.for_config(
        cfg, "finetune_summary", list(datasets), with_paper=False,
        title="Fine-tuning: best dev F1 (the selected epoch) per model and dataset",
    )  # fmt: skip
    for row in rows:
        measured, reasons = {}, {}
        for d in datasets:
            dev = per_seed(results, [row.job(d, s) for s in seeds_of(cfg)], "f1", "dev")
            if dev:
                measured[d] = dev
            else:
                reasons[d] = NOT_RUN
        table.add_row(row.name, measured, reasons=reasons)
    return table


def nouns_table(cfg: Config, labels: Any, k: int = 20) -> Table:
    """The ``k`` most frequent caption nouns (the entity labels of Eq. 6) and their counts."""
    counts = labels.meta.get("noun_counts", {})
    table = Table.for_config(
        cfg, "mining_nouns", ["count"], with_paper=False, show_n=False, digits=0,
        title=f"Top {k} of the M={len(labels.nouns)} caption nouns (spaCy lemmas) used as entity "
        "labels",
    )  # fmt: skip
    for noun in labels.nouns[:k]:
        c = counts.get(noun)
        table.add_row(noun, {"count": c} if c is not None else {}, reasons={"count": "no count"})
    return table


def prompts_markdown(labels: Any, k: int = 3) -> str:
    """The chosen templates and a few of their prompts, as markdown."""
    ent = labels.meta.get("entity_template", "")
    rel = labels.meta.get("relation_template", "")
    lines = [
        f"**Entity template:** `{ent}` — e.g. "
        + "; ".join(f"`{p}`" for p in labels.entity_prompts[:k]),
        "",
        f"**Relation template:** `{rel}` — e.g. "
        + "; ".join(f"`{p}`" for p in labels.relation_prompts[:k]),
        "",
        f"**Top nouns (M={len(labels.nouns)}):** " + ", ".join(labels.nouns[:20]),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The papers' claims on Table 1
# ---------------------------------------------------------------------------------------------

# (claim, (model, pre-training) of the row that should be higher, of the row that should be lower)
TABLE1_CLAIMS: tuple[tuple[str, tuple[str, str | None], tuple[str, str | None]], ...] = (
    ("multimodal beats text-only", ("hvpnet", None), ("bert", None)),
    ("PROMU pre-training beats no pre-training", ("promu", "promu"), ("promu", None)),
    ("PROMU beats alignment-only pre-training", ("promu", "promu"), ("promu", "align-only")),
    ("entity-object alignment helps", ("promu", "promu"), ("promu", "no-coe")),
    ("relation-image alignment helps", ("promu", "promu"), ("promu", "no-cir")),
    ("soft pseudo-labels beat hard ones", ("promu", "promu"), ("promu", "hard")),
)


def row_name(rows: Sequence[Row], model: str, pretrain: str | None) -> str:
    for r in rows:
        if r.model == model and r.pretrain == pretrain:
            return r.name
    raise KeyError(f"no row with model {model!r} and pre-training {pretrain!r}")


def table1_claims(table: Table, rows: Sequence[Row]) -> list[str]:
    """One computed sentence per claim of :data:`TABLE1_CLAIMS` (measured and paper gaps)."""
    out = []
    for claim, better, worse in TABLE1_CLAIMS:
        cmp = compare_rows(table, row_name(rows, *better), row_name(rows, *worse))
        out.append(f"*{claim}?* {cmp.sentence()}")
    return out


# ---------------------------------------------------------------------------------------------
# Jobs of the figures
# ---------------------------------------------------------------------------------------------


def scratch_job(dataset: str, seed: int, train_fraction: float = 1.0) -> Finetune:
    """The fusion model fine-tuned without pre-training."""
    return Finetune(dataset, "promu", seed=seed, train_fraction=train_fraction)


def promu_job(dataset: str, seed: int, train_fraction: float = 1.0) -> Finetune:
    """The fusion model fine-tuned from PROMU pre-training."""
    return Finetune(
        dataset, "promu", init=Pretrain("promu"), seed=seed, train_fraction=train_fraction
    )


def scratch_vs_promu_jobs(datasets: Sequence[str], seeds: Sequence[int]) -> list[Finetune]:
    """The fusion model with and without PROMU pre-training on every dataset and seed."""
    return [job(d, s) for job in (scratch_job, promu_job) for d in datasets for s in seeds]


def _model_job(model: str) -> Callable[[str, int, float], Finetune]:
    return lambda d, s, f: Finetune(d, model, seed=s, train_fraction=f)


# HVPNeT Fig 3's models (text-only, HVPNeT), plus the fusion model from PROMU pre-training
LOW_RESOURCE_MODELS: dict[str, Callable[[str, int, float], Finetune]] = {
    "text only (bert)": _model_job("bert"),
    "hvpnet": _model_job("hvpnet"),
    "PROMU (fusion + pre-training)": promu_job,
}


def low_resource_jobs(
    datasets: Sequence[str], seeds: Sequence[int], fractions: Sequence[float]
) -> list[Finetune]:
    return [
        job(d, s, f)
        for job in LOW_RESOURCE_MODELS.values()
        for d in datasets
        for s in seeds
        for f in fractions
    ]


def train_relation_counts(cfg: Config) -> dict[str, int]:
    """Lines per relation in the MNRE train split (the tail of Fig 4 is the rarest)."""
    from collections import Counter

    from promu_lib.data.formats import read_mnre
    from promu_lib.data.layout import DataLayout
    from promu_lib.paths import resolve

    layout = DataLayout(root=resolve(cfg.data_root()), data=cfg.data)
    posts = read_mnre(layout.split_file("mnre", "train"), on_bad=cfg.data.on_bad_record)
    return dict(Counter(p.relation for p in posts))


# ---------------------------------------------------------------------------------------------
# Fig 3 / Fig 5: numbers behind the pictures
# ---------------------------------------------------------------------------------------------


def nearest_label_agreement(emb: Any, query_kind: str, key_kind: str) -> float:
    """% of ``query_kind`` rows whose nearest ``key_kind`` row (cosine) has the same label:
    how well the two modalities line up by class (NaN when either kind is absent)."""
    import numpy as np

    kinds = np.asarray(emb.kinds)
    labels = np.asarray(emb.labels)
    q, k = kinds == query_kind, kinds == key_kind
    if not q.any() or not k.any():
        return math.nan
    x = emb.features / np.maximum(np.linalg.norm(emb.features, axis=1, keepdims=True), 1e-12)
    nearest = (x[q] @ x[k].T).argmax(1)
    return 100.0 * float(np.mean(labels[q] == labels[k][nearest]))


def consistency_table(
    cfg: Config, panels: Mapping[str, Mapping[str, Any]], pairs: Mapping[str, tuple[str, str]]
) -> Table:
    """Per model (``panels[model][column]`` = embeddings): nearest-neighbour label agreement
    across modalities (``pairs[column]`` = (query kind, key kind))."""
    table = Table.for_config(
        cfg, "fig3_consistency", list(pairs), with_paper=False, show_n=False, digits=1,
        title="Cross-modal consistency behind Fig 3: % of text embeddings whose nearest image "
        "embedding (cosine) has the same entity type / relation",
    )  # fmt: skip
    for model, per in panels.items():
        measured, reasons = {}, {}
        for col, (qk, kk) in pairs.items():
            v = nearest_label_agreement(per[col], qk, kk) if col in per else math.nan
            if math.isfinite(v):
                measured[col] = v
            else:
                reasons[col] = f"no {qk}/{kk} embeddings"
        table.add_row(model, measured, reasons=reasons)
    return table


def attention_table(cfg: Config, cases: Mapping[str, Sequence[Any]]) -> Table:
    """Per model, over the Fig 5 posts: the share of the mention's patch attention that lands
    inside its drawn object, and how often the mention's type is predicted right."""
    cols = ["attention on the object (%)", "type right (%)"]
    table = Table.for_config(
        cfg, "fig5_attention", cols, with_paper=False, show_n=False, digits=1,
        title="Attention case studies (Fig 5): mean over the posts shown",
    )  # fmt: skip
    for model, cs in cases.items():
        shares = [c.object_share for c in cs if c.object_share is not None]
        right = [100.0 * (c.pred[2:] == c.gold) for c in cs]
        measured = {}
        if shares:
            measured[cols[0]] = 100.0 * sum(shares) / len(shares)
        if right:
            measured[cols[1]] = sum(right) / len(right)
        reasons = {
            c: "no truth boxes" if c == cols[0] else "no post" for c in cols if c not in measured
        }
        table.add_row(model, measured, reasons=reasons)
    return table
