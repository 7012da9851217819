"""PROMU's visual encoder: a timm Vision Transformer returning CLS + patch tokens.

PROMU paper Sec. 4.1: the image is cut into K patches, embedded and encoded by a ViT into
v = {v_CLS, v_1..v_K}. ``patches_in_box`` maps object boxes to the patches they cover (the
patch subsets P_o of Eq. 7).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from promu_lib.config import VisionEncoderConfig
from promu_lib.errors import MissingAssetError
from promu_lib.paths import resolve


class VisionEncoder(nn.Module):
    """A timm ``VisionTransformer``; ``forward(images) -> (B, 1 + K, D)`` (CLS first)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.hidden_size: int = vit.embed_dim
        self.grid: tuple[int, int] = tuple(vit.patch_embed.grid_size)  # (rows, cols)
        self.num_patches = self.grid[0] * self.grid[1]

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S), ImageNet-normalised -> tokens (B, 1 + K, D), final LayerNorm applied."""
        return self.vit.forward_features(images)


def build_vision_encoder(cfg: VisionEncoderConfig) -> VisionEncoder:
    """A random ViT sized by ``cfg``, or timm's ``cfg.pretrained`` model with the weights in
    the local file ``cfg.weights_file`` (never downloaded)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if cfg.pretrained is None:
        vit = VisionTransformer(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.hidden_size,
            depth=cfg.num_layers,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.intermediate_size / cfg.hidden_size,
            num_classes=0,
            drop_rate=cfg.dropout,
            proj_drop_rate=cfg.dropout,
            attn_drop_rate=cfg.attention_dropout,
        )
        return VisionEncoder(vit)
    how = (
        f"Save the weights of timm model {cfg.pretrained!r} to a local file (on a machine with "
        "internet: timm.create_model(name, pretrained=True), then safetensors.torch.save_file("
        "model.state_dict(), path)) and set vision.weights_file=PATH."
    )
    if cfg.weights_file is None:
        raise MissingAssetError(f"weights of ViT {cfg.pretrained!r}", [], how)
    path = resolve(cfg.weights_file)
    if not path.is_file():
        raise MissingAssetError(f"weights of ViT {cfg.pretrained!r}", [str(path)], how)
    vit = timm.create_model(
        cfg.pretrained,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        num_classes=0,
        img_size=cfg.image_size,
        drop_rate=cfg.dropout,
        proj_drop_rate=cfg.dropout,
        attn_drop_rate=cfg.attention_dropout,
    )
    return VisionEncoder(vit)


def patches_in_box(boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """Which patches each box covers: boxes (B, m, 4) normalised (x1, y1, x2, y2) -> (B, m, K) bool.

    A patch counts if its centre lies in the box; a box covering no patch centre (a small box)
    gets the patch holding the box centre, so every box has at least one patch. Patches are
    numbered row-major, as the ViT's tokens. Padded (all-zero) boxes get patch 0: mask them
    with the object mask.
    """
    rows, cols = grid
    cy = (torch.arange(rows, device=boxes.device, dtype=boxes.dtype) + 0.5) / rows
    cx = (torch.arange(cols, device=boxes.device, dtype=boxes.dtype) + 0.5) / cols
    cy, cx = cy[:, None].expand(rows, cols).reshape(-1), cx[None, :].expand(rows, cols).reshape(-1)
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))  # (B, m, 1)
    inside = (cx >= x1) & (cx <= x2) & (cy >= y1) & (cy <= y2)  # (B, m, K)
    mid_x, mid_y = (x1 + x2).squeeze(-1) / 2, (y1 + y2).squeeze(-1) / 2
    col = (mid_x * cols).long().clamp(0, cols - 1)
    row = (mid_y * rows).long().clamp(0, rows - 1)
    centre = torch.zeros_like(inside).scatter_(-1, (row * cols + col)[..., None], True)
    empty = ~inside.any(-1, keepdim=True)
    return torch.where(empty, centre, inside)
