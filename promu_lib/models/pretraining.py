"""PROMU's pre-training model: the fusion encoder plus the heads of its four losses.

forward(batch) returns a dict of named losses (paper Sec. 4, Eq. 3-10); the loop combines
them with Eq. 11. The heads:
- ``itm_head``  fc of Eq. 3 on the fused [CLS] (2-way: mismatched / matched);
- ``ent_head``  fc_ent of Eq. 7 on the mean fused state of the patches inside each object;
- ``rel_head``  fc_rel of Eq. 9 on the fused [CLS].
``ent_head``/``rel_head`` are MLPs (H -> 2H -> K) as in the official code. Only
``encoder`` carries over to fine-tuning (saved under the key prefix ``encoder.``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from promu_lib import losses as L
from promu_lib.models.fusion import FusionEncoder
from promu_lib.models.vision import patches_in_box

LOSS_NAMES = ("itm", "cit", "coe", "cir")


def _mlp(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, out))


class PromuPretrainer(nn.Module):
    def __init__(self, encoder: FusionEncoder, n_entities: int, n_relations: int) -> None:
        super().__init__()
        self.encoder = encoder
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
        if "cit" in active:
            out["cit"] = L.cit_loss(z_v, z_t, matched, enc.temperature)  # Eq. 5

        e, _ = enc.fuse(t, mask, v)  # Eq. 2, the pairs as given
        n_text = t.shape[1]
        fused_cls, patches = e[:, 0], e[:, n_text + 1 :]

        if "itm" in active:
            # Eq. 3 on the given pairs (NewsCLIPpings' own mismatches are negatives) plus one
            # hard negative caption and one hard negative image per matched pair (ALBEF/BLIP).
            logits, labels = [self.itm_head(fused_cls)], [matched]
            with torch.no_grad():
                sim = z_v @ z_t.t() / enc.temperature
            neg = L.hard_negative_indices(sim, matched, generator)
            if neg.anchor.numel():
                a = neg.anchor
                t_neg = torch.cat([t[neg.text], t[a]])
                m_neg = torch.cat([mask[neg.text], mask[a]])
                v_neg = torch.cat([v[a], v[neg.image]])
                e_neg, _ = enc.fuse(t_neg, m_neg, v_neg)
                logits.append(self.itm_head(e_neg[:, 0]))
                labels.append(torch.zeros(2 * a.numel(), dtype=torch.bool, device=a.device))
            out["itm"] = L.itm_loss(torch.cat(logits), torch.cat(labels))

        if "coe" in active:
            patch_mask = patches_in_box(batch["boxes"], enc.vision.grid)  # P_o of Eq. 7
            e_obj = L.mean_states_in_boxes(patches, patch_mask)  # (B, m, H), Eq. 7
            out["coe"] = L.coe_loss(self.ent_head(e_obj), batch["q_ent"], batch["ent_mask"])

        if "cir" in active:
            rel_logits = self.rel_head(fused_cls)  # Eq. 9 p_REL
            out["cir"] = L.cir_loss(rel_logits, batch["q_rel"], batch["rel_mask"])  # Eq. 10
        return out
