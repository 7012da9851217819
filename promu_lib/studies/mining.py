"""Label mining (PROMU Sec. 4.2-4.3): caption nouns, prompts and soft pseudo-labels.

spaCy finds the most frequent nouns of the caption corpus (the entity labels), the relation
labels are fixed phrases, and a teacher scores every detected object against the entity
prompts ("This is an image of [ENTITY].", Eq. 6) and every whole image against the relation
prompts (Eq. 9); their softmaxes are the soft pseudo-labels that COE and CIR learn from. In the
toy world the generator knows what it drew, so :func:`pseudo_label_agreement` checks the top-1
labels against it (the papers give no such number: real captions have no ground truth).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from promu_lib.config import Config
from promu_lib.report import Table
from promu_lib.studies.common import Outputs, Results

NOTEBOOK = "01_mining.ipynb"
TITLE = "Label mining: nouns, prompts, soft pseudo-labels"
READER = False
TABLES = ("mining_summary", "mining_nouns")
FIGURES = ("mining_examples",)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pseudo_label_agreement(
    labels: Any, truth: Sequence[Mapping[str, Any]], min_iou: float = 0.5
) -> dict[str, float | int]:
    """How often the top-1 pseudo-labels name what the toy world drew.

    Entities: each mined box is matched to the drawn object of highest IoU (>= ``min_iou``);
    agreement = top-1 noun == that object's class. Relations: over images that draw a
    relation, top-1 relation label == the drawn relation. ``labels`` is a
    :class:`promu_lib.mining.PseudoLabels`; ``truth`` the rows of ``truth("pretrain", "train")``.
    """
    ent_hits = ent_n = rel_hits = rel_n = 0
    top_noun = labels.q_ent.argmax(-1)
    top_rel = labels.q_rel.argmax(-1)
    for t in truth:
        try:
            i = labels.row(t["img_id"])
        except KeyError:
            continue
        w, h = (float(x) for x in labels.image_size[i])
        for j in range(labels.boxes.shape[1]):
            if not bool(labels.object_mask[i, j]):
                continue
            box = [float(v) * s for v, s in zip(labels.boxes[i, j], (w, h, w, h))]
            best = max(t["objects"], key=lambda o: _iou(box, o["box"]), default=None)
            if best is None or _iou(box, best["box"]) < min_iou:
                continue
            ent_n += 1
            ent_hits += labels.nouns[int(top_noun[i, j])] == best["cls"]
        if t.get("relation"):
            rel_n += 1
            rel_hits += labels.relation_labels[int(top_rel[i])] == t["relation"]
    return {
        "entity_agreement": 100.0 * ent_hits / ent_n if ent_n else math.nan,
        "entity_boxes_matched": ent_n,
        "relation_agreement": 100.0 * rel_hits / rel_n if rel_n else math.nan,
        "relation_images": rel_n,
        "entity_chance": 100.0 / max(1, len(labels.nouns)),
        "relation_chance": 100.0 / max(1, len(labels.relation_labels)),
    }


def mining_summary(
    cfg: Config, labels: Any, agreement: Mapping[str, float | int] | None = None
) -> Table:
    """Counts and confidences of the mined pseudo-labels, and their agreement with the toy
    world's truth when there is one (the papers report no such numbers)."""
    s = labels.meta.get("summary", {})
    table = Table.for_config(
        cfg, "mining_summary", ["value"], with_paper=False, show_n=False,
        title="Label mining: pseudo-labels of the caption images (Sec. 4.2-4.3); agreement = "
        "top-1 label equals what the toy world drew, in %",
    )  # fmt: skip
    rows: list[tuple[str, Any]] = [
        ("caption images", s.get("images")),
        ("objects (detector boxes)", s.get("objects")),
        ("confident objects", s.get("confident_objects")),
        ("entity labels M (top nouns)", len(labels.nouns)),
        ("relation labels R", len(labels.relation_labels)),
        ("mean top-1 probability, entity (Eq. 6)", s.get("mean_max_q_ent")),
        ("mean top-1 probability, relation (Eq. 9)", s.get("mean_max_q_rel")),
    ]
    if agreement is not None:
        rows += [
            ("entity agreement with truth (%)", agreement["entity_agreement"]),
            ("entity chance level (%)", agreement["entity_chance"]),
            ("relation agreement with truth (%)", agreement["relation_agreement"]),
            ("relation chance level (%)", agreement["relation_chance"]),
        ]
    for name, value in rows:
        ok = value is not None and math.isfinite(float(value))
        table.add_row(
            name, {"value": value} if ok else {}, reasons=None if ok else {"value": "not available"}
        )
    return table


def nouns_table(cfg: Config, labels: Any, k: int = 20) -> Table:
    """The ``k`` most frequent caption nouns (the entity labels of Eq. 6) and their counts."""
    counts = labels.meta.get("noun_counts", {})
    table = Table.for_config(
        cfg, "mining_nouns", ["count"], with_paper=False, show_n=False, digits=0,
        title=f"Top {k} of the M={len(labels.nouns)} caption nouns (spaCy lemmas) used as entity "
        "labels",
    )  # fmt: skip
    for noun in labels.nouns[:k]:
        c = counts.get(noun)
        table.add_row(noun, {"count": c} if c is not None else {}, reasons={"count": "no count"})
    return table


def prompts_markdown(labels: Any, k: int = 3) -> str:
    """The chosen templates and a few of their prompts, as markdown."""
    ent = labels.meta.get("entity_template", "")
    rel = labels.meta.get("relation_template", "")
    lines = [
        f"**Entity template:** `{ent}` — e.g. "
        + "; ".join(f"`{p}`" for p in labels.entity_prompts[:k]),
        "",
        f"**Relation template:** `{rel}` — e.g. "
        + "; ".join(f"`{p}`" for p in labels.relation_prompts[:k]),
        "",
        f"**Top nouns (M={len(labels.nouns)}):** " + ", ".join(labels.nouns[:20]),
    ]
    return "\n".join(lines)


def run(cfg: Config, results: Results | None, out_dir: str | Path, n_examples: int = 6) -> Outputs:
    """Mine (or read the cached labels), check them against the toy world's truth, show a
    few caption images with their labels. ``results`` is unused (mining is not a job)."""
    from promu_lib import plots
    from promu_lib.data.layout import DataLayout
    from promu_lib.mining import load_pseudo_labels, mine_labels
    from promu_lib.studies.probing import read_truth_rows

    labels = load_pseudo_labels(mine_labels(cfg))
    out = Outputs.start(cfg, out_dir)
    out.lines = [prompts_markdown(labels)]
    truth = read_truth_rows(cfg, "pretrain", "train")
    agreement = pseudo_label_agreement(labels, truth) if truth else None
    out.table(mining_summary(cfg, labels, agreement))
    out.table(nouns_table(cfg, labels))
    fig = plots.mining_examples_figure(DataLayout.of(cfg), labels, n_examples, cfg.run.seeds[0])
    out.figure(fig, "mining_examples")
    return out
