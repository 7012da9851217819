"""PROMU's pre-training model: the fusion encoder plus the heads of its four losses.

forward(batch) returns a dict of named losses (paper Sec. 4, Eq. 3-10); the loop combines
them with Eq. 11. The heads:
- ``itm_head``  fc of Eq. 3 on the fused [CLS] (2-way: mismatched / matched);
- ``ent_head``  fc_ent of Eq. 7 on the mean fused state of the patches inside each object;
- ``rel_head``  fc_rel of Eq. 9 on the fused [CLS].
``ent_head``/``rel_head`` are MLPs (H -> 2H -> K) as in the official code. Only
``encoder`` carries over to fine-tuning (saved under the key prefix ``encoder.``).

Under DDP (``promu_lib.train.distributed``) CIT contrasts the pairs of all ranks, as the
official code does: z_t, z_v and ``matched`` are gathered (``promu_lib.models.gather``) with
gradients flowing back to each rank's own part; in one process the gathers are no-ops.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from promu_lib import losses as L
from promu_lib.models import gather as ranks
from promu_lib.models.fusion import FusionEncoder
from promu_lib.models.vision import patches_in_box

LOSS_NAMES = ("itm", "cit", "coe", "cir")


def _mlp(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, out))


class PromuPretrainer(nn.Module):
    """``itm_hard_negatives=False`` (the default): Eq. 3 over the given pairs only, as the
    paper and the official code. True adds, per matched pair, one hard negative caption and
    one hard negative image drawn from the (gathered) batch, ALBEF/BLIP style, never one that
    shares the anchor's image or caption, nor one that forms a pair of the batch
    (``batch["image_id"]``/``batch["caption_id"]``, :func:`promu_lib.losses.excluded_negatives`)."""

    def __init__(
        self,
        encoder: FusionEncoder,
        n_entities: int,
        n_relations: int,
        itm_hard_negatives: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.itm_hard_negatives = itm_hard_negatives
        H = encoder.hidden_size
        self.itm_head = nn.Linear(H, 2)
        self.ent_head = _mlp(H, n_entities)
        self.rel_head = _mlp(H, n_relations)

    def forward(
        self,
        batch: dict,
        active: tuple[str, ...] = LOSS_NAMES,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The losses named in ``active``; shapes as in ``promu_lib.data.captions``."""
        enc = self.encoder
        ids, mask, matched = batch["input_ids"], batch["attention_mask"], batch["matched"]
        t = enc.encode_text(ids, mask)  # (B, L, H)
        v = enc.encode_image(batch["image"])  # (B, 1 + K, Dv)
        out: dict[str, Tensor] = {}

        z_t, z_v = enc.text_embedding(t[:, 0]), enc.image_embedding(v[:, 0])  # Eq. 4
        if "cit" in active:  # Eq. 5 over the matched pairs of every rank's micro-batch
            gather = ranks.all_gather_with_grad
            all_matched = ranks.all_gather(matched)
            out["cit"] = L.cit_loss(gather(z_v), gather(z_t), all_matched, enc.temperature)

        e, _ = enc.fuse(t, mask, v)  # Eq. 2, the pairs as given: (B, L + 1 + K, H)
        n_text = t.shape[1]
        # text tokens 0..L-1 (e_CLS at 0), the image's global token at L, its K patches after
        fused_cls, patches = e[:, 0], e[:, n_text + 1 :]

        if "itm" in active:  # Eq. 3 on the given pairs (the corpus' own mismatches are negatives)
            logits, labels = [self.itm_head(fused_cls)], [matched.bool()]
            if self.itm_hard_negatives:
                neg_cls = self._hard_negative_cls(t, mask, v, z_t, z_v, batch, generator)
                logits.append(self.itm_head(neg_cls))
                labels.append(torch.zeros(len(neg_cls), dtype=torch.bool, device=t.device))
            out["itm"] = L.itm_loss(torch.cat(logits), torch.cat(labels))

        if "coe" in active:
            # Eq. 7-8 over every detected object of the image (up to data.max_objects = m),
            # a generalisation of the paper's one object O_i per image: the loss is the mean
            # over the real, confident objects of the batch (one object: exactly Eq. 8)
            patch_mask = patches_in_box(batch["boxes"], enc.vision.grid)  # P_o of Eq. 7
            e_obj = L.mean_states_in_boxes(patches, patch_mask)  # (B, m, H), Eq. 7
            out["coe"] = L.coe_loss(self.ent_head(e_obj), batch["q_ent"], batch["ent_mask"])

        if "cir" in active:
            rel_logits = self.rel_head(fused_cls)  # Eq. 9 p_REL
            out["cir"] = L.cir_loss(rel_logits, batch["q_rel"], batch["rel_mask"])  # Eq. 10
        return out

    def _hard_negative_cls(
        self,
        t: Tensor,
        mask: Tensor,
        v: Tensor,
        z_t: Tensor,
        z_v: Tensor,
        batch: dict,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Fused [CLS] (2 N_m, H) of the hard negative pairs: first (image of anchor k, its
        negative caption) for every anchor k, then (its negative image, caption of anchor k).

        Candidates come from every rank (token states padded to the longest micro-batch and
        gathered with gradients); every rank runs the same ops even with no anchor (0 rows),
        so the collectives of the backward pass line up.
        """
        enc, d = self.encoder, ranks
        all_t = d.all_gather_with_grad(d.pad_to_longest(t))
        all_mask = d.all_gather(d.pad_to_longest(mask))
        all_v = d.all_gather_with_grad(v)
        with torch.no_grad():
            sim_i2t = z_v @ d.all_gather(z_t).t() / enc.temperature
            sim_t2i = z_t @ d.all_gather(z_v).t() / enc.temperature
        image_id, caption_id = batch["image_id"], batch["caption_id"]
        excluded = L.excluded_negatives(
            image_id, caption_id, d.all_gather(image_id), d.all_gather(caption_id)
        )
        neg = L.hard_negative_indices(sim_i2t, sim_t2i, batch["matched"], excluded, generator)
        own = neg.anchor + d.rank_offset(len(t))  # the anchors' rows in the gathered batch
        t_neg = torch.cat([all_t[neg.text], all_t[own]])
        m_neg = torch.cat([all_mask[neg.text], all_mask[own]])
        v_neg = torch.cat([all_v[own], all_v[neg.image]])
        e_neg, _ = enc.fuse(t_neg, m_neg, v_neg)
        return e_neg[:, 0]
