"""The training step's fast CPU paths (benchmarks/results/throughput.md) against torch's own:
the dropout mask's law and its gradient, the attention equal to ``scaled_dot_product_attention``
forward and backward, and every dropout of a built model replaced."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from promu_lib.models.dropout import FastDropout, fast_dropout, keep_mask, use_fast_dropout
from promu_lib.models.encoder import attention


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_keep_mask_drops_with_probability_p(p):
    torch.manual_seed(0)
    n = 1_000_000
    kept = keep_mask(torch.Size([n]), p, torch.device("cpu")).double().mean().item()
    sd = math.sqrt(p * (1 - p) / n)
    assert abs((1 - kept) - p) < 5 * sd
    # neighbours independent: the four 16-bit words of one int64 do not move together
    m = keep_mask(torch.Size([n]), p, torch.device("cpu")).view(-1, 4).double()
    both = (m[:, 0] * m[:, 1]).mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / n * 4)


def test_fast_dropout_scales_kept_values_and_routes_the_gradient_through_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(300, 64, requires_grad=True)
    y = fast_dropout(x, 0.1, True)
    kept = y != 0
    assert torch.allclose(y[kept], x.detach()[kept] / 0.9)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, kept.float() / 0.9)


def test_fast_dropout_is_seeded_identity_in_eval_and_at_p0():
    x = torch.randn(50, 8)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.2, True)
    torch.manual_seed(3)
    assert torch.equal(a, fast_dropout(x, 0.2, True))
    assert fast_dropout(x, 0.2, False) is x and fast_dropout(x, 0.0, True) is x
    d = FastDropout(0.2).eval()
    assert d(x) is x
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))


def test_use_fast_dropout_replaces_every_dropout_of_a_built_model():
    from promu_lib.config import load_config
    from promu_lib.models.vision import build_vision_encoder

    vit = build_vision_encoder(load_config("tiny").vision)
    assert not [m for m in vit.modules() if type(m) is nn.Dropout]
    assert [m for m in vit.modules() if isinstance(m, FastDropout)]
    seq = use_fast_dropout(nn.Sequential(nn.Dropout(0.3), nn.Linear(2, 2)))
    assert isinstance(seq[0], FastDropout) and seq[0].p == 0.3


@pytest.mark.parametrize("prefix", [0, 4])
def test_attention_equals_sdpa_forward_and_backward(prefix):
    torch.manual_seed(2)
    B, nh, L, hd = 5, 4, 11, 16
    S = prefix + L
    q, k, v = (torch.randn(B, nh, n, hd, dtype=torch.float64) for n in (L, S, S))
    mask = torch.rand(B, S) > 0.3
    mask[:, prefix] = True  # every row attends somewhere
    mask = mask[:, None, None, :]
    grads = []
    for fn in (attention, lambda *a: F.scaled_dot_product_attention(*a[:3], attn_mask=a[3])):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, mask)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), *(t.grad for t in leaves)))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
