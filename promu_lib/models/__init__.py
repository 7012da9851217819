"""Models: a compact BERT encoder, PROMU's fusion encoder, HVPNeT, task heads.

- ``encoder``: BERT-style encoder (loads HF BERT weights; prefix keys/values; attention maps)
- ``vision``: PROMU's ViT (timm) and the box -> patch map
- ``pyramid``: CNN pyramids for HVPNeT
- ``hvpnet``: HVPNeT's hierarchical visual prefix and its variants
- ``fusion``: PROMU's ``FusionEncoder`` (PROMU paper Eq. 2)
- ``heads``: CRF tagger (MNER) and marker classifier (MRE)
- ``builders`` / ``task``: building everything from the config
- ``registry``: every fine-tunable model (``MODELS``: name -> ``ModelSpec``; ``model_spec``,
  ``register``)
"""

import importlib
from typing import Any

# name -> submodule; imported on first use, so that ``promu_lib.models.registry`` (which the
# torch-free pipeline runner reads) does not pull torch in through this package
_WHERE = {
    "build_fusion_encoder": "builders", "build_text_encoder": "builders",
    "BertEncoder": "encoder", "EncoderConfig": "encoder", "TransformerStack": "encoder",
    "FusionEncoder": "fusion", "FusionOutput": "fusion", "HVPNet": "hvpnet",
    "MODELS": "registry", "ModelSpec": "registry", "model_spec": "registry",
    "register": "registry", "TASKS": "task", "build_task_model": "task",
    "load_pretrained_backbone": "task", "VisionEncoder": "vision",
    "build_vision_encoder": "vision", "patches_in_box": "vision",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = [
    "MODELS",
    "TASKS",
    "BertEncoder",
    "EncoderConfig",
    "FusionEncoder",
    "FusionOutput",
    "HVPNet",
    "ModelSpec",
    "TransformerStack",
    "VisionEncoder",
    "build_fusion_encoder",
    "build_task_model",
    "build_text_encoder",
    "build_vision_encoder",
    "load_pretrained_backbone",
    "model_spec",
    "patches_in_box",
    "register",
]
