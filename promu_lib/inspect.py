"""Looking inside trained models, for the papers' figures.

Each helper loads a fine-tuned (or freshly built) task model, runs a few posts of a split
through it under ``torch.inference_mode`` and returns plain numpy arrays:

- PROMU Fig 3: :func:`entity_object_embeddings` (fused entity tokens and the image patches of
  their objects, by entity type) and :func:`relation_image_embeddings` (the fused [CLS] and the
  mean fused image patch, by relation) of the fusion encoder, for ``analysis.tsne_2d``;
- PROMU Fig 5: :func:`attention_cases` (a mention's attention over the image patches in the
  last fusion layer, for ``analysis.attention_overlay``);
- HVPNeT Fig 4: :func:`gate_weights` (the dynamic gate per layer and pyramid block, global
  image vs objects, for ``analysis.gate_heatmap``).

The toy world's truth files (``truth/<dataset>_<split>.jsonl``) say which drawn object
belongs to which mention; without them (real data) no object embeddings are drawn, and the
attention cases take the first posts with an entity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from promu_lib.config import Config
from promu_lib.data.layout import DataLayout
from promu_lib.data.records import NER_TAGS
from promu_lib.data.toyworld_oracle import entity_spans
from promu_lib.experiments import Finetune
from promu_lib.paths import resolve

MODEL_FILE = "model.safetensors"


# ---------------------------------------------------------------------------------------------
# Models and posts
# ---------------------------------------------------------------------------------------------


def layout_of(cfg: Config) -> DataLayout:
    return DataLayout(root=resolve(cfg.data_root()), data=cfg.data)


def load_task_model(
    cfg: Config,
    dataset: str,
    model: str,
    weights: str | Path | None = None,
    tokenizer: Any = None,
) -> tuple[torch.nn.Module, Any]:
    """The task model of ``model`` on ``dataset`` (``weights``: a fine-tuned safetensors file;
    ``None`` keeps the random initialisation), in eval mode on CPU, and its tokenizer."""
    from promu_lib.data.tokenizer import build_tokenizer
    from promu_lib.models import build_task_model
    from promu_lib.train.common import load_weights
    from promu_lib.train.finetune import task_of

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg, layout_of(cfg))
    net = build_task_model(cfg, task_of(dataset), model, tokenizer)
    if weights is not None:
        load_weights(resolve(weights), net)
    return net.eval(), tokenizer


def load_finetuned(
    cfg: Config, job: Finetune, tokenizer: Any = None
) -> tuple[torch.nn.Module, Any]:
    """The best-dev weights of a finished fine-tuning job (``run_jobs`` ran it)."""
    return load_task_model(
        job.config(cfg), job.dataset, job.model, job.out_dir(cfg) / MODEL_FILE, tokenizer
    )


def load_posts(
    cfg: Config, dataset: str, tokenizer: Any, split: str = "test", with_images: bool = True
) -> Any:
    """One split as the fine-tuning saw it (a ``PostDataset``), images included."""
    from promu_lib.data.datasets import load_split

    return load_split(
        cfg, dataset, split, tokenizer, layout=layout_of(cfg), with_images=with_images,
        progress=False,
    )  # fmt: skip


def batches(posts: Any, indices: Sequence[int], batch_size: int = 16):
    """Collated batches of ``posts[i]`` for ``i`` in ``indices`` (in that order)."""
    from promu_lib.data.datasets import collate

    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        items = [posts[i] for i in indices[start : start + batch_size]]
        yield collate(items, pad_id=posts.pad_id)


def read_truth_rows(cfg: Config, dataset: str, split: str) -> list[dict] | None:
    """The toy world's truth of one split (one row per post, file order), or None."""
    from promu_lib.data.toyworld import read_truth

    path = layout_of(cfg).truth(dataset, split)
    return read_truth(path) if path.is_file() else None


def image_array(cfg: Config, dataset: str, split: str, img_id: str) -> np.ndarray:
    """The post's image as (H, W, 3) uint8."""
    from promu_lib.data.images import load_image, safe_join

    layout = layout_of(cfg)
    path = safe_join(layout.image_dir(dataset, split), layout.image_name(dataset, img_id))
    return np.asarray(load_image(path))


def _fusion(model: torch.nn.Module):
    from promu_lib.models.fusion import FusionEncoder

    if not isinstance(model.backbone, FusionEncoder):
        raise TypeError(
            f"this analysis reads the fusion encoder (model 'promu'); got a "
            f"{type(model.backbone).__name__} backbone"
        )
    return model.backbone


def _grid(n_patches: int) -> tuple[int, int]:
    g = math.isqrt(n_patches)
    if g * g != n_patches:
        raise ValueError(f"{n_patches} image patches are not a square grid")
    return g, g


# ---------------------------------------------------------------------------------------------
# Fig 3: fused embeddings for t-SNE
# ---------------------------------------------------------------------------------------------


@dataclass
class Embeddings:
    """(N, D) ``features`` with a class ``label`` and a modality ``kind`` per row."""

    features: np.ndarray
    labels: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _stack(rows: list[Tensor], labels: list[str], kinds: list[str]) -> Embeddings:
    feats = torch.stack(rows).double().numpy() if rows else np.zeros((0, 0))
    return Embeddings(feats, labels, kinds)


def _image_size(cfg: Config, dataset: str, split: str, img_id: str) -> tuple[int, int]:
    from PIL import Image

    from promu_lib.data.images import safe_join

    layout = layout_of(cfg)
    path = safe_join(layout.image_dir(dataset, split), layout.image_name(dataset, img_id))
    with Image.open(path) as im:
        return im.size


@torch.inference_mode()
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
    from promu_lib.models.vision import patches_in_box

    enc = _fusion(model)
    picked = [i for i, p in enumerate(posts.posts) if any(t != "O" for t in p.labels)][:n_posts]
    rows: list[Tensor] = []
    labels: list[str] = []
    kinds: list[str] = []
    for batch in batches(posts, picked):
        out = enc(batch["input_ids"], batch["attention_mask"], batch["image"])
        grid = _grid(out.image_states.shape[1])
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
            w, h = _image_size(cfg, dataset, split, post.img_id)
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


@torch.inference_mode()
def relation_image_embeddings(
    model: torch.nn.Module, posts: Any, n_posts: int = 50, include_none: bool = False
) -> Embeddings:
    """Per MRE post (the first ``n_posts`` with a relation, unless ``include_none``): the
    fused [CLS] (kind "relation") and the mean fused image patch (kind "image"), labelled
    with the gold relation."""
    enc = _fusion(model)
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


# ---------------------------------------------------------------------------------------------
# Fig 5: a text token's attention over image patches
# ---------------------------------------------------------------------------------------------


def token_patch_attention(
    attentions: Sequence[Tensor], text_len: int, positions: Tensor, layer: int = -1
) -> Tensor:
    """(B, K) attention of the text token at ``positions`` (B,) over the K image patches in
    fusion layer ``layer``, averaged over heads. Each layer's map is (B, nh, L + 1 + K,
    L + 1 + K) over concat(text (L), image CLS, patches); each row sums to one over all keys,
    so the patch weights sum to at most one."""
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


@torch.inference_mode()
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
    _fusion(model)
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
        grid = _grid(att.shape[1])
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
    from promu_lib.models.vision import patches_in_box

    j = next((k for k, m in enumerate(truth.get("mentions", [])) if m["span"][0] == start), None)
    obj = next(
        (o for o in truth.get("objects", []) if j is not None and o.get("mention") == j), None
    )
    total = float(att.sum())
    if obj is None or total <= 0:
        return None
    w, h = _image_size(cfg, dataset, split, post.img_id)
    x1, y1, x2, y2 = obj["box"]
    inside = patches_in_box(torch.tensor([[[x1 / w, y1 / h, x2 / w, y2 / h]]]), grid)[0, 0]
    return float(att[inside].sum()) / total


# ---------------------------------------------------------------------------------------------
# Studies: what the notebooks call (models from finished fine-tuning jobs)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# HVPNeT Fig 4: dynamic gates
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
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
