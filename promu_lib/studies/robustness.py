"""Irrelevant-image robustness: HVPNeT's "error sensitivity" claim, made measurable.

Every multimodal model of Table 1, trained with the true images, is evaluated on the test split
three ways (evaluation only, nothing retrains):

- ``true``: the post's own image;
- ``blank``: no image (zero pixels, no object crops);
- ``shuffled``: another post's image (a fixed derangement of the split, ``shuffle_seed``).

Each F1 is reported on all posts and, where the toy world's truth files say which post carries
an irrelevant image (``<data>/truth/<dataset>_test.jsonl``), on the posts whose own image is
relevant vs irrelevant. Real data has no truth file: those columns stay empty, with the reason.
Results are cached per fine-tuned model (its weights' hash) under ``<output>/robustness/``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promu_lib.cache import is_done, mark_done, stage_dir
from promu_lib.config import Config
from promu_lib.io import atomic_write_json, sha256_file
from promu_lib.jobs import Finetune, map_in_workers
from promu_lib.metrics import ner_scores, re_scores
from promu_lib.report import Table
from promu_lib.studies import table1
from promu_lib.studies.common import Outputs, Row, in_scope, row_jobs

NOTEBOOK = "11_robustness.ipynb"
TITLE = "Robustness: true, blank and wrong images"
READER = False  # not beside another notebook: it evaluates in two worker processes of its own
TABLES = ("robustness",)
FIGURES = ("robustness",)

MODES: tuple[str, ...] = ("true", "blank", "shuffled")
SUBSETS: tuple[str, ...] = ("all", "relevant", "irrelevant")
VERSION = 1  # bump when the evaluation changes (invalidates cached results)
NO_TRUTH = "relevance unknown (no truth file: real data)"
EMPTY_SUBSET = "no such post in this test split"


def multimodal_rows(rows: Sequence[Row] = table1.ROWS) -> tuple[Row, ...]:
    """The rows whose model sees the image (all but the text-only baseline)."""
    from promu_lib.models.registry import model_spec

    return tuple(r for r in rows if model_spec(r.model).sees_image)


def short_label(row: Row) -> str:
    """A legend-sized name: the pre-training variant, or the model."""
    if row.pretrain:
        return row.pretrain
    return "fusion, no pre-training" if row.model == "promu" else row.model


def column(mode: str, subset: str) -> str:
    return mode if subset == "all" else f"{mode} · {subset}"


def columns(modes: Sequence[str] = MODES) -> list[str]:
    return [column(m, s) for m in modes for s in SUBSETS]


# -- evaluation ---------------------------------------------------------------------------------


def _f1(task: str, rows: Sequence[dict[str, Any]]) -> float:
    gold, pred = [r["gold"] for r in rows], [r["pred"] for r in rows]
    return (ner_scores(gold, pred) if task == "ner" else re_scores(gold, pred, "None"))["f1"]


def subset_f1(
    task: str, predictions: Sequence[dict[str, Any]], relevant: Sequence[bool | None]
) -> dict[str, float | None]:
    """F1 on all posts and on those whose image is relevant / irrelevant (``None``: unknown
    relevance, or no such post)."""
    out: dict[str, float | None] = {"all": _f1(task, predictions)}
    for subset, want in (("relevant", True), ("irrelevant", False)):
        rows = [p for p, r in zip(predictions, relevant) if r is want]
        out[subset] = _f1(task, rows) if rows else None
    return out


def relevance(cfg: Config, dataset: str, img_ids: Sequence[str]) -> list[bool | None]:
    """Per post (by image id): whether its image is relevant, from the toy truth file; all
    ``None`` when there is no truth file (real data)."""
    from promu_lib.data.layout import DataLayout
    from promu_lib.data.toyworld import read_truth

    path = DataLayout.of(cfg).truth(dataset, "test")
    if not path.is_file():
        return [None] * len(img_ids)
    known = {row["img_id"]: bool(row["relevant"]) for row in read_truth(path)}
    return [known.get(i) for i in img_ids]


def evaluate_modes(
    cfg: Config, job: Finetune, modes: Sequence[str] = MODES, shuffle_seed: int = 0
) -> dict[str, Any]:
    """Test F1 of the finished fine-tuning ``job`` under each image mode (cached).

    Returns ``{"dataset", "model", "seed", "run_dir", "n": {"relevant", "irrelevant"},
    "f1": {mode: {"all", "relevant", "irrelevant"}}}``.
    """
    from promu_lib.data.datasets import load_split, make_loader
    from promu_lib.data.tokenizer import build_tokenizer
    from promu_lib.train.common import load_weights, pick_device
    from promu_lib.train.finetune import SECTIONS, build_model, evaluate, task_of

    run_cfg = job.config(cfg)
    run_dir = job.out_dir(cfg)
    if not is_done(run_dir):
        raise FileNotFoundError(f"{run_dir}: fine-tuning run not finished; run the job first")
    weights = run_dir / "model.safetensors"
    extra = {
        "weights": sha256_file(weights),
        "modes": list(modes),
        "shuffle_seed": shuffle_seed,
        "version": VERSION,
    }
    out = stage_dir(run_cfg, f"robustness/{job.dataset}/{job.model}", *SECTIONS, extra=extra)
    if is_done(out):
        return json.loads((out / "robustness.json").read_text(encoding="utf-8"))
    task = task_of(job.dataset)
    tokenizer = build_tokenizer(run_cfg)
    net = build_model(run_cfg, task, job.model, tokenizer)
    load_weights(weights, net)
    device = pick_device(run_cfg.run.device)
    net.to(device)
    result: dict[str, Any] = {
        "dataset": job.dataset, "model": job.model, "seed": job.seed, "run_dir": str(run_dir),
        "f1": {},
    }  # fmt: skip
    for mode in modes:
        ds = load_split(
            run_cfg, job.dataset, "test", tokenizer, image_mode=mode, seed=shuffle_seed,
            progress=False,
        )  # fmt: skip
        loader = make_loader(ds, run_cfg.finetune.eval_batch_size, False, shuffle_seed)
        predictions = evaluate(net, loader, device)["predictions"]
        relevant = relevance(run_cfg, job.dataset, [p.img_id for p in ds.posts])
        result["f1"][mode] = subset_f1(task, predictions, relevant)
        result["n"] = {
            "posts": len(relevant),
            "relevant": sum(r is True for r in relevant),
            "irrelevant": sum(r is False for r in relevant),
        }
    atomic_write_json(out / "robustness.json", result)
    mark_done(out, {"dataset": job.dataset, "model": job.model, "seed": job.seed})
    return result


def robustness_results(
    cfg: Config,
    rows: Sequence[Row],
    datasets: Sequence[str],
    seeds: Sequence[int] | None = None,
    modes: Sequence[str] = MODES,
    workers: int | None = None,
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Train (or read from cache) each row's job per dataset and seed, then evaluate it under
    every image mode; ``{(row name, dataset, seed): evaluate_modes(...)}``."""
    from promu_lib.jobs import run_jobs

    seeds = list(cfg.run.seeds if seeds is None else seeds)
    jobs = {(r.name, d, s): r.job(d, s) for r in rows for d in datasets for s in seeds}
    run_jobs(cfg, list(jobs.values()), workers=workers)
    evaluate = functools.partial(evaluate_modes, cfg, modes=tuple(modes))
    return dict(zip(jobs, map_in_workers(evaluate, list(jobs.values()), workers)))


# -- table, figure, sentences -------------------------------------------------------------------


def robustness_table(
    cfg: Config,
    rows: Sequence[Row],
    results: Mapping[tuple[str, str, int], dict[str, Any]],
    datasets: Sequence[str],
    modes: Sequence[str] = MODES,
) -> Table:
    """Rows ``<dataset> · <model row>``; columns F1 per image mode, on all posts and on those
    with a relevant / irrelevant image; one value per seed."""
    table = Table.for_config(
        cfg, "robustness", columns(modes), with_paper=False,
        title="Test F1 with the true image, a blank image and another post's image (models "
        "trained with true images), on all posts and by the relevance of the post's own image",
    )  # fmt: skip
    for d in datasets:
        for row in rows:
            found = [
                v for (name, ds, _), v in sorted(results.items()) if (name, ds) == (row.name, d)
            ]
            measured: dict[str, list[float]] = {}
            reasons: dict[str, str] = {}
            for m in modes:
                for s in SUBSETS:
                    values = [r["f1"][m][s] for r in found if r["f1"][m][s] is not None]
                    if values:
                        measured[column(m, s)] = values
                    elif found:
                        no_truth = all(
                            r["n"]["relevant"] + r["n"]["irrelevant"] == 0 for r in found
                        )
                        reasons[column(m, s)] = NO_TRUTH if no_truth else EMPTY_SUBSET
                    else:
                        reasons[column(m, s)] = "not run"
            n = found[0]["n"] if found else {}
            config = {"dataset": d, "model": row.model, "pretrain": row.pretrain, "test_posts": n}
            table.add_row(f"{d} · {row.name}", measured, reasons=reasons, config=config)
    return table


def _mean(values: Sequence[float | None]) -> float:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else math.nan


def mean_f1(
    results: Mapping[tuple[str, str, int], dict[str, Any]], name: str, dataset: str, mode: str,
    subset: str = "all",
) -> float:  # fmt: skip
    """Mean over seeds of one row's F1 (NaN when not measured)."""
    return _mean(
        [r["f1"][mode][subset] for (n, d, _), r in results.items() if (n, d) == (name, dataset)]
    )


def figure_panels(
    results: Mapping[tuple[str, str, int], dict[str, Any]],
    rows: Sequence[Row],
    datasets: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> dict[str, tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]]:
    """Per dataset: (F1 per image mode on all posts, F1 with true images on posts whose image
    is relevant / irrelevant), each ``{group: {model label: mean F1}}`` (``labels``: row name
    -> legend name, default :func:`short_label`)."""
    labels = labels or {r.name: short_label(r) for r in rows}
    panels = {}
    for d in datasets:
        top = {
            m: {labels.get(r.name, r.name): mean_f1(results, r.name, d, m) for r in rows}
            for m in MODES
        }
        bottom = {
            f"{s} image": {
                labels.get(r.name, r.name): mean_f1(results, r.name, d, "true", s) for r in rows
            }
            for s in ("relevant", "irrelevant")
        }
        panels[d] = (top, bottom)
    return panels


def summary(
    results: Mapping[tuple[str, str, int], dict[str, Any]],
    rows: Sequence[Row],
    datasets: Sequence[str],
    hvpnet: str = "HVPNeT",
    tolerance: float = 1.0,
) -> list[str]:
    """Plain sentences computed from the numbers: what a blank and a wrong image cost, whether
    irrelevant-image posts score lower, and whether HVPNeT's gates protect it (differences
    below ``tolerance`` F1 are called no evidence either way). Models at 0 F1 are named: their
    runs collapsed, and comparisons among them say nothing."""
    lines = []
    live = {(r.name, d) for r in rows for d in datasets if mean_f1(results, r.name, d, "true")}
    zero = [f"{r.name} on {d}" for d in datasets for r in rows
            if mean_f1(results, r.name, d, "true") == 0.0]  # fmt: skip
    if zero:
        lines.append(
            f"{len(zero)} model(s) score 0 F1 even with the true image ({'; '.join(zero)}): "
            "those runs collapsed (see the guards' flags in their metrics.json) and are left "
            "out of the averages below."
        )
    drops: dict[str, dict[str, float]] = {}
    for r in rows:
        for m in ("blank", "shuffled"):
            gaps = [
                mean_f1(results, r.name, d, "true") - mean_f1(results, r.name, d, m)
                for d in datasets
                if (r.name, d) in live
            ]
            drops.setdefault(r.name, {})[m] = _mean([g for g in gaps if not math.isnan(g)])
    for m, what in (("blank", "a blank image"), ("shuffled", "another post's image")):
        avg = _mean([v[m] for v in drops.values()])
        worst = max(drops, key=lambda n: -math.inf if math.isnan(drops[n][m]) else drops[n][m])
        lines.append(
            f"Replacing the image by {what} costs {avg:+.2f} F1 on average over models and "
            f"datasets (positive = lower F1); most for {worst} ({drops[worst][m]:+.2f})."
        )
    rel = _mean([mean_f1(results, n, d, "true", "relevant") for n, d in live])
    irr = _mean([mean_f1(results, n, d, "true", "irrelevant") for n, d in live])
    if math.isnan(irr):
        lines.append("No post is known to carry an irrelevant image here (no truth files).")
    else:
        lines.append(
            f"With the true images, posts whose image is irrelevant score {irr:.2f} F1 on "
            f"average against {rel:.2f} for posts with a relevant image ({irr - rel:+.2f})."
        )
    if hvpnet in drops:
        others = [v["shuffled"] for n, v in drops.items() if n != hvpnet]
        mine, rest = drops[hvpnet]["shuffled"], _mean(others)
        if abs(mine - rest) < tolerance:
            verdict = (
                f"within {tolerance:.1f} F1 of each other: no evidence that its gates protect "
                "it (or fail to) in this world"
            )
        elif mine < rest:
            verdict = "a smaller loss: its gates do damp a wrong image here"
        else:
            verdict = "a larger loss: its gates do not protect it from a wrong image here"
        lines.append(
            f"{hvpnet} loses {mine:+.2f} F1 with another post's image against {rest:+.2f} for "
            f"the other multimodal models: {verdict}."
        )
    return lines


# -- the study ----------------------------------------------------------------------------------


def jobs(cfg: Config, datasets: Sequence[str] | None = None) -> list[Finetune]:
    """Table 1's multimodal models on every dataset (default: the profile's scope) and seed."""
    return row_jobs(multimodal_rows(), in_scope(cfg, datasets), cfg.run.seeds)


def run(
    cfg: Config, results: Any, out_dir: str | Path, datasets: Sequence[str] | None = None
) -> Outputs:
    """Evaluate each model with the true, a blank and another post's image (in worker
    processes; cached per model), then the table, the figure and the computed sentences.
    ``results``: the fine-tuning jobs' results (the evaluation reads their run directories)."""
    from promu_lib import plots

    datasets = in_scope(cfg, datasets)
    rows = multimodal_rows()
    evaluated = robustness_results(cfg, rows, datasets)
    out = Outputs.start(cfg, out_dir)
    out.table(robustness_table(cfg, rows, evaluated, datasets))
    out.figure(plots.robustness_figure(figure_panels(evaluated, rows, datasets)), "robustness")
    out.lines = summary(evaluated, rows, datasets)
    return out
