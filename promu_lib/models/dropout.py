"""Dropout with a cheaper mask on CPU: 16 random bits per element instead of a Bernoulli draw.

``torch.nn.Dropout`` draws its CPU mask with ``bernoulli_``, one generator call per element:
at the toy shapes that is ~4 ns an element and the largest single op of a training step
(``benchmarks/results/throughput.md``). :class:`FastDropout` fills a quarter as many int64
words from the same (seeded) generator, reads each as four 16-bit integers and drops an element
when its integer falls below ``round(p * 2**16)``: the drop probability is ``p`` to within
2**-17, every element independent, the kept ones scaled by ``1 / (1 - p)`` as in
``nn.Dropout``. The masks differ from ``nn.Dropout``'s for the same seed (another use of the
generator), so runs are reproducible seed for seed, but not equal to runs with ``nn.Dropout``.

On CUDA, and for ``p`` of 0 or 1, it is ``nn.Dropout`` (whose GPU kernel is already fast).
:func:`use_fast_dropout` swaps every ``nn.Dropout`` of a built model, timm's included.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_LEVELS = 1 << 16  # 16-bit integers per element


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """Bool mask, True = keep, each element kept with probability ``1 - p`` (to 2**-17)."""
    n = 1
    for s in shape:
        n *= s
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), (1 << 63) - 1)  # the whole int64 range (less one value)
    bits = words.view(torch.int16)[:n].view(shape)
    return bits >= -(_LEVELS // 2) + round(p * _LEVELS)


class _MaskedScale(torch.autograd.Function):
    """y = x * m with m = mask / (1 - p), the same m on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scaled_mask: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(scaled_mask)
        return x * scaled_mask

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (scaled_mask,) = ctx.saved_tensors
        return grad * scaled_mask, None


def fast_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p, training)`` with :func:`keep_mask` on CPU (module docstring)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    scaled = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
    return _MaskedScale.apply(x, scaled)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` with :func:`fast_dropout` (same ``p``, no parameters, same state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Dropout`` of ``model`` by a :class:`FastDropout` of the same ``p``
    (in place; returns ``model``)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout and not child.inplace:
                setattr(module, name, FastDropout(child.p))
    return model
