"""PROMU Fig 3: are entities near their objects, and relations near their images?

Fused text and image embeddings of test posts, projected with t-SNE: after entity-object and
relation-image alignment, an entity's embedding should lie among the embeddings of its object
(coloured by entity type), and a post's relation embedding among image embeddings of the same
relation. Here: the fusion model fine-tuned from scratch vs from PROMU pre-training (Table 1's
checkpoints, first seed). Entity = mean fused state of the mention's words; object = mean fused
state of the image patches inside the object's box (the toy world's truth says which object is
whose); relation = fused [CLS]; image = mean fused patch. :func:`consistency_table` puts a
number on the picture: how often a text embedding's nearest image embedding has its class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from promu_lib.config import Config
from promu_lib.data.toyworld_oracle import entity_spans
from promu_lib.jobs import Finetune
from promu_lib.report import Table
from promu_lib.studies.common import Outputs, Results, promu_job, scratch_job
from promu_lib.studies.probing import (
    batches,
    fusion_encoder,
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

NOTEBOOK = "07_fig3_tsne.ipynb"
TITLE = "Fig 3: entity-object and relation-image t-SNE"
READER = True
TABLES = ("fig3_consistency",)
FIGURES = ("fig3_tsne",)
PAIRS: dict[str, tuple[str, str]] = {
    "entity-object": ("entity", "object"),
    "relation-image": ("relation", "image"),
}


@dataclass
class Embeddings:
    """(N, D) ``features`` with a class ``label`` and a modality ``kind`` per row."""

    features: np.ndarray
    labels: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _stack(rows: list[Tensor], labels: list[str], kinds: list[str]) -> Embeddings:
    import torch

    feats = torch.stack(rows).double().numpy() if rows else np.zeros((0, 0))
    return Embeddings(feats, labels, kinds)


@inference
def entity_object_embeddings(
    model: torch.nn.Module,
    cfg: Config,
    posts: Any,
    n_posts: int = 50,
    truth: Sequence[dict] | None = None,
    split: str = "test",
    dataset: str = "twitter2015",
) -> Embeddings:
    """Fused embeddings of the first ``n_posts`` posts with an entity: one per entity (mean
    fused state of its words' first pieces, kind "entity") and, with ``truth``, one per drawn
    object of a mention (mean fused state of the image patches inside its box, kind
    "object"), both labelled with the entity's type."""
    import torch

    from promu_lib.models.vision import patches_in_box

    enc = fusion_encoder(model)
    picked = [i for i, p in enumerate(posts.posts) if any(t != "O" for t in p.labels)][:n_posts]
    rows: list[Tensor] = []
    labels: list[str] = []
    kinds: list[str] = []
    for batch in batches(posts, picked):
        out = enc(batch["input_ids"], batch["attention_mask"], batch["image"])
        grid = patch_grid(out.image_states.shape[1])
        for b, index in enumerate(batch["index"].tolist()):
            post = posts.posts[index]
            spans = entity_spans(post.labels)
            starts, mask = batch["word_starts"][b], batch["word_mask"][b]
            for s, e, typ in spans:
                words = [w for w in range(s, e) if bool(mask[w])]
                if words:
                    rows.append(out.text_states[b, starts[words]].mean(0))
                    labels.append(typ)
                    kinds.append("entity")
            if truth is None:
                continue
            t = truth[index]
            w, h = image_size(cfg, dataset, split, post.img_id)
            type_at = {s: typ for s, _, typ in spans}
            for obj in t.get("objects", []):
                j = obj.get("mention")
                if j is None or not t.get("relevant", True):
                    continue
                typ = type_at.get(t["mentions"][j]["span"][0])
                if typ is None:
                    continue
                x1, y1, x2, y2 = obj["box"]
                box = torch.tensor([[[x1 / w, y1 / h, x2 / w, y2 / h]]])
                inside = patches_in_box(box, grid)[0, 0]
                rows.append(out.image_states[b, inside].mean(0))
                labels.append(typ)
                kinds.append("object")
    return _stack(rows, labels, kinds)


@inference
def relation_image_embeddings(
    model: torch.nn.Module, posts: Any, n_posts: int = 50, include_none: bool = False
) -> Embeddings:
    """Per MRE post (the first ``n_posts`` with a relation, unless ``include_none``): the
    fused [CLS] (kind "relation") and the mean fused image patch (kind "image"), labelled
    with the gold relation."""
    enc = fusion_encoder(model)
    picked = [i for i, p in enumerate(posts.posts) if include_none or p.relation != "None"]
    rows: list[Tensor] = []
    labels: list[str] = []
    kinds: list[str] = []
    for batch in batches(posts, picked[:n_posts]):
        out = enc(batch["input_ids"], batch["attention_mask"], batch["image"])
        for b, index in enumerate(batch["index"].tolist()):
            rel = posts.posts[index].relation
            rows += [out.fused_cls[b], out.image_states[b].mean(0)]
            labels += [rel, rel]
            kinds += ["relation", "image"]
    return _stack(rows, labels, kinds)


def tsne_panels(
    cfg: Config, models: dict[str, tuple[Finetune, Finetune]], n_posts: int = 50
) -> dict[str, dict[str, Embeddings]]:
    """Fig 3's embeddings: ``models[name] = (NER job, MRE job)`` of the fusion model ->
    ``{name: {"entity-object": .., "relation-image": ..}}`` over the first ``n_posts`` test
    posts (with an entity / a relation) of each job's dataset."""
    out: dict[str, dict[str, Embeddings]] = {}
    posts: dict[str, Any] = {}
    tokenizer = None
    for name, (ner_job, re_job) in models.items():
        net, tokenizer = load_finetuned(cfg, ner_job, tokenizer)
        if ner_job.dataset not in posts:
            posts[ner_job.dataset] = load_posts(cfg, ner_job.dataset, tokenizer)
        truth = read_truth_rows(cfg, ner_job.dataset, "test")
        ent = entity_object_embeddings(
            net, cfg, posts[ner_job.dataset], n_posts, truth, dataset=ner_job.dataset
        )
        net, tokenizer = load_finetuned(cfg, re_job, tokenizer)
        if re_job.dataset not in posts:
            posts[re_job.dataset] = load_posts(cfg, re_job.dataset, tokenizer)
        rel = relation_image_embeddings(net, posts[re_job.dataset], n_posts)
        out[name] = {"entity-object": ent, "relation-image": rel}
    return out


def nearest_label_agreement(emb: Any, query_kind: str, key_kind: str) -> float:
    """% of ``query_kind`` rows whose nearest ``key_kind`` row (cosine) has the same label:
    how well the two modalities line up by class (NaN when either kind is absent)."""
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


def models(cfg: Config, ner_dataset: str = "twitter2015") -> dict[str, tuple[Finetune, Finetune]]:
    """The two models compared, each as (its MNER job, its MRE job), at the first seed."""
    seed = cfg.run.seeds[0]
    return {
        "no pre-training": (scratch_job(ner_dataset, seed), scratch_job("mnre", seed)),
        "PROMU": (promu_job(ner_dataset, seed), promu_job("mnre", seed)),
    }


def jobs(cfg: Config, ner_dataset: str = "twitter2015", n_posts: int = 50) -> list[Finetune]:
    """The fusion model with and without PROMU pre-training on ``ner_dataset`` and MNRE."""
    pairs = models(cfg, ner_dataset).values()
    return [job for pair in pairs for job in pair]


def run(
    cfg: Config,
    results: Results,
    out_dir: str | Path,
    ner_dataset: str = "twitter2015",
    n_posts: int = 50,
) -> Outputs:
    """The t-SNE panels (``n_posts`` test posts per panel; the paper: 50) and the consistency
    table."""
    from promu_lib import plots

    out = Outputs.start(cfg, out_dir)
    panels = tsne_panels(cfg, models(cfg, ner_dataset), n_posts)
    flat = {f"{m}: {k}": e for m, per in panels.items() for k, e in per.items()}
    out.figure(plots.tsne_figure(flat, cfg.run.seeds[0]), "fig3_tsne")
    out.table(consistency_table(cfg, panels, PAIRS))
    return out
