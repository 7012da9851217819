"""HVPNeT's variants by their outputs (HVPNeT paper Sec. 4.2), and the Eq. 1-2 / Eq. 8 options.

Each variant is defined by which pyramid blocks (Eq. 1-2) and which images reach which text
layer. The tests perturb one input and check where the model's outputs (task logits, or the
per-layer prefix keys/values) move, instead of reading the routing buffers.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from promu_lib.config import ConfigError, HVPNetConfig, tiny
from promu_lib.models import build_task_model
from promu_lib.models.hvpnet import HierarchicalVisualPrefix, ReferenceVisualPrefix

torch.set_num_threads(1)
B, L_TOKENS, S, VOCAB = 2, 8, 32, 40


class Tok:
    pad_token_id = 0

    def __len__(self) -> int:
        return VOCAB


def cfg_for(num_layers: int = 2):
    cfg = tiny()
    cfg.text.hidden_size, cfg.text.intermediate_size, cfg.text.num_layers = 16, 32, num_layers
    cfg.hvpnet.mid_dim = 8
    return cfg


def batch(seed: int = 0) -> dict:
    """An MRE batch; both object slots real (padded slots are masked, not tested here)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, VOCAB, (B, L_TOKENS), generator=g),
        "attention_mask": torch.ones(B, L_TOKENS, dtype=torch.long),
        "image": torch.randn(B, 3, S, S, generator=g),
        "objects": torch.randn(B, 2, 3, S, S, generator=g),
        "object_mask": torch.ones(B, 2, dtype=torch.bool),
        "head_start": torch.tensor([1, 2]),
        "tail_start": torch.tensor([4, 5]),
    }


def model_and_features(name: str, num_layers: int = 2):
    """An eval-mode MRE model and the pyramid features (4 x (B, n, C_i, p, p)) of batch()."""
    torch.manual_seed(0)
    model = build_task_model(cfg_for(num_layers), "re", name, Tok()).eval()
    b = batch()
    visual = model.backbone.visual
    images, valid = visual.image_stack(b["image"], b["objects"], b["object_mask"])
    with torch.no_grad():
        features = visual.pyramid_features(images, valid)
    return model, b, features


def perturbed(features: list[torch.Tensor], blocks: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        f + torch.randn(f.shape, generator=g) if i in blocks else f for i, f in enumerate(features)
    ]


@torch.no_grad()
def logits(model, b: dict, features: list[torch.Tensor] | None = None) -> torch.Tensor:
    extra = {} if features is None else {"pyramid_features": features}
    return model(dict(b, **extra))["logits"]


def moved(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether an output changed at all. An input a variant does not use leaves its outputs
    bitwise equal (zero routing weights, images left out of the stack); at random init a used
    input moves the logits by only ~1e-5, so no tolerance tells the two apart better."""
    return not torch.equal(a, b)


@pytest.mark.parametrize("name", ["hvpnet-single", "hvpnet-flat"])
def test_single_and_flat_see_only_block_4(name):
    model, b, feats = model_and_features(name)
    base = logits(model, b, feats)
    assert not moved(logits(model, b, perturbed(feats, (0, 1, 2))), base)
    assert moved(logits(model, b, perturbed(feats, (3,))), base)  # the test is not vacuous


def test_full_model_sees_blocks_1_to_3():
    model, b, feats = model_and_features("hvpnet")
    base = logits(model, b, feats)
    for block in (0, 1, 2):
        assert moved(logits(model, b, perturbed(feats, (block,))), base), block


def test_single_puts_its_prefix_at_the_last_layer_only():
    model, b, feats = model_and_features("hvpnet-single", num_layers=3)
    vp = model.backbone.visual(b["image"], b["objects"], b["object_mask"], feats)
    assert vp.prefix[:2] == [None, None] and vp.prefix[2] is not None
    assert vp.gates is None


def test_1v3_feeds_each_block_to_its_own_layers_only():
    model, b, feats = model_and_features("hvpnet-1v3", num_layers=4)  # layer l <- block l
    visual = model.backbone.visual
    with torch.no_grad():
        base = visual(b["image"], b["objects"], b["object_mask"], feats).prefix
        for block in range(4):
            out = visual(b["image"], b["objects"], b["object_mask"], perturbed(feats, (block,)))
            for layer, ((k0, v0), (k1, v1)) in enumerate(zip(base, out.prefix)):
                assert moved(k0, k1) == moved(v0, v1) == (layer == block), (block, layer)


def test_onlyobj_ignores_the_global_image_and_sees_the_objects():
    torch.manual_seed(0)
    model = build_task_model(cfg_for(), "re", "hvpnet-onlyobj", Tok()).eval()
    b = batch()
    base = logits(model, b)
    assert not moved(logits(model, dict(b, image=torch.randn(B, 3, S, S))), base)
    objects = b["objects"].clone()
    objects[:, 0] += 1.0
    assert moved(logits(model, dict(b, objects=objects)), base)
    full = build_task_model(cfg_for(), "re", "hvpnet", Tok()).eval()
    assert moved(logits(full, dict(b, image=torch.randn(B, 3, S, S))), logits(full, b))


# -- Eq. 1-2: the last block unpooled; Eq. 8: one linear map per layer ----------------------------


@pytest.mark.parametrize("image_size,prompt_len", [(32, 4), (64, 16)])
def test_prompt_len_of_the_last_block_leaves_it_unpooled(image_size, prompt_len):
    """tiny-cnn's last map is S/16 wide: prompt_len = its h*w is Eq. 1 (V_c = Conv(F_c))."""
    cfg = HVPNetConfig(image_size=image_size, prompt_len=prompt_len, mid_dim=8)
    visual = HierarchicalVisualPrefix(cfg, hidden_size=16, num_layers=2, num_heads=2)
    images = torch.randn(1, 2, 3, image_size, image_size)
    valid = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        raw = visual.backbone(images.flatten(0, 1))
        pooled = visual.pyramid_features(images, valid)
    assert raw[3].shape[-1] ** 2 == prompt_len
    torch.testing.assert_close(pooled[3].flatten(0, 1), raw[3])  # Eq. 1: not pooled
    assert all(p.shape[-1] ** 2 == prompt_len for p in pooled)  # Eq. 2: pooled to its size
    assert raw[0].shape[-1] ** 2 > prompt_len


def _flat_prefix(mid_dim: int, scale: float) -> torch.Tensor:
    torch.manual_seed(0)
    cfg = HVPNetConfig(variant="flat", mid_dim=mid_dim)
    visual = HierarchicalVisualPrefix(cfg, hidden_size=16, num_layers=2, num_heads=2).eval()
    images = torch.randn(1, 1, 3, S, S)
    valid = torch.ones(1, 1, dtype=torch.bool)
    with torch.no_grad():
        feats = visual.pyramid_features(images, valid)
        feats = [f * scale for f in feats]
        return visual(images[:, 0], images[:, :0], valid[:, :0], feats).prefix[0][0]


def test_mid_dim_0_is_eq_8_a_linear_map_of_the_visual_tokens():
    """Flat routes block 4 through Conv1x1 (affine) and W^phi: with mid_dim 0 the prefix is
    affine in the features, k(2x) - k(0) = 2 (k(x) - k(0)); the default Linear-Tanh is not."""

    def gap(mid_dim: int) -> float:
        k0, k1, k2 = (_flat_prefix(mid_dim, s) for s in (0.0, 20.0, 40.0))  # Tanh saturates
        return float(((k2 - k0) - 2 * (k1 - k0)).abs().max() / (k1 - k0).abs().max())

    assert gap(0) < 1e-5
    assert gap(8) > 0.05


def test_mid_dim_0_is_accepted_by_the_paper_layout_only():
    assert tiny().replace(**{"hvpnet.mid_dim": 0}).hvpnet.mid_dim == 0
    with pytest.raises(ConfigError, match="hvpnet.mid_dim"):
        tiny().replace(**{"hvpnet.mid_dim": -1})
    cfg = dataclasses.replace(HVPNetConfig(), layout="reference", mid_dim=0)
    with pytest.raises(ValueError, match="mid_dim >= 1"):
        ReferenceVisualPrefix(cfg, hidden_size=16, num_layers=2, num_heads=2)
