"""The text-only baseline's backbone (model ``bert`` of the registry)."""

from __future__ import annotations

from torch import Tensor, nn

from promu_lib.models.encoder import BertEncoder


class TextBackbone(nn.Module):
    """The text-only baseline: BERT states, no image."""

    def __init__(self, text: BertEncoder) -> None:
        super().__init__()
        self.text = text

    def token_states(self, batch: dict, output_attentions: bool = False) -> tuple[Tensor, dict]:
        out = self.text(
            batch["input_ids"], batch["attention_mask"], output_attentions=output_attentions
        )
        return out.last_hidden_state, ({"attentions": out.attentions} if output_attentions else {})
