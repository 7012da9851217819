"""Every plot of the project: the stage figures and the primitives they are drawn with.

Primitives draw on a given matplotlib ``ax`` and return it (:func:`plot_tsne`,
:func:`plot_gains`, :func:`attention_overlay`, :func:`draw_boxes`, :func:`gate_heatmap`,
:func:`low_resource_curve`, :func:`grouped_bars`); the figure functions compose them and return
a figure for :meth:`promu_lib.studies.common.Outputs.figure` (or
:func:`promu_lib.report.save_figure`). The numbers come from the studies (job results, model
internals); nothing here trains or reads a model.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from promu_lib import analysis
from promu_lib.analysis import describe_post, to_numpy, upsample_attention
from promu_lib.data.layout import DATASETS, DataLayout
from promu_lib.data.records import Box, NerPost, RePost


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
        draw_boxes(np.asarray(image), boxes, names, ax, title=key, caption="\n".join(text))
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
    results: Mapping[Any, Any], rows: Sequence[Any], datasets: Sequence[str], seed: int
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
    grouped_bars(values, ax, title=title or table.name, ylabel="test F1", errors=errors)
    ax.legend(fontsize="x-small", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


# -- 07: t-SNE -----------------------------------------------------------------------------------


def tsne_figure(panels: Mapping[str, Any], seed: int = 0) -> Any:
    """One t-SNE panel per ``studies.fig3_tsne.Embeddings`` (title -> embeddings); a panel with fewer
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
        plot_tsne(pts, [short_label(x) for x in emb.labels], title, ax, emb.kinds)
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
        plot_gains(mean, ax, title, summary)
    fig.tight_layout()
    return fig


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# -- 09: attention -------------------------------------------------------------------------------


def attention_figure(cases: Mapping[str, Sequence[Any]]) -> Any:
    """One row per post: the image, then each model's attention of the mention over the
    patches (``cases[model]``: ``studies.fig5_attention.AttentionCase`` lists over the same posts)."""
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
            attention_overlay(
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
    """``low_resource_curve`` per dataset."""
    fig, axes = _grid(len(curves), 3, (4.2, 3.4))
    for ax, (d, scores) in zip(axes, curves.items()):
        low_resource_curve(fractions, scores, ax, title=d, ylabel="test F1")
    fig.tight_layout()
    return fig


def gates_figure(gates: Mapping[str, Mapping[str, Any]]) -> Any:
    """``gate_heatmap`` per dataset and image kind (global image, objects)."""
    panels = [(f"{d}: {kind}", g) for d, per in gates.items() for kind, g in per.items()]
    fig, axes = _grid(len(panels), 2, (4.4, 3.2))
    for ax, (title, g) in zip(axes, panels):
        gate_heatmap(g, ax, title)
    fig.tight_layout()
    return fig


def plot_tsne(
    points: Any,
    labels: Sequence[str],
    title: str,
    ax: Any,
    kinds: Sequence[str] | None = None,
) -> Any:
    """Scatter (N, 2) ``points`` coloured by ``labels``; ``kinds`` (e.g. "text"/"image") picks
    the marker, so paired embeddings of the two modalities can be told apart."""
    pts = to_numpy(points)
    labels = [str(x) for x in labels]
    kinds = [str(k) for k in kinds] if kinds is not None else ["" for _ in labels]
    if not (len(pts) == len(labels) == len(kinds)):
        raise ValueError(f"{len(pts)} points, {len(labels)} labels, {len(kinds)} kinds")
    markers = dict(zip(sorted(set(kinds)), "o^sDvP*X"))
    colours = _colours(sorted(set(labels)))
    for lab in sorted(set(labels)):
        for kind in sorted(set(kinds)):
            sel = [i for i, (la, k) in enumerate(zip(labels, kinds)) if la == lab and k == kind]
            if sel:
                name = f"{lab} ({kind})" if kind else lab
                ax.scatter(*pts[sel].T, s=22, color=colours[lab], marker=markers[kind], label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize="small", loc="best", frameon=False)
    return ax


def label_colour(label: str) -> Any:
    """A colour fixed by the label's text, so a class looks the same in every panel and run."""
    import zlib

    import matplotlib

    return matplotlib.colormaps["tab10"](zlib.crc32(label.encode()) % 10)


def _colours(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def plot_gains(
    gains: Mapping[str, float],
    ax: Any,
    title: str,
    summary: Mapping[str, float] | None = None,
    ylabel: str = "F1 gain (points)",
) -> Any:
    """Bars of per-class gains, then ``summary`` bars (e.g. ``{"tail avg": .., "all avg": ..}``)
    in another colour: the layout of PROMU's Fig 4."""
    names = [_short(n) for n in gains] + list(summary or {})
    values = list(gains.values()) + list((summary or {}).values())
    colours = ["#4C72B0"] * len(gains) + ["#DD8452"] * len(summary or {})
    x = np.arange(len(names))
    ax.bar(x, np.nan_to_num(values), color=colours)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax


def _short(relation: str) -> str:
    """``/per/per/parent`` -> ``per/parent`` (MNRE names are long for tick labels)."""
    parts = [p for p in relation.split("/") if p]
    return "/".join(parts[-2:]) if len(parts) >= 3 else relation


def attention_overlay(
    image: Any,
    patch_attention: Any,
    ax: Any,
    title: str = "",
    grid: tuple[int, int] | None = None,
    alpha: float = 0.5,
) -> Any:
    """Draw ``image`` (H, W, 3) uint8 with a text token's attention over its patches blended on
    top (PROMU Fig 5)."""
    img = np.asarray(image)
    heat = upsample_attention(patch_attention, img.shape[:2], grid)
    ax.imshow(img)
    ax.imshow(heat, cmap="inferno", alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize="small")
    ax.axis("off")
    return ax


def _box_corners(box: Box | Sequence[float]) -> tuple[float, float, float, float]:
    if isinstance(box, Box):
        return box.x1, box.y1, box.x2, box.y2
    x1, y1, x2, y2 = (float(v) for v in list(box)[:4])
    return x1, y1, x2, y2


def draw_boxes(
    image: Any,
    boxes: Sequence[Box | Sequence[float]],
    labels: Sequence[str] | None,
    ax: Any,
    title: str | None = None,
    caption: str | None = None,
) -> Any:
    """Show ``image`` with pixel ``boxes`` and their ``labels`` (default: each Box's class);
    ``caption`` (e.g. from :func:`describe_post`) goes under the image."""
    import matplotlib.patches as mpatches

    img = np.asarray(image)
    if labels is None:
        labels = [b.cls if isinstance(b, Box) else "" for b in boxes]
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    ax.imshow(img)
    for box, label in zip(boxes, labels):
        x1, y1, x2, y2 = _box_corners(box)
        ax.add_patch(
            mpatches.Rectangle(
                (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=label_colour(label), linewidth=1.5
            )
        )
        if label:
            ax.text(
                x1, y1, label, fontsize=7, color="white", va="bottom",
                bbox={"facecolor": label_colour(label), "alpha": 0.8, "pad": 1, "linewidth": 0},
            )  # fmt: skip
    ax.set_xlim(0, img.shape[1])
    ax.set_ylim(img.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize="small")
    if caption:
        ax.set_xlabel(caption, fontsize=7)
    return ax


def example_posts_figure(
    layout: DataLayout,
    n_examples: int = 4,
    seed: int = 0,
    split: str = "train",
    datasets: Sequence[str] = DATASETS,
) -> Any:
    """A grid of ``n_examples`` random posts per dataset (one row each): the image, its boxes
    (from the boxes file, when there is one) and the text with its entities or relation.
    MRE posts are picked with distinct relations where possible (most lines are "None").
    Images follow ``data.on_missing_image`` (a blank stand-in when it is "blank")."""
    import random

    import matplotlib.pyplot as plt

    from promu_lib.data.formats import read_boxes, read_mnre, read_twitter
    from promu_lib.data.images import ImageLoader, safe_join

    loader = ImageLoader(on_missing=layout.data.on_missing_image)
    fig, axes = plt.subplots(
        len(datasets), n_examples, figsize=(2.6 * n_examples, 3.4 * len(datasets)), squeeze=False
    )
    for row, dataset in enumerate(datasets):
        path = layout.split_file(dataset, split)
        posts = read_mnre(path) if dataset == "mnre" else read_twitter(path)
        boxes = read_boxes(layout.boxes(dataset)) if layout.boxes(dataset).is_file() else {}
        picked = _pick(posts, n_examples, random.Random(f"{seed}-{dataset}"))
        axes[row][0].set_ylabel(dataset)
        for ax, post in zip(axes[row], picked):
            name = layout.image_name(dataset, post.img_id)
            file = safe_join(layout.image_dir(dataset, split), name, source=path, line=post.line)
            draw_boxes(loader(file), boxes.get(post.img_id, []), None, ax)
            ax.set_title(name, fontsize=7)
            ax.set_xlabel(describe_post(post, width=34), fontsize=7)
        for ax in axes[row][len(picked) :]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def _pick(posts: Sequence[NerPost | RePost], n: int, rng: Any) -> list:
    """``n`` random posts; for RE, one per relation first, so the figure shows several."""
    order = rng.sample(list(posts), len(posts))
    if not order or not isinstance(order[0], RePost):
        return order[:n]
    first, rest, seen = [], [], set()
    for p in order:
        (rest if p.relation in seen else first).append(p)
        seen.add(p.relation)
    return (first + rest)[:n]


def gate_heatmap(gates: Any, ax: Any, title: str = "dynamic gate") -> Any:
    """HVPNeT's dynamic gate g^(l) (its Eq. 3-4) as a (layers, blocks) heatmap; a
    (posts, layers, blocks) array is averaged over posts first."""
    g = to_numpy(gates)
    if g.ndim == 3:
        g = g.mean(axis=0)
    if g.ndim != 2:
        raise ValueError(
            f"gates must be (layers, blocks) or (posts, layers, blocks), got {g.shape}"
        )
    im = ax.imshow(g, cmap="viridis", aspect="auto", vmin=0.0, vmax=max(1e-9, float(g.max())))
    ax.set_xticks(range(g.shape[1]), [f"block {i + 1}" for i in range(g.shape[1])])
    ax.set_yticks(range(g.shape[0]), [f"layer {i + 1}" for i in range(g.shape[0])])
    for (i, j), v in np.ndenumerate(g):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def low_resource_curve(
    fractions: Sequence[float],
    scores: Mapping[str, Sequence[Sequence[float]]],
    ax: Any,
    title: str = "",
    ylabel: str = "F1",
) -> Any:
    """F1 against training fraction, one line per model: ``scores[model][i]`` holds the
    per-seed F1 at ``fractions[i]``; the band is mean ± sample std (HVPNeT Fig 3)."""
    x = np.asarray(fractions, dtype=float)
    for model, per_fraction in scores.items():
        if len(per_fraction) != len(x):
            raise ValueError(f"{model}: {len(per_fraction)} score lists for {len(x)} fractions")
        mean = np.array([np.mean(s) if len(s) else np.nan for s in per_fraction])
        std = np.array([np.std(s, ddof=1) if len(s) > 1 else 0.0 for s in per_fraction])
        (line,) = ax.plot(x, mean, marker="o", label=model)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("fraction of training data")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", frameon=False)
    return ax


def grouped_bars(
    table: Mapping[str, Mapping[str, float]],
    ax: Any,
    title: str = "",
    ylabel: str = "F1",
    errors: Mapping[str, Mapping[str, float]] | None = None,
) -> Any:
    """``table[group][series]`` as grouped bars (e.g. groups = image conditions, series =
    models), with optional error bars ``errors[group][series]``."""
    groups = list(table)
    series = list(dict.fromkeys(s for g in groups for s in table[g]))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, s in enumerate(series):
        vals = [table[g].get(s, np.nan) for g in groups]
        err = [errors[g].get(s, 0.0) for g in groups] if errors else None
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, yerr=err, label=s, capsize=2)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small", frameon=False)
    return ax


def robustness_figure(
    panels: Mapping[
        str, tuple[Mapping[str, Mapping[str, float]], Mapping[str, Mapping[str, float]]]
    ],
) -> Any:
    """Top: F1 per image mode (all posts); bottom: F1 with true images on posts whose image is
    relevant vs irrelevant. One column of panels per dataset, one bar per model
    (``panels[dataset] = (top, bottom)``, from ``studies.robustness.figure_panels``)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 6.4), squeeze=False)
    for j, (d, (top, bottom)) in enumerate(panels.items()):
        grouped_bars(top, axes[0][j], title=f"{d}: image shown", ylabel="test F1")
        grouped_bars(bottom, axes[1][j], title=f"{d}: true image, by post", ylabel="test F1")
        for ax in (axes[0][j], axes[1][j]):
            ax.get_legend().remove()
            ax.set_ylim(bottom=0)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    fig.legend(handles, names, loc="center right", fontsize="small", frameon=False)
    return fig


def llm_figure(data: Mapping[str, Mapping[str, float]]) -> Any:
    """Measured F1 beside Visual ChatGPT's per dataset (``studies.llm.figure_data``; NaN draws
    no bar)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    grouped_bars(data, ax, title="Chat model with vision, two demonstrations", ylabel="test F1")
    fig.tight_layout()
    return fig
