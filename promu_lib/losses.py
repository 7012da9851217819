"""PROMU's pre-training losses (paper Sec. 4, Eq. 3-11), each a small pure function.

Shapes: B batch, D projection size, m objects per image, M candidate entities (nouns),
R relation labels, K image patches, H hidden size.

References: PROMU (Hu et al., ACM MM 2023) Eq. 3-11; ALBEF/BLIP for hard-negative sampling.
The official code (THU-BPM/PROMU) differs from the paper's Eq. 5 in one place, noted at
:func:`cit_loss`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _zero(*tensors: Tensor) -> Tensor:
    """A scalar 0 connected to the graph of ``tensors`` (so ``backward()`` still works)."""
    return sum(t.sum() for t in tensors) * 0.0


# -- Eq. 3: image-text matching --------------------------------------------------------------


def itm_loss(logits: Tensor, matched: Tensor) -> Tensor:
    """Eq. 3: binary cross entropy of ``fc(e_CLS)``, written as a 2-way CE (class 1 = matched).

    logits (B, 2) from the fused [CLS]; matched (B,) bool.
    """
    return F.cross_entropy(logits, matched.long())


class HardNegatives(NamedTuple):
    """For each local matched pair ``anchor[k]``: a hard negative text and a hard negative image.

    Extra mismatched pairs are ``(image[anchor], text[text])`` and ``(image[image], text[anchor])``;
    ``text``/``image`` index the candidate batch (under DDP the batch gathered from all ranks).
    """

    anchor: Tensor  # (N_m,) local rows of the matched pairs
    text: Tensor  # (N_m,) candidate row of the negative caption for image[anchor]
    image: Tensor  # (N_m,) candidate row of the negative image for text[anchor]


def excluded_negatives(
    image_id: Tensor, caption_id: Tensor, cand_image_id: Tensor, cand_caption_id: Tensor
) -> tuple[Tensor, Tensor]:
    """Which candidates may not be drawn as hard negatives, by image and caption identity.

    image_id, caption_id (B,) the local pairs; cand_* (N,) the candidate pairs (the same
    batch, or the batch gathered from all ranks, local pairs included). Returns
    ``(excluded_text, excluded_image)``, (B, N) bool each: caption j for image i (resp. image
    j for caption i) is excluded when the pair it forms is a pair of the candidate batch. That
    rules out the anchor itself, every candidate sharing its image (a falsified pair reuses
    another pair's image: the same pixels) or its caption text, and any other true match the
    batch knows of, so a true match is never labelled 0.
    """
    same_image = (image_id[:, None] == cand_image_id[None, :]).float()  # (B, N)
    same_caption = (caption_id[:, None] == cand_caption_id[None, :]).float()  # (B, N)
    cand_image = (cand_image_id[:, None] == cand_image_id[None, :]).float()  # (N, N)
    cand_caption = (cand_caption_id[:, None] == cand_caption_id[None, :]).float()  # (N, N)
    # (image i, caption j) is pair k of the batch for some k; likewise (image j, caption i)
    excluded_text = (same_image @ cand_caption) > 0
    excluded_image = (same_caption @ cand_image) > 0
    return excluded_text, excluded_image


def hard_negative_indices(
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    matched: Tensor,
    excluded: tuple[Tensor, Tensor],
    generator: torch.Generator | None = None,
) -> HardNegatives:
    """Sample in-batch hard negatives for Eq. 3, ALBEF/BLIP style (an option, not the paper).

    sim_i2t (B, N): local image i against candidate caption j; sim_t2i (B, N): local caption i
    against candidate image j; both already divided by the temperature (N = B in one process,
    world x B under DDP). matched (B,) bool; excluded: (B, N) bool masks of the candidates
    that may not be drawn as the caption, resp. the image, of anchor i (at least the anchor
    itself; see :func:`excluded_negatives`). For each matched i, a caption j is drawn with
    probability softmax_j(sim_i2t[i, j]) over the allowed j and an image likewise from
    sim_t2i. Anchors lacking an allowed caption or image are dropped; the result may be empty.
    """
    no_text, no_image = excluded
    keep = matched.bool() & (~no_text).any(dim=1) & (~no_image).any(dim=1)
    anchor = keep.nonzero().flatten()
    if anchor.numel() == 0:
        return HardNegatives(anchor, anchor, anchor)

    def draw(sim: Tensor, no: Tensor) -> Tensor:
        w = sim.detach().float()[anchor].masked_fill(no[anchor], float("-inf")).softmax(dim=1)
        return torch.multinomial(w, 1, generator=generator).flatten()

    return HardNegatives(anchor, draw(sim_i2t, no_text), draw(sim_t2i, no_image))


# -- Eq. 4-5: contrastive image-text loss over matched pairs ----------------------------------


def cit_loss(
    img_emb: Tensor, txt_emb: Tensor, matched: Tensor, temperature: float | Tensor
) -> Tensor:
    """Eq. 4-5: symmetric InfoNCE over the N_m matched pairs of the batch only.

    img_emb, txt_emb (B, D): proj_v(v_CLS), proj_t(t_CLS), L2-normalised here; S = dot product.
    Mismatched pairs are neither positives nor negatives (both sums of Eq. 5 run over N_m).
    The official code instead keeps every caption of the batch in the denominator and
    averages over all B rows; we follow the paper. Fewer than 2 matched pairs -> 0.
    """
    idx = matched.nonzero().flatten()
    if idx.numel() < 2:  # keep every input in the graph (DDP expects each parameter's grad)
        temp = [temperature] if isinstance(temperature, Tensor) else []
        return _zero(img_emb, txt_emb, *temp)
    v = F.normalize(img_emb[idx], dim=-1)
    t = F.normalize(txt_emb[idx], dim=-1)
    logits = v @ t.t() / temperature  # (N_m, N_m): S(V_i, X_j) / tau
    target = torch.arange(idx.numel(), device=logits.device)
    loss_it = F.cross_entropy(logits, target)  # image -> text
    loss_ti = F.cross_entropy(logits.t(), target)  # text -> image
    return (loss_it + loss_ti) / 2


# -- Eq. 7-10: soft pseudo-label cross entropy ------------------------------------------------


def soft_ce(logits: Tensor, target_probs: Tensor, mask: Tensor | None = None) -> Tensor:
    """-sum_j q_j log p_j over the last dim, averaged over the positions where ``mask`` is True.

    logits, target_probs (..., K); mask (...) bool or None (= all). No selected position -> 0.
    Its minimum over logits is the entropy of ``target_probs`` (reached at p = q).
    """
    per_item = -(target_probs * logits.log_softmax(dim=-1)).sum(dim=-1)  # (...)
    if mask is None:
        return per_item.mean()
    mask = mask.bool()
    if not mask.any():
        return _zero(logits)
    return per_item[mask].mean()


def coe_loss(object_logits: Tensor, q_ent: Tensor, object_mask: Tensor) -> Tensor:
    """Eq. 8: L_COE, soft CE between fc_ent(e_obj) and q_ent, mean over real objects.

    object_logits, q_ent (B, m, M); object_mask (B, m) bool — real objects (and, when the
    mining stage masked low-confidence pseudo-labels, only the confident ones).
    """
    return soft_ce(object_logits, q_ent, object_mask)


def cir_loss(rel_logits: Tensor, q_rel: Tensor, mask: Tensor | None = None) -> Tensor:
    """Eq. 10: L_CIR, soft CE between fc_rel(e_CLS) and q_rel. rel_logits, q_rel (B, R); mask (B,)."""
    return soft_ce(rel_logits, q_rel, mask)


def mean_states_in_boxes(states: Tensor, patch_mask: Tensor) -> Tensor:
    """Eq. 7: e_obj = AVG of the fused patch states inside each object.

    states (B, K, H) fused image-patch states (no [CLS]); patch_mask (B, m, K) bool/0-1.
    Returns (B, m, H); an object with no patch gets zeros.
    """
    w = patch_mask.to(states.dtype)
    count = w.sum(dim=-1, keepdim=True).clamp(min=1.0)  # (B, m, 1)
    return (w @ states) / count


# -- Eq. 11: the weighted sum ----------------------------------------------------------------


def total_loss(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Eq. 11: sum_k lambda_k L_k. A weight of 0, or a loss absent from ``losses``, is off.

    Every loss present must have a weight (so a typo cannot silently drop one).
    """
    unweighted = sorted(set(losses) - set(weights))
    if unweighted:
        raise ValueError(f"no weight for loss(es) {unweighted}; weights cover {sorted(weights)}")
    if not losses:
        raise ValueError("no losses to combine")
    on = [(weights[k], v) for k, v in losses.items() if weights[k] != 0]
    if not on:
        return _zero(*losses.values())
    return sum(w * v for w, v in on)
