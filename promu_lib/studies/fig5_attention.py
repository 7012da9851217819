"""PROMU Fig 5: where does an entity look in the image?

The attention of an entity mention over the image in the fusion layers: after entity-object
alignment the mention attends to its own object (the trophy for "Oscar") and the type follows.
Here: the first word of the first mention of a few test posts, its attention over the image
patches in the last fusion layer (mean over heads, scaled to 0-1), for the fusion model from
scratch and from PROMU pre-training, with each model's predicted tag. In the toy world each
mention has its own drawn object, so :func:`attention_table` measures how much of the
mention's patch attention lands inside that object's box. A handful of posts is a case study,
not a statistic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from promu_lib.config import Config
from promu_lib.data.records import NER_TAGS
from promu_lib.data.toyworld_oracle import entity_spans
from promu_lib.jobs import Finetune
from promu_lib.report import Table
from promu_lib.studies.common import Outputs, Results, promu_job, scratch_job
from promu_lib.studies.probing import (
    batches,
    fusion_encoder,
    image_array,
    image_size,
    inference,
    load_finetuned,
    load_posts,
    patch_grid,
    read_truth_rows,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor

NOTEBOOK = "09_fig5_attention.ipynb"
TITLE = "Fig 5: attention case studies"
READER = True
TABLES = ("fig5_attention",)
FIGURES = ("fig5_attention",)


def token_patch_attention(
    attentions: Sequence[Tensor], text_len: int, positions: Tensor, layer: int = -1
) -> Tensor:
    """(B, K) attention of the text token at ``positions`` (B,) over the K image patches in
    fusion layer ``layer``, averaged over heads. Each layer's map is (B, nh, L + 1 + K,
    L + 1 + K) over concat(text (L), image CLS, patches); each row sums to one over all keys,
    so the patch weights sum to at most one."""
    import torch

    att = attentions[layer]  # (B, nh, T, T)
    rows = att[torch.arange(att.shape[0]), :, positions]  # (B, nh, T)
    return rows[..., text_len + 1 :].mean(1)


@dataclass
class AttentionCase:
    """One mention of one post and where it looks in the image."""

    post_id: str
    mention: str
    gold: str  # gold entity type
    pred: str  # predicted tag of the mention's first word
    image: np.ndarray  # (H, W, 3) uint8
    attention: np.ndarray  # (K,)
    grid: tuple[int, int]
    # share of the patch attention inside the mention's drawn object (None without truth)
    object_share: float | None = None


def attention_posts(posts: Any, n_posts: int, truth: Sequence[dict] | None = None) -> list[int]:
    """Indices of the first ``n_posts`` posts with an entity (and, with ``truth``, whose image
    draws the mentions: relevant and with an object per mention)."""
    out = []
    for i, p in enumerate(posts.posts):
        if not entity_spans(p.labels):
            continue
        if truth is not None:
            t = truth[i]
            drawn = {o.get("mention") for o in t.get("objects", [])}
            if not t.get("relevant", True) or 0 not in drawn:
                continue
        out.append(i)
        if len(out) == n_posts:
            break
    return out


@inference
def attention_cases(
    model: torch.nn.Module,
    cfg: Config,
    posts: Any,
    indices: Sequence[int],
    dataset: str = "twitter2015",
    split: str = "test",
    layer: int = -1,
    truth: Sequence[dict] | None = None,
) -> list[AttentionCase]:
    """The first mention of each post ``posts.posts[i]``, ``i`` in ``indices``: its first
    word's attention over the patches in fusion layer ``layer``, the model's tag and (with
    ``truth``) the share of that attention inside the mention's drawn object."""
    import torch

    fusion_encoder(model)
    cases = []
    for batch in batches(posts, indices):
        out = model(batch, output_attentions=True)
        pred = model.decode(batch, logits=out["logits"])
        starts = []
        firsts = []
        for b, index in enumerate(batch["index"].tolist()):
            s, e, typ = entity_spans(posts.posts[index].labels)[0]
            starts.append(int(batch["word_starts"][b, s]))
            firsts.append((s, e, typ))
        att = token_patch_attention(
            out["attentions"], batch["input_ids"].shape[1], torch.tensor(starts), layer
        )
        grid = patch_grid(att.shape[1])
        for b, index in enumerate(batch["index"].tolist()):
            post = posts.posts[index]
            s, e, typ = firsts[b]
            tag = NER_TAGS[pred[b][s]] if s < len(pred[b]) else "O (cut off)"
            share = None
            if truth is not None:
                share = _object_share(cfg, dataset, split, post, truth[index], att[b], grid, s)
            cases.append(
                AttentionCase(
                    post_id=batch["ids"][b],
                    mention=" ".join(post.tokens[s:e]),
                    gold=typ,
                    pred=tag,
                    image=image_array(cfg, dataset, split, post.img_id),
                    attention=att[b].double().numpy(),
                    grid=grid,
                    object_share=share,
                )
            )
    return cases


def _object_share(
    cfg: Config, dataset: str, split: str, post: Any, truth: dict, att: Tensor, grid, start: int
) -> float | None:
    """Share of ``att`` (K,) on the patches of the object drawn for the mention at ``start``."""
    import torch

    from promu_lib.models.vision import patches_in_box

    j = next((k for k, m in enumerate(truth.get("mentions", [])) if m["span"][0] == start), None)
    obj = next(
        (o for o in truth.get("objects", []) if j is not None and o.get("mention") == j), None
    )
    total = float(att.sum())
    if obj is None or total <= 0:
        return None
    w, h = image_size(cfg, dataset, split, post.img_id)
    x1, y1, x2, y2 = obj["box"]
    inside = patches_in_box(torch.tensor([[[x1 / w, y1 / h, x2 / w, y2 / h]]]), grid)[0, 0]
    return float(att[inside].sum()) / total


def attention_study(
    cfg: Config, models: dict[str, Finetune], n_posts: int = 4, layer: int = -1
) -> dict[str, list[AttentionCase]]:
    """Fig 5: the same ``n_posts`` test posts through each fine-tuned fusion model (all jobs on
    one MNER dataset)."""
    datasets = {j.dataset for j in models.values()}
    if len(datasets) != 1:
        raise ValueError(f"the attention study compares models on one dataset, got {datasets}")
    (dataset,) = datasets
    tokenizer = None
    out = {}
    posts = truth = indices = None
    for name, job in models.items():
        net, tokenizer = load_finetuned(cfg, job, tokenizer)
        if posts is None:
            posts = load_posts(cfg, dataset, tokenizer)
            truth = read_truth_rows(cfg, dataset, "test")
            indices = attention_posts(posts, n_posts, truth)
        out[name] = attention_cases(net, cfg, posts, indices, dataset, layer=layer, truth=truth)
    return out


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


def models(cfg: Config, dataset: str = "twitter2015") -> dict[str, Finetune]:
    seed = cfg.run.seeds[0]
    return {"no pre-training": scratch_job(dataset, seed), "PROMU": promu_job(dataset, seed)}


def jobs(cfg: Config, dataset: str = "twitter2015", n_posts: int = 4) -> list[Finetune]:
    """The fusion model with and without PROMU pre-training on ``dataset``, first seed."""
    return list(models(cfg, dataset).values())


def run(
    cfg: Config,
    results: Results,
    out_dir: str | Path,
    dataset: str = "twitter2015",
    n_posts: int = 4,
) -> Outputs:
    from promu_lib import plots

    out = Outputs.start(cfg, out_dir)
    cases = attention_study(cfg, models(cfg, dataset), n_posts)
    out.figure(plots.attention_figure(cases), "fig5_attention")
    out.table(attention_table(cfg, cases))
    return out
