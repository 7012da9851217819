"""Models: a compact BERT encoder, PROMU's fusion encoder, HVPNeT, task heads.

- ``encoder``: BERT-style encoder (loads HF BERT weights; prefix keys/values; attention maps)
- ``vision``: PROMU's ViT (timm) and the box -> patch map
- ``pyramid``: CNN pyramids for HVPNeT
- ``hvpnet``: HVPNeT's hierarchical visual prefix and its variants
- ``fusion``: PROMU's ``FusionEncoder`` (PROMU paper Eq. 2)
- ``heads``: CRF tagger (MNER) and marker classifier (MRE)
- ``builders`` / ``task``: building everything from the config
"""

from promu_lib.models.builders import build_fusion_encoder, build_text_encoder
from promu_lib.models.encoder import BertEncoder, EncoderConfig, TransformerStack
from promu_lib.models.fusion import FusionEncoder, FusionOutput
from promu_lib.models.hvpnet import HVPNet
from promu_lib.models.task import MODELS, TASKS, build_task_model, load_pretrained_backbone
from promu_lib.models.vision import VisionEncoder, build_vision_encoder, patches_in_box

__all__ = [
    "MODELS",
    "TASKS",
    "BertEncoder",
    "EncoderConfig",
    "FusionEncoder",
    "FusionOutput",
    "HVPNet",
    "TransformerStack",
    "VisionEncoder",
    "build_fusion_encoder",
    "build_task_model",
    "build_text_encoder",
    "build_vision_encoder",
    "load_pretrained_backbone",
    "patches_in_box",
]
