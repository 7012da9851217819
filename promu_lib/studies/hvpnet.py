"""The HVPNeT paper's own analyses of its design.

- its Table 1: variants without the pyramid (Single), with the last block everywhere (Flat),
  one block per three layers (1V3) and objects only (OnlyObj), against the full model;
- its Fig 3: F1 with a fraction of the training data (low-resource curve), beside the
  text-only model and PROMU;
- its Table 3: transfer of a model trained on one task to the other (cross-task);
- its Fig 4: the dynamic gate that mixes the pyramid blocks per layer (:func:`gate_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from promu_lib.config import Config
from promu_lib.jobs import Finetune
from promu_lib.report import Table, paper_value
from promu_lib.studies.common import (
    NOT_RUN,
    Outputs,
    Results,
    Row,
    _same,
    compare_rows,
    per_seed,
    promu_job,
    recipes_note,
    results_table,
    row_claim,
    row_jobs,
    seeds_of,
)
from promu_lib.studies.probing import batches, inference, load_finetuned, load_posts

if TYPE_CHECKING:
    import torch
    from torch import Tensor

NOTEBOOK = "10_hvpnet.ipynb"
TITLE = "HVPNeT: variants, low resource, cross-task, gates"
READER = True
TABLES = ("hvpnet_variants", "hvpnet_low_resource", "hvpnet_cross_task")
FIGURES = ("hvpnet_variants", "hvpnet_low_resource", "hvpnet_cross_task", "hvpnet_gates")
CLAIMS_TABLE = "hvpnet_claims"


VARIANT_ROWS: tuple[Row, ...] = (
    Row("HMNeT-Single", "hvpnet-single", paper=_same("HMNeT-Single")),
    Row("HMNeT-Flat", "hvpnet-flat", paper=_same("HMNeT-Flat")),
    Row("HMNeT-1V3", "hvpnet-1v3", paper=_same("HMNeT-1V3")),
    Row("HMNeT-OnlyObj", "hvpnet-onlyobj", paper=_same("HMNeT-OnlyObj")),
    Row("HMNeT (full)", "hvpnet", paper=_same("HMNeT")),
)


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
    recipes = recipes_note(cfg, [job("mnre", 0, 1.0).model for job in models.values()])
    table = Table.for_config(
        cfg, "hvpnet_low_resource", cols, with_paper=False,
        title="Low-resource setting (HVPNeT Fig 3): test F1 against the share of training data. "
        + recipes,
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
        "or starting from its backbone fine-tuned on the source dataset. "
        + recipes_note(cfg, [model]),
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


def gates_by_dataset(
    cfg: Config, jobs: dict[str, Finetune], n_posts: int | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """HVPNeT's mean gate per dataset: ``jobs[dataset]`` a finished HVPNeT fine-tuning job."""
    tokenizer = None
    out = {}
    for dataset, job in jobs.items():
        net, tokenizer = load_finetuned(cfg, job, tokenizer)
        out[dataset] = gate_weights(net, load_posts(cfg, dataset, tokenizer), n_posts)
    return out


@inference
def gate_weights(
    model: torch.nn.Module, posts: Any, n_posts: int | None = None
) -> dict[str, np.ndarray]:
    """HVPNeT's gate g^(l) (its Eq. 3-4) averaged over posts: ``{"global image": (L, 4),
    "objects": (L, 4)}`` (objects: over the real object slots; absent when there is none).
    Only the gated variants (full, onlyobj; onlyobj has no global image) have gates."""
    from promu_lib.models.hvpnet import HVPNet

    if not isinstance(model.backbone, HVPNet):
        raise TypeError(
            f"gate weights need an HVPNeT backbone, got {type(model.backbone).__name__}"
        )
    visual = model.backbone.visual
    n = len(posts) if n_posts is None else min(n_posts, len(posts))
    sums: dict[str, Tensor] = {}
    counts: dict[str, float] = {}

    def add(name: str, g: Tensor, weight: Tensor) -> None:  # g (B, k, L, 4), weight (B, k)
        sums[name] = sums.get(name, 0) + (g * weight[..., None, None]).sum((0, 1))
        counts[name] = counts.get(name, 0.0) + float(weight.sum())

    for batch in batches(posts, range(n)):
        gates = model(batch).get("gates")
        if gates is None:
            raise ValueError(f"HVPNeT variant {visual.variant!r} has no dynamic gate")
        _, valid = visual.image_stack(batch["image"], batch["objects"], batch["object_mask"])
        valid = valid.to(gates.dtype)
        if visual.uses_global_image:
            add("global image", gates[:, :1], valid[:, :1])
            gates, valid = gates[:, 1:], valid[:, 1:]
        if gates.shape[1]:
            add("objects", gates, valid)
    return {k: (sums[k] / counts[k]).double().numpy() for k in sums if counts[k] > 0}


def _scope(cfg: Config, datasets, fractions, low_resource_datasets) -> tuple[list, list, list]:
    s = cfg.scope
    return (
        list(datasets if datasets is not None else s.hvpnet_datasets),
        list(fractions if fractions is not None else s.low_resource_fractions),
        list(
            low_resource_datasets if low_resource_datasets is not None else s.low_resource_datasets
        ),
    )


def gate_jobs(cfg: Config, datasets: Sequence[str]) -> dict[str, Finetune]:
    """The full HVPNeT per dataset at the first seed, whose gates Fig 4 shows."""
    return {d: Finetune(d, "hvpnet", seed=cfg.run.seeds[0]) for d in datasets}


def jobs(
    cfg: Config,
    datasets: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    low_resource_datasets: Sequence[str] | None = None,
    n_gate_posts: int = 200,
) -> list[Finetune]:
    """Variants on ``datasets`` (default: ``cfg.scope.hvpnet_datasets``), the low-resource
    curve, the cross-task pairs and the gate models."""
    datasets, fractions, low = _scope(cfg, datasets, fractions, low_resource_datasets)
    seeds = cfg.run.seeds
    return [
        *row_jobs(VARIANT_ROWS, datasets, seeds),
        *low_resource_jobs(low, seeds, fractions),
        *cross_task_jobs(seeds),
        *gate_jobs(cfg, datasets).values(),
    ]


def claims(cfg: Config, table: Table, datasets: Sequence[str]) -> list[Any]:
    """HVPNeT Table 1's claim: the full model beats each of its variants, per dataset."""
    *variants, full = VARIANT_ROWS
    cache: dict = {}  # the full model serves every claim: read once
    return [
        row_claim(cfg, "hvpnet", f"the full model beats {v.name}", d, full, v, table, cache)
        for v in variants
        for d in datasets
    ]


def run(
    cfg: Config,
    results: Results,
    out_dir: str | Path,
    datasets: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    low_resource_datasets: Sequence[str] | None = None,
    n_gate_posts: int = 200,
) -> Outputs:
    """The four analyses; ``n_gate_posts`` test posts are averaged for the gate heatmaps."""
    from promu_lib import plots

    datasets, fractions, low = _scope(cfg, datasets, fractions, low_resource_datasets)
    out = Outputs.start(cfg, out_dir)
    variants = out.table(
        results_table(
            cfg, "hvpnet_variants", VARIANT_ROWS, results, datasets, paper=("hvpnet", "table1_prf"),
            title="HVPNeT variants: test P/R/F1. "
            + recipes_note(cfg, [r.model for r in VARIANT_ROWS]),
            paper_source="HVPNeT Table 1 (HMNeT rows)",
        )
    )  # fmt: skip
    out.figure(plots.table_bars(variants, title="HVPNeT variants: test F1"), "hvpnet_variants")
    table, curves = low_resource_table(cfg, results, LOW_RESOURCE_MODELS, low, fractions)
    out.table(table)
    out.figure(plots.low_resource_figure(curves, fractions), "hvpnet_low_resource")
    cross = out.table(cross_task_table(cfg, results))
    fig = plots.table_bars(cross, list(cross.columns), "Cross-task transfer")
    out.figure(fig, "hvpnet_cross_task")
    out.lines = [compare_rows(cross, cross.rows[1].name, cross.rows[0].name).sentence()]
    gates = gates_by_dataset(cfg, gate_jobs(cfg, datasets), n_gate_posts)
    out.figure(plots.gates_figure(gates), "hvpnet_gates")
    out.add_claims(cfg, claims(cfg, variants, datasets), CLAIMS_TABLE)
    return out
