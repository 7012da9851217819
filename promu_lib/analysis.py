"""Analysis helpers behind the papers' figures: pure functions over arrays, and plots.

- PROMU Fig 3: :func:`tsne_2d` + :func:`plot_tsne` (entity-object / image-relation consistency).
- PROMU Fig 4: :func:`tail_relations`, :func:`f1_gains`, :func:`plot_gains` (gains of
  pre-training on the rarest relations and on ORG/MISC, against all relations / types).
- PROMU Fig 5: :func:`attention_overlay` (a text token's attention over image patches).
- HVPNeT Fig 4: :func:`gate_heatmap` (dynamic gate per Transformer layer and visual block);
  HVPNeT Fig 3: :func:`low_resource_curve`; robustness: :func:`grouped_bars`.
- Data overview and predictions: :func:`draw_boxes`, :func:`describe_post`,
  :func:`example_posts_figure`.

Inputs are numpy arrays, torch tensors or plain sequences; every plot draws on a given
matplotlib ``ax`` and returns it, so notebooks compose figures and save them with
:func:`promu_lib.report.save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from promu_lib.data.layout import DATASETS, DataLayout
from promu_lib.data.records import Box, NerPost, RePost

# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """A numpy copy of an array, a (possibly CUDA, possibly grad-tracking) tensor or a list."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()  # bf16/fp16 have no numpy dtype
    return np.asarray(x, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Fig 3: t-SNE
# ---------------------------------------------------------------------------------------------


def tsne_2d(
    features: Any, seed: int = 0, perplexity: float = 30.0, max_iter: int = 1000
) -> np.ndarray:
    """(N, D) features -> (N, 2) t-SNE points, PCA-initialised, deterministic for a seed.

    ``perplexity`` is clipped to N - 1 (t-SNE needs fewer neighbours than points), so the
    paper's 50 samples and a 5-point smoke test both work.
    """
    from sklearn.manifold import TSNE

    x = to_numpy(features)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"t-SNE needs an (N, D) array with N >= 3, got shape {x.shape}")
    tsne = TSNE(
        n_components=2,
        init="pca",
        perplexity=min(perplexity, x.shape[0] - 1),
        random_state=seed,
        learning_rate="auto",
        max_iter=max_iter,
    )
    return tsne.fit_transform(x)


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


# ---------------------------------------------------------------------------------------------
# Fig 4: tail relations and F1 gains
# ---------------------------------------------------------------------------------------------


def tail_relations(
    train_relation_counts: Mapping[str, int], k: int = 8, negative: str = "None"
) -> list[str]:
    """The ``k`` rarest relations in training (the negative class excluded), rarest first;
    ties broken by name so the choice is deterministic."""
    ranked = sorted((c, r) for r, c in train_relation_counts.items() if r != negative)
    return [r for _, r in ranked[:k]]


def f1_gains(
    per_rel_a: Mapping[str, float],
    per_rel_b: Mapping[str, float],
    relations: Sequence[str],
    relative: bool = False,
) -> dict[str, float]:
    """F1 of model b minus model a per relation (or entity type), in F1 points; with
    ``relative=True`` as a percentage of a's F1 (NaN where a's F1 is 0)."""
    missing = [r for r in relations if r not in per_rel_a or r not in per_rel_b]
    if missing:
        raise KeyError(f"no per-class F1 for {missing} in one of the two models")
    out = {}
    for r in relations:
        a, b = float(per_rel_a[r]), float(per_rel_b[r])
        out[r] = (100.0 * (b - a) / a if a else math.nan) if relative else b - a
    return out


def mean_gain(gains: Mapping[str, float]) -> float:
    """The average of the finite gains (NaN when there is none)."""
    vals = [v for v in gains.values() if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


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


# ---------------------------------------------------------------------------------------------
# Fig 5: attention over image patches
# ---------------------------------------------------------------------------------------------


def upsample_attention(
    patch_attention: Any, size: tuple[int, int], grid: tuple[int, int] | None = None
) -> np.ndarray:
    """(K,) attention over a (gh, gw) patch grid -> (H, W) map in [0, 1], bilinear.

    Scaled to [0, 1] by its min and max, as the paper reads attention "from 0 to 1".
    """
    att = to_numpy(patch_attention).ravel()
    if grid is None:
        g = math.isqrt(att.size)
        if g * g != att.size:
            raise ValueError(f"{att.size} patch weights are not a square grid; pass grid=(gh, gw)")
        grid = (g, g)
    if grid[0] * grid[1] != att.size:
        raise ValueError(f"{att.size} patch weights do not fill a {grid[0]}x{grid[1]} grid")
    lo, hi = float(att.min()), float(att.max())
    att = (att - lo) / (hi - lo) if hi > lo else np.zeros_like(att)
    im = Image.fromarray(att.reshape(grid).astype(np.float32), mode="F")
    h, w = size
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR)).clip(0.0, 1.0)


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


# ---------------------------------------------------------------------------------------------
# Posts with boxes
# ---------------------------------------------------------------------------------------------


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


def entity_mentions(post: NerPost) -> list[tuple[str, str]]:
    """(text, type) of each entity of a BIO-labelled post (an I- after another type opens one)."""
    out: list[tuple[list[str], str]] = []
    prev = "O"
    for tok, lab in zip(post.tokens, post.labels):
        if lab.startswith("B-") or (lab.startswith("I-") and prev[2:] != lab[2:]):
            out.append(([tok], lab[2:]))
        elif lab.startswith("I-"):
            out[-1][0].append(tok)
        prev = lab
    return [(" ".join(toks), typ) for toks, typ in out]


def describe_post(post: NerPost | RePost, width: int = 60) -> str:
    """A short, wrapped caption: the text, then its entities (NER) or head, relation, tail (RE)."""
    import textwrap

    text = " ".join(post.tokens)
    if isinstance(post, NerPost):
        ents = ", ".join(f"{t} [{typ}]" for t, typ in entity_mentions(post)) or "no entity"
        extra = ents
    else:
        extra = f"{post.head.name} —{post.relation}→ {post.tail.name}"
    return "\n".join(textwrap.wrap(text, width)[:3] + textwrap.wrap(extra, width))


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


# ---------------------------------------------------------------------------------------------
# HVPNeT analyses
# ---------------------------------------------------------------------------------------------


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
