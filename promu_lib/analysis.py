"""Analysis behind the papers' figures: pure functions over arrays and posts (no plotting:
``promu_lib.plots`` draws).

- PROMU Fig 3: :func:`tsne_2d` (entity-object / image-relation consistency).
- PROMU Fig 4: :func:`tail_relations`, :func:`f1_gains`, :func:`mean_gain` (gains of
  pre-training on the rarest relations and on ORG/MISC, against all relations / types).
- PROMU Fig 5: :func:`upsample_attention` (a text token's attention over image patches).
- Data overview and predictions: :func:`entity_mentions`, :func:`describe_post`.

Inputs are numpy arrays, torch tensors or plain sequences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from promu_lib.data.records import NerPost, RePost

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


# ---------------------------------------------------------------------------------------------
# Posts with boxes
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# HVPNeT analyses
# ---------------------------------------------------------------------------------------------
