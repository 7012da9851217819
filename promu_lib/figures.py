"""The stage notebooks' figures (01-10), composed from ``analysis`` plots.

Each function returns a matplotlib figure for :func:`promu_lib.report.save_figure`; the data
comes from ``tables`` (job results) or ``inspect`` (model internals), so a notebook is a
few calls: compute, draw, save.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from promu_lib import analysis
from promu_lib.data.layout import DataLayout
from promu_lib.experiments import Row


def short_label(name: str) -> str:
    """``/per/per/parent`` -> ``per/parent`` (MNRE relation names are long for legends)."""
    parts = [p for p in name.split("/") if p]
    return "/".join(parts[-2:]) if len(parts) >= 3 else name


def _grid(n: int, cols: int, size: tuple[float, float] = (3.2, 3.0)) -> tuple[Any, list]:
    import matplotlib.pyplot as plt

    rows = max(1, math.ceil(n / cols))
    cols = max(1, min(cols, n))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


# -- 01: mining ----------------------------------------------------------------------------------


def mining_examples_figure(
    layout: DataLayout, labels: Any, n_examples: int = 6, seed: int = 0, cols: int = 3
) -> Any:
    """Caption images with their mined boxes, each labelled with its top-1 pseudo-label noun
    and probability (Eq. 6), the caption and the top-1 relation (Eq. 9) underneath."""
    import textwrap

    from promu_lib.data.formats import read_captions
    from promu_lib.data.images import load_image, safe_join
    from promu_lib.mining import RELATION_PHRASES

    captions = {p.image: p.caption for p in read_captions(layout.captions()) if p.matched}
    keys = [
        k for k in labels.keys if k in captions and bool(labels.object_mask[labels.row(k)].any())
    ]
    keys = random.Random(seed).sample(keys, min(n_examples, len(keys)))
    fig, axes = _grid(len(keys), cols, (3.0, 3.6))
    for ax, key in zip(axes, keys):
        i = labels.row(key)
        image = load_image(safe_join(layout.caption_image_dir(), key))
        w, h = image.size
        boxes, names = [], []
        for j in range(labels.boxes.shape[1]):
            if not bool(labels.object_mask[i, j]):
                continue
            x1, y1, x2, y2 = (float(v) for v in labels.boxes[i, j])
            boxes.append((x1 * w, y1 * h, x2 * w, y2 * h))
            p, k = labels.q_ent[i, j].max(-1)
            names.append(f"{labels.nouns[int(k)]} {float(p):.2f}")
        pr, kr = labels.q_rel[i].max(-1)
        rel = labels.relation_labels[int(kr)]
        text = textwrap.wrap(captions[key], 40)[:2]
        text.append(f"relation: {RELATION_PHRASES.get(rel, rel)} {float(pr):.2f}")
        analysis.draw_boxes(np.asarray(image), boxes, names, ax, title=key, caption="\n".join(text))
    fig.tight_layout()
    return fig


# -- 02: pre-training ----------------------------------------------------------------------------


def pretrain_losses_figure(
    histories: Mapping[str, Sequence[Mapping[str, float]]], main: str = "promu"
) -> Any:
    """Left: each loss of Eq. 11 of the ``main`` run against the step; right: the weighted
    total of every variant."""
    import matplotlib.pyplot as plt

    from promu_lib.models.pretraining import LOSS_NAMES

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    hist = histories.get(main, [])
    for name in LOSS_NAMES:
        pts = [(h["step"], h[name]) for h in hist if name in h]
        if pts:
            left.plot(*zip(*pts), marker=".", label=f"L_{name.upper()}")
    left.set(title=f"losses of the '{main}' run", xlabel="step", ylabel="loss")
    left.legend(frameon=False)
    for variant, h in histories.items():
        if h:
            right.plot([x["step"] for x in h], [x["total"] for x in h], marker=".", label=variant)
    right.set(title="total (weighted, Eq. 11) per variant", xlabel="step", ylabel="loss")
    right.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig


# -- 03: fine-tuning -----------------------------------------------------------------------------


def dev_curves_figure(
    results: Mapping[Any, Any], rows: Sequence[Row], datasets: Sequence[str], seed: int
) -> Any:
    """Dev F1 after each epoch (``metrics["history"]``), one panel per dataset, one line per
    row, for one seed."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _grid(len(datasets), 3, (4.2, 3.4))
    for ax, d in zip(axes, datasets):
        for row in rows:
            r = results.get(row.job(d, seed))
            if r is None:
                continue
            h = r["history"]
            ax.plot(
                [x["epoch"] + 1 for x in h], [x["dev_f1"] for x in h], marker=".", label=row.name
            )
        ax.set(title=d, xlabel="epoch", ylabel="dev F1")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axes:
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=2, fontsize="small", frameon=False,
                   bbox_to_anchor=(0.5, -0.02 - 0.04 * math.ceil(len(names) / 2)))  # fmt: skip
    fig.tight_layout()
    return fig


# -- 04-06, 10: result tables as bars --------------------------------------------------------------


def table_bars(table: Any, columns: Sequence[str] | None = None, title: str = "") -> Any:
    """A result table's measured means (± std over seeds) as grouped bars: one group per
    column (default: the F1 columns), one bar per row."""
    import matplotlib.pyplot as plt

    if columns is None:
        columns = [c for c in table.columns if c.endswith("F1")] or list(table.columns)
    values: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    for c in columns:
        values[c] = {r.name: r.cells[c].mean for r in table.rows if r.cells[c].mean is not None}
        errors[c] = {
            r.name: r.cells[c].std or 0.0 for r in table.rows if r.cells[c].mean is not None
        }
    fig, ax = plt.subplots(
        figsize=(max(6.0, 1.2 * len(columns) * max(1, len(table.rows)) / 3), 4.2)
    )
    analysis.grouped_bars(values, ax, title=title or table.name, ylabel="test F1", errors=errors)
    ax.legend(fontsize="x-small", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


# -- 07: t-SNE -----------------------------------------------------------------------------------


def tsne_figure(panels: Mapping[str, Any], seed: int = 0) -> Any:
    """One t-SNE panel per ``inspect.Embeddings`` (title -> embeddings); a panel with fewer
    than 3 points says so instead."""
    from threadpoolctl import threadpool_limits

    fig, axes = _grid(len(panels), 2, (7.6, 4.4))
    for ax, (title, emb) in zip(axes, panels.items()):
        if len(emb) < 3:
            ax.set_title(title)
            ax.text(0.5, 0.5, f"{len(emb)} points: too few for t-SNE", ha="center")
            ax.axis("off")
            continue
        with threadpool_limits(1):  # t-SNE on ~100 points: threads only contend (6x slower)
            pts = analysis.tsne_2d(emb.features, seed=seed)
        analysis.plot_tsne(pts, [short_label(x) for x in emb.labels], title, ax, emb.kinds)
        handles, names = ax.get_legend_handles_labels()  # beside the panel, not over the points
        ax.legend(
            handles, names, fontsize=6, ncol=1 if len(names) <= 14 else 2, frameon=False,
            loc="upper left", bbox_to_anchor=(1.0, 1.0),
        )  # fmt: skip
    fig.tight_layout()
    return fig


# -- 08: gains -------------------------------------------------------------------------------------


def fig4_figure(gains: Any) -> Any:
    """PROMU Fig 4's layout: per-class gains (mean over seeds, F1 points) with the averages
    beside them, one panel for the tail relations and one per Twitter set."""
    panels = [(d, g) for d, g in gains.per_class.items()]
    fig, axes = _grid(len(panels), 3, (4.6, 3.6))
    for ax, (d, per) in zip(axes, panels):
        mean = {k: float(np.mean(v)) for k, v in per.items()}
        if d == "mnre":
            summary = {
                "tail avg": _mean(gains.summary["MRE: the 8 tail relations"]["gain (F1 points)"]),
                "all avg": _mean(gains.summary["MRE: all relations"]["gain (F1 points)"]),
            }
            title = "MRE: the 8 rarest relations"
        else:
            summary = {"all avg": analysis.mean_gain(mean)}
            title = f"MNER {d}: entity types"
        analysis.plot_gains(mean, ax, title, summary)
    fig.tight_layout()
    return fig


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# -- 09: attention -------------------------------------------------------------------------------


def attention_figure(cases: Mapping[str, Sequence[Any]]) -> Any:
    """One row per post: the image, then each model's attention of the mention over the
    patches (``cases[model]``: ``inspect.AttentionCase`` lists over the same posts)."""
    import matplotlib.pyplot as plt

    models = list(cases)
    n = len(cases[models[0]]) if models else 0
    fig, axes = plt.subplots(
        max(1, n), 1 + len(models), figsize=(2.8 * (1 + len(models)), 2.9 * max(1, n)),
        squeeze=False,
    )  # fmt: skip
    for i in range(n):
        first = cases[models[0]][i]
        axes[i][0].imshow(first.image)
        axes[i][0].set_title(f"{first.post_id}\n'{first.mention}' (gold {first.gold})", fontsize=7)
        axes[i][0].axis("off")
        for k, m in enumerate(models, 1):
            c = cases[m][i]
            analysis.attention_overlay(
                c.image, c.attention, axes[i][k], f"{m}: predicted {c.pred}", grid=c.grid
            )
    if n == 0:
        axes[0][0].text(0.5, 0.5, "no post with an entity", ha="center")
        axes[0][0].axis("off")
    fig.tight_layout()
    return fig


# -- 10: HVPNeT ------------------------------------------------------------------------------------


def low_resource_figure(
    curves: Mapping[str, Mapping[str, Sequence[Sequence[float]]]], fractions: Sequence[float]
) -> Any:
    """``analysis.low_resource_curve`` per dataset."""
    fig, axes = _grid(len(curves), 3, (4.2, 3.4))
    for ax, (d, scores) in zip(axes, curves.items()):
        analysis.low_resource_curve(fractions, scores, ax, title=d, ylabel="test F1")
    fig.tight_layout()
    return fig


def gates_figure(gates: Mapping[str, Mapping[str, Any]]) -> Any:
    """``analysis.gate_heatmap`` per dataset and image kind (global image, objects)."""
    panels = [(f"{d}: {kind}", g) for d, per in gates.items() for kind, g in per.items()]
    fig, axes = _grid(len(panels), 2, (4.4, 3.2))
    for ax, (title, g) in zip(axes, panels):
        analysis.gate_heatmap(g, ax, title)
    fig.tight_layout()
    return fig
