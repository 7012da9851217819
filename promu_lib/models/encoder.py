"""A compact BERT-style transformer encoder (post-LayerNorm, as BERT).

One implementation serves three uses:
- the text BERT (``BertEncoder`` = ``Embeddings`` + ``TransformerStack``), loading any Hugging
  Face BERT checkpoint (``load_hf_bert_state_dict``) and tested equal to
  ``transformers.BertModel`` on the same weights;
- HVPNeT's visual prefix: every layer may take prefix keys/values (HVPNeT paper Eq. 9);
- PROMU's fusion transformer over concat(text, image) states (PROMU paper Eq. 2): a
  ``TransformerStack`` run on given input states.

Attention uses ``F.scaled_dot_product_attention``; with ``output_attentions=True`` an explicit
softmax path returns the attention maps (the attention case studies).

Padding is skipped: when a batch has padded positions, the token-wise layers (projections,
feed-forward, LayerNorm, dropout: most of the compute) run on the valid tokens only, packed
into one (N, H) matrix, and only attention sees the padded (B, L) layout (``Packing``). The
states at valid positions are those of the padded computation; padded positions come back as
zeros (they are never read: every head and loss masks them).

References: Devlin et al. 2019 (BERT); karpathy/nanoGPT for the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promu_lib.config import TextEncoderConfig

# (keys, values), each (B, num_heads, P, head_dim); None = no prefix at that layer
Prefix = tuple[Tensor, Tensor]

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # BERT's exact (erf) GELU
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class EncoderConfig(TextEncoderConfig):
    """The config's ``TextEncoderConfig`` (sizes, dropout; ``vocab_size`` must be set here, and
    ``pretrained`` is not read) plus what the model needs beyond it: values that a Hugging Face
    checkpoint carries and the profiles never change."""

    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12  # BERT's value
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @classmethod
    def from_text_config(cls, text: TextEncoderConfig, **beyond: Any) -> EncoderConfig:
        """``text``'s values, with ``beyond`` (e.g. ``vocab_size``, ``pad_token_id``) on top."""
        values = {f.name: getattr(text, f.name) for f in fields(TextEncoderConfig)}
        return cls(**(values | beyond))

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} unsupported; expected one of {sorted(_ACTIVATIONS)}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class Packing:
    """The valid positions of a padded (B, L) batch, to move token states between the padded
    layout (B, L, D) and the packed one (N, D) of the N valid tokens."""

    index: Tensor  # (N,) flat positions b * L + l of the valid tokens
    batch: int
    length: int

    @classmethod
    def of(cls, mask: Tensor) -> Packing | None:
        """None when nothing is padded (packing would only copy)."""
        if bool(mask.all()):
            return None
        return cls(mask.flatten().nonzero().squeeze(1), mask.shape[0], mask.shape[1])

    def pack(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (N, D)"""
        return x.reshape(self.batch * self.length, -1).index_select(0, self.index)

    def pad(self, x: Tensor) -> Tensor:
        """(N, D) -> (B, L, D), zeros at padded positions."""
        dense = x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy(0, self.index, x)
        return dense.view(self.batch, self.length, -1)


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, L, H)
    attentions: tuple[Tensor, ...] | None = None  # per layer (B, nh, L, P + L)


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (BERT)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.max_position = cfg.max_position

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        B, L = input_ids.shape
        if L > self.max_position:
            raise ValueError(
                f"sequence length {L} exceeds the encoder's {self.max_position} positions; "
                "lower data.max_len or raise text.max_position"
            )
        # Positions start at 0 even with a prefix: HVPNeT does not shift them.
        pos = torch.arange(L, device=input_ids.device)
        x = self.word(input_ids) + self.position(pos)[None]
        if token_type_ids is None:
            x = x + self.token_type.weight[0]
        else:
            x = x + self.token_type(token_type_ids)
        return self.drop(self.norm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values may be extended by a prefix."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.nh, self.hd = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attn_dropout = cfg.attention_dropout

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        prefix: Prefix | None = None,
        need_weights: bool = False,
        packing: Packing | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, L, H), or (N, H) packed by ``packing``; mask (B, P + L) bool, True = attend;
        prefix (B, nh, P, hd) each."""
        qkv = self.qkv(x)
        if packing is not None:
            qkv = packing.pad(qkv)
        B, L, H3 = qkv.shape
        H = H3 // 3
        q, k, v = qkv.view(B, L, 3, self.nh, self.hd).permute(2, 0, 3, 1, 4)  # (B, nh, L, hd)
        if prefix is not None:
            k = torch.cat([prefix[0], k], dim=2)  # (B, nh, P + L, hd)
            v = torch.cat([prefix[1], v], dim=2)
        bias = mask[:, None, None, :]  # (B, 1, 1, P + L)
        p_drop = self.attn_dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)
            probs = scores.masked_fill(~bias, float("-inf")).softmax(dim=-1)
            y = F.dropout(probs, p_drop, self.training) @ v
        else:
            probs = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p_drop)
        y = y.transpose(1, 2).reshape(B, L, H)
        if packing is not None:
            y = packing.pack(y)
        return self.out(y), probs


class Block(nn.Module):
    """A post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        prefix: Prefix | None = None,
        need_weights: bool = False,
        packing: Packing | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        a, probs = self.attn(x, mask, prefix, need_weights, packing)
        x = self.norm1(x + self.drop(a))
        x = self.norm2(x + self.drop(self.fc2(self.act(self.fc1(x)))))
        return x, probs


class TransformerStack(nn.Module):
    """``num_layers`` blocks over given input states (text embeddings or fused text + image)."""

    def __init__(self, cfg: EncoderConfig, num_layers: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.num_layers if num_layers is None else num_layers
        self.layers = nn.ModuleList(Block(cfg) for _ in range(n))

    def forward(
        self,
        hidden: Tensor,
        attention_mask: Tensor,
        prefix: list[Prefix | None] | None = None,
        prefix_mask: Tensor | None = None,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """hidden (B, L, H); attention_mask (B, L), nonzero = real token.

        ``prefix``: one (keys, values) pair or None per layer, each (B, nh, P, hd); the same P
        for every layer that has one. Each prefix head gets its own slice of the key/value
        vectors, exactly as the text keys are split into heads (the reference HVPNeT code
        instead reshapes a (B, P, H) prefix as a view ``(B, nh, P, hd)``, which mixes tokens
        and heads; see ``promu_lib.models.hvpnet``). ``prefix_mask`` (B, P) bool masks prefix
        slots (default: all attended). Padded positions are skipped (``Packing``) unless
        ``output_attentions`` asks for every row of the attention maps.
        """
        if prefix is not None and len(prefix) != len(self.layers):
            raise ValueError(f"got {len(prefix)} prefixes for {len(self.layers)} layers")
        text_mask = attention_mask.bool()
        full_mask = text_mask
        if prefix is not None:
            first = next((p for p in prefix if p is not None), None)
            if first is not None:
                P = first[0].shape[2]
                if prefix_mask is None:
                    prefix_mask = text_mask.new_ones(text_mask.shape[0], P)
                full_mask = torch.cat([prefix_mask.bool(), text_mask], dim=1)
        packing = None if output_attentions else Packing.of(text_mask)
        if packing is not None:
            hidden = packing.pack(hidden)
        attentions = []
        for i, layer in enumerate(self.layers):
            p = prefix[i] if prefix is not None else None
            hidden, probs = layer(
                hidden, full_mask if p is not None else text_mask, p, output_attentions, packing
            )
            attentions.append(probs)
        if packing is not None:
            hidden = packing.pad(hidden)
        return EncoderOutput(hidden, tuple(attentions) if output_attentions else None)


class BertEncoder(nn.Module):
    """Embeddings + transformer stack: a BERT without pooler, checkpoint-compatible with HF."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.stack = TransformerStack(cfg)
        self.apply(init_bert_weights)

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        prefix: list[Prefix | None] | None = None,
        prefix_mask: Tensor | None = None,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        return self.stack(x, attention_mask, prefix, prefix_mask, output_attentions)

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow (or cut) the word embeddings; new rows get BERT's initialisation."""
        old = self.embeddings.word
        if vocab_size == old.num_embeddings:
            return
        new = nn.Embedding(vocab_size, old.embedding_dim, padding_idx=old.padding_idx)
        new.to(old.weight.device, old.weight.dtype)
        init_bert_weights(new)
        n = min(vocab_size, old.num_embeddings)
        with torch.no_grad():
            new.weight[:n] = old.weight[:n]
        self.embeddings.word = new
        self.cfg.vocab_size = vocab_size


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Hugging Face BERT checkpoints
# ---------------------------------------------------------------------------------------------

_HF_EMBED = {
    "embeddings.word_embeddings": "embeddings.word",
    "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.token_type",
    "embeddings.LayerNorm": "embeddings.norm",
}
_HF_LAYER = {
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "norm2",
}


def encoder_config_from_hf(
    hf_config, dropout: float | None = None, attention_dropout: float | None = None
) -> EncoderConfig:
    """An ``EncoderConfig`` from a ``transformers.BertConfig`` (or any object with its fields);
    ``dropout``/``attention_dropout`` override the checkpoint's rates when given."""
    return EncoderConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        intermediate_size=hf_config.intermediate_size,
        max_position=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size,
        dropout=hf_config.hidden_dropout_prob if dropout is None else dropout,
        attention_dropout=(
            hf_config.attention_probs_dropout_prob
            if attention_dropout is None
            else attention_dropout
        ),
        layer_norm_eps=hf_config.layer_norm_eps,
        hidden_act=hf_config.hidden_act,
        pad_token_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
    )


def hf_bert_to_encoder_state_dict(sd: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Map a ``BertModel`` (or ``BertFor*``, ``bert.``-prefixed) state dict to ours.

    The query/key/value projections are fused into one ``qkv`` matrix; the pooler and task
    heads are dropped; old ``gamma``/``beta`` LayerNorm names are accepted.
    """
    clean = {}
    for k, v in sd.items():
        k = k.removeprefix("bert.").replace(".gamma", ".weight").replace(".beta", ".bias")
        clean[k] = v
    out: dict[str, Tensor] = {}
    for src, dst in _HF_EMBED.items():
        for p in ("weight", "bias"):
            if f"{src}.{p}" in clean:
                out[f"{dst}.{p}"] = clean[f"{src}.{p}"]
    for i in range(num_layers):
        pre = f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            out[f"stack.layers.{i}.attn.qkv.{p}"] = torch.cat(
                [clean[f"{pre}attention.self.{n}.{p}"] for n in ("query", "key", "value")]
            )
            for src, dst in _HF_LAYER.items():
                out[f"stack.layers.{i}.{dst}.{p}"] = clean[f"{pre}{src}.{p}"]
    return out


def bert_encoder_from_hf(
    hf_model: nn.Module, dropout: float | None = None, attention_dropout: float | None = None
) -> BertEncoder:
    """Our ``BertEncoder`` holding the weights of a loaded ``transformers.BertModel``."""
    cfg = encoder_config_from_hf(hf_model.config, dropout, attention_dropout)
    enc = BertEncoder(cfg)
    enc.load_state_dict(hf_bert_to_encoder_state_dict(hf_model.state_dict(), cfg.num_layers))
    return enc
