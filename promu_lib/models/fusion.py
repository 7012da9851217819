"""PROMU's fusion encoder (PROMU paper Sec. 4.1, Eq. 2: a single stream over concat(t, v)).

Initialisation (``fusion.init``): the official code, ALBEF-style, makes BERT's later layers
the fusion layers, initialised from BERT (text = layers 0..k-1, fusion = k..11): that is
``text-layers`` (``promu_lib.models.builders.fusion_from_text_layers``), the ``paper``
profile's default. ``random`` (the toy profiles, whose text encoder is random anyway) puts
``fusion.num_layers`` new layers on top of the whole text encoder.

t = BERT(X) (text encoder), v = ViT(V) (CLS + K patches), e = Fusion(concat(t, v)): a stack
of the same post-LN transformer blocks over the concatenated sequence, each token tagged by a
learned modality (type) embedding. ``proj_t``/``proj_v`` and the learnable temperature serve
the contrastive loss (Eq. 4-5); the ITM/COE/CIR heads live with the pre-training model.
Fine-tuning reads ``text_states`` (e_MNER of Sec. 4.4).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promu_lib.config import FusionConfig
from promu_lib.models.encoder import BertEncoder, TransformerStack, init_bert_weights
from promu_lib.models.vision import VisionEncoder


@dataclass
class FusionOutput:
    text_states: Tensor  # (B, L, H) fused states of the text tokens
    image_states: Tensor  # (B, K, H) fused states of the image patches (no image CLS)
    text_cls: Tensor  # (B, H) unimodal t_CLS
    image_cls: Tensor  # (B, Dv) unimodal v_CLS
    fused_cls: Tensor  # (B, H) e_CLS, the fused state at the text [CLS]
    attentions: tuple[Tensor, ...] | None = None  # fusion layers, (B, nh, L+1+K, L+1+K) each


class FusionEncoder(nn.Module):
    """Text encoder + ViT + fusion transformer over concat(text, image)."""

    def __init__(self, text: BertEncoder, vision: VisionEncoder, cfg: FusionConfig) -> None:
        super().__init__()
        H, Dv = text.hidden_size, vision.hidden_size
        self.cfg = cfg
        self.text, self.vision = text, vision
        self.image_in = nn.Linear(Dv, H) if Dv != H else nn.Identity()
        self.type_embed = nn.Embedding(2, H)  # 0 = text token, 1 = image token
        self.norm = nn.LayerNorm(H, eps=text.cfg.layer_norm_eps)
        self.drop = nn.Dropout(text.cfg.dropout)
        self.fusion = TransformerStack(dataclasses.replace(text.cfg, num_layers=cfg.num_layers))
        self.proj_t = nn.Linear(H, cfg.projection_dim)  # Eq. 4 proj_t
        self.proj_v = nn.Linear(Dv, cfg.projection_dim)  # Eq. 4 proj_v
        for m in (self.image_in, self.type_embed, self.norm, self.fusion, self.proj_t, self.proj_v):
            m.apply(init_bert_weights)
        self.temp = nn.Parameter(torch.tensor(cfg.temperature_init))

    @property
    def hidden_size(self) -> int:
        return self.text.hidden_size

    @property
    def temperature(self) -> Tensor:
        """tau of Eq. 5, the learnable parameter itself (kept in its bounds by
        :meth:`clamp_temperature_`, not here: a clamp in the forward pass has no gradient
        beyond the bounds, so tau could never come back once an optimiser step overshot)."""
        return self.temp

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """Clamp tau in place to [temperature_min, temperature_max] (the official code's
        bounds); the training loop calls it after every optimiser step."""
        self.temp.clamp_(self.cfg.temperature_min, self.cfg.temperature_max)

    # -- unimodal (CLIP-style) -----------------------------------------------------------------
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """t (B, L, H); t[:, 0] is t_CLS."""
        return self.text(input_ids, attention_mask).last_hidden_state

    def encode_image(self, image: Tensor) -> Tensor:
        """v (B, 1 + K, Dv); v[:, 0] is v_CLS."""
        return self.vision(image)

    def text_embedding(self, text_cls: Tensor) -> Tensor:
        """L2-normalised proj_t(t_CLS) (B, projection_dim)."""
        return F.normalize(self.proj_t(text_cls), dim=-1)

    def image_embedding(self, image_cls: Tensor) -> Tensor:
        """L2-normalised proj_v(v_CLS) (B, projection_dim)."""
        return F.normalize(self.proj_v(image_cls), dim=-1)

    # -- fusion (Eq. 2) --------------------------------------------------------------------------
    def fuse(
        self, t: Tensor, attention_mask: Tensor, v: Tensor, output_attentions: bool = False
    ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """e = Fusion(concat(t, v)) -> (B, L + 1 + K, H); every image token is attended."""
        x = torch.cat(
            [t + self.type_embed.weight[0], self.image_in(v) + self.type_embed.weight[1]], 1
        )
        mask = torch.cat([attention_mask.bool(), attention_mask.new_ones(v.shape[:2]).bool()], 1)
        out = self.fusion(self.drop(self.norm(x)), mask, output_attentions=output_attentions)
        return out.last_hidden_state, out.attentions

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        image: Tensor,
        output_attentions: bool = False,
    ) -> FusionOutput:
        t = self.encode_text(input_ids, attention_mask)
        v = self.encode_image(image)
        e, attentions = self.fuse(t, attention_mask, v, output_attentions)
        L = t.shape[1]
        return FusionOutput(
            text_states=e[:, :L],
            image_states=e[:, L + 1 :],
            text_cls=t[:, 0],
            image_cls=v[:, 0],
            fused_cls=e[:, 0],
            attentions=attentions,
        )

    def token_states(self, batch: dict, output_attentions: bool = False) -> tuple[Tensor, dict]:
        """Fine-tuning view: the fused text-token states and analysis extras."""
        out = self(batch["input_ids"], batch["attention_mask"], batch["image"], output_attentions)
        extras = {"attentions": out.attentions} if output_attentions else {}
        return out.text_states, extras
