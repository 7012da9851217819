"""HVPNeT's frozen CNN pyramid, computed once per split instead of once per epoch.

With ``hvpnet.freeze_backbone`` the CNN is in eval mode and gets no gradient, and the images of
a split never change (no augmentation), so every epoch would compute the same pooled maps
(HVPNeT paper Sec. 3.2: the p x p pooled blocks of the global image and each object). They are
computed once, kept on the CPU, and each batch carries its posts' maps as
``batch["pyramid_features"]``, which ``HVPNet.token_states`` hands to the visual prefix in
place of running the CNN. Cost: sum(C_i) * p * p floats per image (ResNet-50, p = 2: 61 KB;
Twitter-2015, all splits, 3 objects per post: ~1.6 GB); ``finetune.cache_frozen_features=false``
turns it off.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from promu_lib.data.datasets import make_loader
from promu_lib.train.common import to_device


def frozen_pyramid(net: nn.Module) -> nn.Module | None:
    """The visual prefix module of an HVPNeT whose CNN is frozen, else None."""
    from promu_lib.models.hvpnet import HVPNet

    backbone = getattr(net, "backbone", None)
    if isinstance(backbone, HVPNet) and backbone.visual.frozen:
        return backbone.visual
    return None


@torch.no_grad()
def pyramid_store(
    visual: nn.Module, dataset: Dataset, device: torch.device, batch_size: int
) -> list[Tensor]:
    """The pooled pyramid of every post of ``dataset``: 4 x (N, n, C_i, p, p), on the CPU."""
    store: list[Tensor] = []
    for batch in make_loader(dataset, batch_size, shuffle=False, seed=0):
        b = to_device(batch, device)
        maps, _ = visual.features(b["image"], b["objects"], b["object_mask"], None)
        if not store:
            store = [torch.zeros(len(dataset), *m.shape[1:], dtype=m.dtype) for m in maps]
        for s, m in zip(store, maps):
            s[batch["index"]] = m.cpu()
    return store


class WithPyramid:
    """``loader`` whose batches also carry their posts' precomputed pyramid maps."""

    def __init__(self, loader: DataLoader, store: list[Tensor]) -> None:
        self.loader, self.store = loader, store

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            index = batch["index"]
            yield batch | {"pyramid_features": [s[index] for s in self.store]}

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # dataset, sampler, batch_size, ...
        return getattr(self.loader, name)
