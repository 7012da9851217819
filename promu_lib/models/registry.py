"""Every fine-tunable model, in one place: its name, whether it sees the image, how its backbone
is built from the config.

A backbone has one method, ``token_states(batch, output_attentions=False) -> (states (B, L, H),
extras)``, and a ``text`` attribute (its BERT; ``text.hidden_size`` sizes the task head). The
task models of :mod:`promu_lib.models.task` put a CRF (MNER) or a marker classifier (MRE) on it.

Adding a model: write its backbone builder ``(spec, cfg, tokenizer, text) -> nn.Module``
(``text`` is the BERT built from ``cfg.text``; build nothing before it, so that the random
initialisation of existing models does not move) and ``register(ModelSpec(...))`` it, here or
from your own module. Fine-tuning, the CLI and the studies read :data:`MODELS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from promu_lib.config import Config

if TYPE_CHECKING:  # torch only when a model is built: the pipeline's runner reads this module
    from torch import nn

    from promu_lib.models.encoder import BertEncoder


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One model: ``name`` (the CLI's ``--model``), ``sees_image`` (False: batches carry no
    image tensors), ``variant`` (HVPNeT's ``hvpnet.variant``; None = the config's),
    ``build_backbone(spec, cfg, tokenizer, text)``, the ``tasks`` it serves, a one-line
    ``summary``, ``reads_boxes`` (True: it reads ``batch["boxes"]``, the objects' positions,
    so it refuses ``data.objects=crops``, whose crop files carry none)."""

    name: str
    sees_image: bool
    variant: str | None
    build_backbone: Callable[[ModelSpec, Config, Any, BertEncoder], nn.Module]
    tasks: tuple[str, ...] = ("ner", "re")
    summary: str
    reads_boxes: bool = False

    def backbone(self, cfg: Config, tokenizer: Any) -> nn.Module:
        """The backbone for ``cfg``: the text BERT first (``cfg.text``), then the rest."""
        from promu_lib.models.builders import build_text_encoder

        text = build_text_encoder(cfg.text, tokenizer)
        return self.build_backbone(self, cfg, tokenizer, text)


# -- the backbones -----------------------------------------------------------------------------


def text_backbone(spec: ModelSpec, cfg: Config, tokenizer: Any, text: BertEncoder) -> nn.Module:
    from promu_lib.models.text import TextBackbone

    return TextBackbone(text)


def hvpnet_backbone(spec: ModelSpec, cfg: Config, tokenizer: Any, text: BertEncoder) -> nn.Module:
    """HVPNeT with ``spec.variant`` (or ``cfg.hvpnet.variant`` when the spec names none)."""
    from promu_lib.models.hvpnet import HVPNet

    variant = cfg.hvpnet.variant if spec.variant is None else spec.variant
    return HVPNet(text, dataclasses.replace(cfg.hvpnet, variant=variant))


def promu_backbone(spec: ModelSpec, cfg: Config, tokenizer: Any, text: BertEncoder) -> nn.Module:
    """PROMU's fusion encoder, its pre-training-only parts frozen."""
    from promu_lib.models.builders import build_fusion_encoder

    encoder = build_fusion_encoder(cfg, tokenizer, text=text)
    # Pre-training-only parts (Eq. 4-5) get no gradient in fine-tuning: freeze them so that
    # optimisers and DDP (unused parameters) see only what the task trains.
    for part in (encoder.proj_t, encoder.proj_v):
        part.requires_grad_(False)
    encoder.temp.requires_grad_(False)
    return encoder


# -- the registry ------------------------------------------------------------------------------

MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model (ValueError when its name is taken); returns ``spec``."""
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def model_spec(name: str) -> ModelSpec:
    """The spec of ``name``; ValueError naming the known models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}") from None


def check_objects(cfg: Config, spec: ModelSpec) -> None:
    """ConfigError (one line) when ``spec`` reads object positions and ``data.objects=crops``
    gives it crop files without any."""
    from promu_lib.config import ConfigError

    if cfg.data.objects == "crops" and spec.sees_image and spec.reads_boxes:
        raise ConfigError(
            f"data.objects=crops: model {spec.name!r} reads the objects' boxes (positions in "
            "the image) and crop files carry none; expected data.objects=boxes (boxes from "
            "`promu data detect`) or a model that takes crops only (hvpnet and its variants)"
        )


def _hvpnet(name: str, variant: str | None, summary: str) -> ModelSpec:
    return ModelSpec(
        name=name, sees_image=True, variant=variant, build_backbone=hvpnet_backbone, summary=summary
    )


# HVPNeT's variants: promu_lib.models.hvpnet (paper Sec. 4.2)
for _spec in (
    ModelSpec(
        name="bert",
        sees_image=False,
        variant=None,
        build_backbone=text_backbone,
        summary="text-only BERT, no image (the baseline)",
    ),
    _hvpnet("hvpnet", None, "HVPNeT with hvpnet.variant (full: the paper's model)"),
    _hvpnet("hvpnet-single", "single", "HVPNeT, block 4 only, a prefix at the last layer only"),
    _hvpnet("hvpnet-flat", "flat", "HVPNeT, block 4 at every layer, no gate"),
    _hvpnet("hvpnet-1v3", "1v3", "HVPNeT, each pyramid block feeds its own layers, no gate"),
    _hvpnet("hvpnet-onlyobj", "onlyobj", "HVPNeT on the object crops only, no global image"),
    ModelSpec(
        name="promu",
        sees_image=True,
        variant=None,
        build_backbone=promu_backbone,
        summary="PROMU's fusion encoder (from a pre-training checkpoint, or from scratch)",
    ),
):
    register(_spec)
