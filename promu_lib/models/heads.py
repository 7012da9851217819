"""Task heads: a CRF tagger over words (MNER) and an entity-marker classifier (MRE).

MNER: HVPNeT paper Eq. 10 / PROMU paper Eq. 12-13. MRE: the MTB entity-start representation
(Soares et al. 2019) of PROMU paper Eq. 14-15: concat(e[<s>], e[<o>]) -> Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchcrf import CRF


def gather_positions(states: Tensor, index: Tensor) -> Tensor:
    """states (B, L, H), index (B, ...) positions -> (B, ..., H)."""
    B, H = states.shape[0], states.shape[-1]
    flat = index.reshape(B, -1)
    picked = states.gather(1, flat[..., None].expand(-1, -1, H))
    return picked.view(*index.shape, H)


class CrfTagger(nn.Module):
    """dropout -> Linear -> CRF over words.

    Each word is represented by the state of its first sub-token (``word_starts``), so the CRF
    runs over words, not word pieces: non-first pieces, [CLS], [SEP] and padding never enter
    it, and its transitions are between consecutive words. That is why no ``X`` tag (nor
    [CLS]/[SEP]/PAD tags, as in the reference code's 13 labels) is needed: those tags exist
    only to fill sub-token positions in a piece-level CRF, where they also break the
    B-/I- transition structure (I -> X -> I instead of I -> I).
    """

    def __init__(self, hidden_size: int, num_tags: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.emit = nn.Linear(hidden_size, num_tags)
        self.crf = CRF(num_tags, batch_first=True)

    def emissions(self, states: Tensor, word_starts: Tensor) -> Tensor:
        """(B, L, H) token states -> (B, W, T) emission scores of each word."""
        return self.emit(self.drop(gather_positions(states, word_starts)))

    def loss(self, emissions: Tensor, tags: Tensor, word_mask: Tensor) -> Tensor:
        """Mean negative log-likelihood over posts that have at least one word."""
        has_words = word_mask.any(dim=1)
        if not bool(has_words.all()):  # torchcrf needs the first step of every row unmasked
            emissions, tags, word_mask = emissions[has_words], tags[has_words], word_mask[has_words]
            if emissions.shape[0] == 0:
                return emissions.sum() * 0.0
        return -self.crf(emissions, tags, mask=word_mask.bool(), reduction="mean")

    def decode(self, emissions: Tensor, word_mask: Tensor) -> list[list[int]]:
        """Viterbi tags of the words under ``word_mask`` (an empty list for a post with none)."""
        has_words = word_mask.any(dim=1)
        if not bool(has_words.any()):
            return [[] for _ in range(word_mask.shape[0])]
        paths = iter(self.crf.decode(emissions[has_words], mask=word_mask[has_words].bool()))
        return [next(paths) if h else [] for h in has_words.tolist()]


class MarkerClassifier(nn.Module):
    """concat(states at <s>, states at <o>) -> dropout -> Linear over the relations.

    The relation representation is PROMU's (its Eq. 14-15: the entity-start markers' states,
    concatenated) and the reference HVPNeT code's; the HVPNeT paper says a [CLS] head (its Sec.
    3.5, Eq. 11), which is not what its code runs. Dropout (``text.dropout``) is added here:
    neither paper has it, and the reference defines a Dropout(0.5) for its RE model that its
    forward never applies.
    """

    def __init__(self, hidden_size: int, num_relations: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.classify = nn.Linear(2 * hidden_size, num_relations)

    def forward(self, states: Tensor, head_start: Tensor, tail_start: Tensor) -> Tensor:
        """(B, L, H), (B,), (B,) -> logits (B, R)."""
        pair = gather_positions(states, torch.stack([head_start, tail_start], dim=1))  # (B, 2, H)
        return self.classify(self.drop(pair.flatten(1)))

    @staticmethod
    def loss(logits: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(logits, label)  # PROMU Eq. 15
