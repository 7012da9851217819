"""Fine-tuning: every model of Table 1 on every dataset, and how dev F1 moves per epoch.

MNER (Twitter-2015/2017) is tagged by a CRF over the encoder's word states, MRE (MNRE) is
classified from the states at the entity markers ``<s>`` and ``<o>``. Every model trains with
the same schedule, keeps the epoch with the best dev F1 and is tested once at that epoch
(``promu_lib.train.finetune``). Test scores are Table 1's (``studies.table1``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from promu_lib.config import Config
from promu_lib.jobs import Finetune
from promu_lib.report import Table
from promu_lib.studies import table1
from promu_lib.studies.common import NOT_RUN, Outputs, Results, Row, in_scope, per_seed, seeds_of

NOTEBOOK = "03_finetune.ipynb"
TITLE = "Fine-tuning: every Table 1 model on every dataset"
READER = False
TABLES = ("finetune_summary", "finetune_convergence")
FIGURES = ("finetune_curves",)
ROWS = table1.ROWS
CONVERGENCE = ("best epoch", "epochs run", "% by patience")


def jobs(cfg: Config, datasets: Sequence[str] | None = None) -> list[Finetune]:
    """Table 1's jobs (the later stages read them from the cache)."""
    return table1.jobs(cfg, datasets)


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


def finetune_convergence(
    cfg: Config, rows: Sequence[Row], results: Results, datasets: Sequence[str]
) -> Table:
    """Per row and dataset, over its seeds: the median best epoch (counted from 1), the
    median epochs run, and the share of runs that early stopping ended before the cap (the
    stop rule of the README's "Training schedules": it wants >= 90% on every dataset)."""
    columns = [f"{d} {q}" for d in datasets for q in CONVERGENCE]
    table = Table.for_config(
        cfg, "finetune_convergence", columns, with_paper=False, digits=1, show_n=False,
        title="Fine-tuning convergence: median best epoch, median epochs run, and % of runs "
        "stopped by patience (not by the cap), per model and dataset",
    )  # fmt: skip
    for row in rows:
        measured, reasons = {}, {}
        for d in datasets:
            done = [results[j] for j in (row.job(d, s) for s in seeds_of(cfg)) if results.get(j)]
            if not done:
                reasons.update({f"{d} {q}": NOT_RUN for q in CONVERGENCE})
                continue
            measured[f"{d} best epoch"] = statistics.median(m["best_epoch"] + 1 for m in done)
            measured[f"{d} epochs run"] = statistics.median(m["epochs_run"] for m in done)
            measured[f"{d} % by patience"] = 100.0 * statistics.mean(
                m.get("stopped_by") == "patience" for m in done
            )
        table.add_row(row.name, measured, reasons=reasons)
    return table


def run(
    cfg: Config, results: Results, out_dir: str | Path, datasets: Sequence[str] | None = None
) -> Outputs:
    """One summary line per job, the best-dev table, where the runs stopped, and the dev
    curves of the first seed."""
    from promu_lib import plots
    from promu_lib.train.finetune import summarize

    datasets = in_scope(cfg, datasets)
    out = Outputs.start(cfg, out_dir)
    out.lines = [summarize(results[job]) for job in jobs(cfg, datasets)]
    out.table(finetune_summary(cfg, ROWS, results, datasets))
    out.table(finetune_convergence(cfg, ROWS, results, datasets))
    fig = plots.dev_curves_figure(results, ROWS, datasets, seed=cfg.run.seeds[0])
    out.figure(fig, "finetune_curves")
    return out
