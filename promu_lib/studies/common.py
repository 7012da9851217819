"""What several studies share: table rows, reading job results, the measured-vs-paper result
table, row comparisons, the fusion model's two standard jobs, and a study's outputs.

A study module (``promu_lib.studies.<name>``) holds one artifact of the papers; see the
package docstring for what it defines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promu_lib.config import Config
from promu_lib.jobs import PRETRAIN_VARIANTS, Finetune, Pretrain
from promu_lib.report import Table, paper_value


@dataclass(frozen=True)
class Row:
    """A table row: what runs, and under which name the papers report it."""

    name: str
    model: str
    pretrain: str | None = None  # a PRETRAIN_VARIANTS key, or None (no pre-training)
    paper: dict[str, str] = field(default_factory=dict)  # dataset -> key in the paper's table

    def job(self, dataset: str, seed: int, **kw: Any) -> Finetune:
        """Seed ``seed`` of this row; a pre-trained row starts from its own pre-training with
        the same seed, so the row's spread covers the pre-training's variance too."""
        init = Pretrain(self.pretrain, seed=seed) if self.pretrain else None
        return Finetune(dataset, self.model, init=init, seed=seed, **kw)


def _same(key: str) -> dict[str, str]:
    return {d: key for d in ("twitter2015", "twitter2017", "mnre")}


DATASETS: tuple[str, ...] = ("twitter2015", "twitter2017", "mnre")


Results = Mapping[Any, Any]  # job -> result, as run_jobs returns it


METRICS: dict[str, str] = {"P": "precision", "R": "recall", "F1": "f1"}


NOT_RUN = "not run (left out by this notebook's parameters)"


def in_scope(cfg: Config, datasets: Sequence[str] | None, scope: str = "datasets") -> list[str]:
    """``datasets``, or when None the profile's scope for them (``cfg.scope.<scope>``): what a
    notebook parameter left at None means."""
    return list(datasets if datasets is not None else getattr(cfg.scope, scope))


def seeds_of(cfg: Config) -> list[int]:
    return list(cfg.run.seeds)


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


def recipes_note(cfg: Config, models: Sequence[str]) -> str:
    """What a caption says about fine-tuning: the recipe of each model (``config.recipe_of``),
    the models that share one named together, e.g. ``"Fine-tuning recipe of bert, hvpnet: lr
    3e-05, ...; of promu: lr 0.0001, ..."`` (``"... of every model: ..."`` when all agree)."""
    from promu_lib.config import recipe_of

    by_recipe: dict[str, list[str]] = {}
    for model in dict.fromkeys(models):
        by_recipe.setdefault(recipe_of(cfg, model), []).append(model)
    if len(by_recipe) == 1:
        return f"Fine-tuning recipe of every model: {next(iter(by_recipe))}."
    groups = [f"of {', '.join(names)}: {recipe}" for recipe, names in by_recipe.items()]
    return "Fine-tuning recipe " + "; ".join(groups) + "."


def row_of(rows: Sequence[Row], model: str, pretrain: str | None) -> Row:
    """The row that fine-tunes ``model`` from the pre-training variant ``pretrain``."""
    for r in rows:
        if r.model == model and r.pretrain == pretrain:
            return r
    raise KeyError(f"no row with model {model!r} and pre-training {pretrain!r}")


def scratch_job(dataset: str, seed: int, train_fraction: float = 1.0) -> Finetune:
    """The fusion model fine-tuned without pre-training."""
    return Finetune(dataset, "promu", seed=seed, train_fraction=train_fraction)


def promu_job(dataset: str, seed: int, train_fraction: float = 1.0) -> Finetune:
    """The fusion model fine-tuned from PROMU pre-training (of the same seed)."""
    return Finetune(
        dataset, "promu", init=Pretrain("promu", seed=seed), seed=seed,
        train_fraction=train_fraction,
    )  # fmt: skip


def scratch_vs_promu_jobs(datasets: Sequence[str], seeds: Sequence[int]) -> list[Finetune]:
    """The fusion model with and without PROMU pre-training on every dataset and seed."""
    return [job(d, s) for job in (scratch_job, promu_job) for d in datasets for s in seeds]


# ---------------------------------------------------------------------------------------------
# Claims: a gap between two sets of jobs with its interval and verdict (promu_lib.evidence)
# ---------------------------------------------------------------------------------------------


def job_counts(cfg: Config, job: Finetune) -> Any | None:
    """The per-post counts of ``job``'s test predictions (None when it has not run)."""
    from promu_lib.evidence import read_counts

    init = job.init_file(cfg)
    if init is not None and not init.is_file():  # what it starts from never ran
        return None
    run_dir = job.out_dir(cfg)  # hashes the init file: once per job with a cache
    if not (run_dir / "predictions.jsonl").is_file():
        return None
    return read_counts(run_dir)


def seed_counts(
    cfg: Config, jobs: Sequence[Finetune], cache: dict | None = None
) -> list[Any] | None:
    """The counts of each job (None when one has not run). ``cache``: a dict shared by the
    claims of one table, so that a row in several claims is read (and its run directory
    hashed) once."""
    cache = {} if cache is None else cache
    out = []
    for job in jobs:
        if job not in cache:
            cache[job] = job_counts(cfg, job)
        if cache[job] is None:
            return None
        out.append(cache[job])
    return out


def jobs_claim(
    cfg: Config,
    study: str,
    claim: str,
    dataset: str,
    better: tuple[str, Callable[[int], Finetune]],
    worse: tuple[str, Callable[[int], Finetune]],
    paper_gap: float | None = None,
    cache: dict | None = None,
    **gap_options: Any,
) -> Any:
    """A :class:`promu_lib.evidence.Claim`: ``better = (name, seed -> job)`` against ``worse``
    over the run's seeds (``cache``: see :func:`seed_counts`). ``gap_options`` go to
    ``evidence.paired_gap`` (``statistic``, ``classes``) plus ``statistic_name`` for the
    table."""
    from promu_lib.evidence import Claim, paired_gap

    name = gap_options.pop("statistic_name", "test F1 gap (points)")
    seeds = seeds_of(cfg)
    b = seed_counts(cfg, [better[1](s) for s in seeds], cache)
    w = seed_counts(cfg, [worse[1](s) for s in seeds], cache)
    kw = {"study": study, "claim": claim, "dataset": dataset, "better": better[0],
          "worse": worse[0], "paper_gap": paper_gap, "statistic": name}  # fmt: skip
    if b is None or w is None:
        return Claim(**kw, gap=None, reason=NOT_RUN)
    return Claim(**kw, gap=paired_gap(b, w, **gap_options))


def row_claim(
    cfg: Config, study: str, claim: str, dataset: str, better: Row, worse: Row,
    table: Table | None = None, cache: dict | None = None,
) -> Any:  # fmt: skip
    """The F1 gap of ``better`` over ``worse`` on ``dataset``, with the paper's gap from
    ``table`` (its ``"<dataset> F1"`` or ``"<dataset>"`` column) where it has both rows
    (``cache``: see :func:`seed_counts`)."""
    paper = None
    if table is not None:
        rows = {r.name: r for r in table.rows}
        col = next((c for c in (f"{dataset} F1", dataset) if c in table.columns), None)
        if col and better.name in rows and worse.name in rows:
            a, b = rows[better.name].cells[col].paper, rows[worse.name].cells[col].paper
            paper = None if a is None or b is None else a - b
    return jobs_claim(
        cfg, study, claim, dataset, (better.name, lambda s: better.job(dataset, s)),
        (worse.name, lambda s: worse.job(dataset, s)), paper, cache,
    )  # fmt: skip


def claims_title(cfg: Config) -> str:
    """What every claims table says about its numbers: profile, seeds, data, toy or not."""
    from promu_lib.report import TOY_NOTE, data_version

    seeds = ", ".join(map(str, cfg.run.seeds))
    toy = f" Gaps are {TOY_NOTE}." if cfg.data.toy is not None else ""
    return f"Profile '{cfg.profile}', seeds [{seeds}], data: {data_version(cfg)}.{toy}"


# ---------------------------------------------------------------------------------------------
# What a study's ``run`` made
# ---------------------------------------------------------------------------------------------


@dataclass
class Outputs:
    """The tables and figures a study's ``run`` saved under ``out_dir`` (each table as
    csv/md/config.json with the run's provenance, each figure as png/pdf), and markdown lines
    (claims, summaries). ``show()`` displays them in a notebook, in the order they were made;
    figures are closed once saved, so nothing else draws them twice."""

    out_dir: Path
    provenance: dict[str, Any] | None = None
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, list[Path]] = field(default_factory=dict)  # name -> its png, pdf
    lines: list[str] = field(default_factory=list)
    claims: list[Any] = field(default_factory=list)  # promu_lib.evidence.Claim
    order: list[tuple[str, str]] = field(default_factory=list)  # ("table"|"figure", name)

    @classmethod
    def start(cls, cfg: Config, out_dir: str | Path) -> Outputs:
        from promu_lib.report import provenance

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return cls(out, provenance(cfg))

    def table(self, table: Table) -> Table:
        """Save ``table`` and keep it under its name."""
        table.save(self.out_dir, self.provenance)
        self.tables[table.name] = table
        self.order.append(("table", table.name))
        return table

    def figure(self, fig: Any, name: str) -> list[Path]:
        """Save ``fig`` as ``<name>.png`` and ``<name>.pdf``, then close it."""
        import matplotlib.pyplot as plt

        from promu_lib.report import save_figure

        self.figures[name] = save_figure(fig, name, self.out_dir)
        plt.close(fig)
        self.order.append(("figure", name))
        return self.figures[name]

    def add_claims(self, cfg: Config, claims: Sequence[Any], name: str) -> list[Any]:
        """Save the claims as ``<name>.csv`` / ``.md`` (gap, interval, verdict per claim and
        dataset) and add their sentences to the lines."""
        from promu_lib.evidence import save_claims

        save_claims(claims, self.out_dir, name, claims_title(cfg))
        self.claims = list(claims)
        self.lines += [c.sentence() for c in claims]
        self.order.append(("claims", name))
        return self.claims

    def markdown(self) -> str:
        """The lines as a markdown list."""
        return "\n".join(f"- {line}" for line in self.lines)

    def show(self, *names: str, lines: bool = True) -> None:
        """Display the lines (unless ``lines=False``), then the tables and figures called
        ``names`` (default: all), in a notebook."""
        from IPython.display import Image, Markdown, display

        if lines and self.lines:
            display(Markdown(self.markdown()))
        for kind, name in self.order:
            if names and name not in names:
                continue
            if kind == "table":
                display(self.tables[name])
            elif kind == "claims":
                display(Markdown((self.out_dir / f"{name}.md").read_text(encoding="utf-8")))
            else:
                display(Image(data=self.figures[name][0].read_bytes()))


_TEACHERS = {
    "toy": "a small dual encoder trained on the captions",
    "dual": "PROMU's Sec. 4.1 encoders trained with CIT",
    "clip": "CLIP",
}
_RELATION_SETS = {
    "mnre": "MNRE's 22 relations (the downstream label set)",
    "wikidata": "Wikidata relations (FewRel 1.0's 80)",
}
_FUSION_INITS = {
    "random": "initialised at random",
    "text-layers": "initialised from the text encoder's last layers (ALBEF split)",
}


def pretraining_note(cfg: Config) -> str:
    """What a caption says about how the PROMU rows were pre-trained: the teacher of the
    pseudo-labels, CIR's relation set, the fusion layers' initialisation, ITM's negatives."""
    m, p = cfg.mining, cfg.pretrain
    itm = "Eq. 3 on the given pairs" + (" + hard negatives" if p.itm_hard_negatives else "")
    return (
        f"Pre-training: pseudo-labels from {_TEACHERS.get(m.teacher, m.teacher)}, CIR over "
        f"{_RELATION_SETS.get(m.relation_set, m.relation_set)}, fusion layers "
        f"{_FUSION_INITS.get(cfg.fusion.init, cfg.fusion.init)}, ITM {itm}."
    )
