"""``hvpnet.layout="reference"``: the reference code's visual prefix, checked without that code.

The reference (zjunlp/HVPNeT ``models/bert_model.py``) is transcribed here as loops, the way
its ``get_visual_prompt`` is written; the full-size check against the real code, on the same
weights, is ``benchmarks/hvpnet_reference.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from promu_lib.config import HVPNetConfig, tiny
from promu_lib.models import build_task_model
from promu_lib.models.hvpnet import (
    HierarchicalVisualPrefix,
    ReferenceVisualPrefix,
    reference_heads,
)

torch.set_num_threads(1)
H, NH, LAYERS, S = 8, 2, 3, 32  # tiny-cnn at 32 px: maps 16, 8, 4, 2


def prefix_module(layout: str = "reference", **kw) -> HierarchicalVisualPrefix:
    torch.manual_seed(0)
    cfg = HVPNetConfig(image_size=S, mid_dim=6, layout=layout, **kw)
    cls = ReferenceVisualPrefix if layout == "reference" else HierarchicalVisualPrefix
    return cls(cfg, hidden_size=H, num_layers=LAYERS, num_heads=NH).eval()


def images(B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    object_mask = torch.tensor([[True, True, False], [True, False, False]])[:B]
    objects = torch.randn(B, 3, 3, S, S, generator=g) * object_mask[..., None, None, None]
    return torch.randn(B, 3, S, S, generator=g), objects, object_mask


def reference_loop(vp: ReferenceVisualPrefix, image, objects) -> list[tuple]:
    """The reference's ImageModel + get_visual_prompt, loop for loop, on ``vp``'s weights."""
    bsz = image.shape[0]

    def prompt(x):  # get_resnet_prompt, then cat(...).view(bsz, prompt_len, -1), encoder_conv
        maps = []
        for f in vp.backbone(x):
            kernel = f.shape[-1] // 2
            maps.append(F.avg_pool2d(f, kernel_size=kernel, stride=kernel))
        return vp.proj(torch.cat(maps, dim=1).view(bsz, 4, -1))

    splits = [prompt(image).split(2 * H, dim=-1)]
    splits += [prompt(objects[:, i]).split(2 * H, dim=-1) for i in range(objects.shape[1])]
    result = []
    for idx in range(LAYERS):
        w, b = vp.gate.weight[4 * idx : 4 * idx + 4], vp.gate.bias[4 * idx : 4 * idx + 4]
        key_vals = []
        for split in splits:
            summed = torch.stack(split).sum(0).view(bsz, -1) / 4
            gate = F.softmax(F.leaky_relu(F.linear(summed, w, b)), dim=-1)
            key_val = torch.zeros_like(split[0])
            for i in range(4):
                key_val = key_val + torch.einsum("bg,blh->blh", gate[:, i].view(-1, 1), split[i])
            key_vals.append(key_val)
        key, value = torch.cat(key_vals, dim=1).split(H, dim=-1)
        result.append((key.reshape(bsz, NH, -1, H // NH), value.reshape(bsz, NH, -1, H // NH)))
    return result


def test_reference_layout_equals_the_reference_loops():
    vp = prefix_module()
    image, objects, object_mask = images()
    with torch.no_grad():
        out = vp(image, objects, object_mask)
        expected = reference_loop(vp, image, objects)
    assert len(out.prefix) == LAYERS
    for (k, v), (k_ref, v_ref) in zip(out.prefix, expected):
        assert k.shape == (2, NH, 4 * 4, H // NH)
        torch.testing.assert_close(k, k_ref)
        torch.testing.assert_close(v, v_ref)


def test_reference_heads_is_a_memory_order_view_not_a_per_head_split():
    x = torch.arange(2 * 4, dtype=torch.float).view(1, 2, 4)  # P = 2 tokens, H = 4, nh = 2
    heads = reference_heads(x, num_heads=2)
    assert heads.shape == (1, 2, 2, 2)
    # head 0 holds token 0's whole vector cut in two "slots", head 1 token 1's
    assert heads[0, 0].tolist() == [[0, 1], [2, 3]]
    assert heads[0, 1].tolist() == [[4, 5], [6, 7]]
    split = x.view(1, 2, 2, 2).transpose(1, 2)  # the per-head split of the paper layout
    assert split[0, 0].tolist() == [[0, 1], [4, 5]]


def test_reference_gates_mix_four_chunks_and_sum_to_one():
    vp = prefix_module()
    image, objects, object_mask = images()
    with torch.no_grad():
        gates = vp(image, objects, object_mask).gates
    assert gates.shape == (2, 1 + 3, LAYERS, 4)
    torch.testing.assert_close(gates.sum(-1), torch.ones(gates.shape[:-1]))
    assert vp.gate.in_features == vp.cfg.prompt_len * 2 * H  # the flattened chunk mean
    assert vp.proj[-1].out_features == 4 * 2 * H  # 4 chunks of keys + values
    assert vp.proj[0].in_features == sum(vp.backbone.channels)


def test_reference_layout_attends_padded_objects_as_zero_images():
    vp, paper = prefix_module(), prefix_module("paper")
    image, objects, object_mask = images()
    with torch.no_grad():
        out = vp(image, objects, object_mask)
        all_valid = vp(image, objects, torch.ones_like(object_mask))
    assert out.mask.all() and out.mask.shape == (2, 4 * 4)
    for (k, v), (k2, v2) in zip(out.prefix, all_valid.prefix):
        torch.testing.assert_close(k, k2)  # a padded slot = an explicit zero image
        torch.testing.assert_close(v, v2)
    with torch.no_grad():
        paper_mask = paper(image, objects, object_mask).mask
    expected = torch.cat([torch.ones(2, 1, dtype=torch.bool), object_mask], 1)
    assert torch.equal(paper_mask, expected.repeat_interleave(4, dim=1))


def test_frozen_cnn_sees_one_zero_image_for_all_padded_slots():
    """Eval-mode BatchNorm: equal zero images give equal maps, so the CNN runs on the 5 real
    images and one zero image (not 8 slots), with the same prefix as running every slot."""
    vp = prefix_module()
    image, objects, object_mask = images()
    seen = []
    vp.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    with torch.no_grad():
        out = vp(image, objects, object_mask)
        vp.frozen = False  # every slot through the CNN (the weights stay as they are)
        every = vp(image, objects, object_mask)
    assert seen == [6, 8]
    for (k, v), (k2, v2) in zip(out.prefix, every.prefix):
        torch.testing.assert_close(k, k2)
        torch.testing.assert_close(v, v2)


def test_reference_pooling_is_the_fixed_kernel_not_adaptive():
    torch.manual_seed(0)
    cfg = HVPNetConfig(image_size=56, mid_dim=6, layout="reference")  # maps 28, 14, 7, 4
    vp = ReferenceVisualPrefix(cfg, hidden_size=H, num_layers=LAYERS, num_heads=NH).eval()
    x = torch.randn(1, 2, 3, 56, 56)
    with torch.no_grad():
        pooled = vp.pyramid_features(x, torch.ones(1, 2, dtype=torch.bool))
        maps = vp.backbone(x.flatten(0, 1))
    seven = maps[2]  # 7x7 -> kernel 3: the top-left 6x6 only
    assert seven.shape[-1] == 7
    top_left = seven[..., :3, :3].mean(dim=(-2, -1))
    torch.testing.assert_close(pooled[2][:, :, :, 0, 0].flatten(0, 1), top_left)
    adaptive = F.adaptive_avg_pool2d(seven, 2)
    assert (adaptive - pooled[2].flatten(0, 1)).abs().max() > 1e-3
    bad = ReferenceVisualPrefix(
        dataclasses.replace(cfg, image_size=24), hidden_size=H, num_layers=LAYERS, num_heads=NH
    )  # maps 12, 6, 3, 2: 3x3 pools to 3x3 with kernel 1
    with pytest.raises(ValueError, match="does not pool"):
        bad.pyramid_features(torch.zeros(1, 1, 3, 24, 24), torch.ones(1, 1, dtype=torch.bool))


def test_reference_layout_rejects_variants_and_unknown_layouts():
    with pytest.raises(ValueError, match="only the full model"):
        prefix_module(variant="single")
    cfg = tiny()
    cfg.text.vocab_size = 50
    cfg.hvpnet.layout = "nope"
    with pytest.raises(ValueError, match="layout"):
        build_task_model(cfg, "ner", "hvpnet", None)


@pytest.mark.parametrize("task", ["ner", "re"])
def test_reference_layout_task_model_trains(task):
    torch.manual_seed(0)
    cfg = tiny()
    cfg.text.vocab_size, cfg.text.hidden_size, cfg.text.intermediate_size = 50, 16, 32
    cfg.hvpnet = dataclasses.replace(cfg.hvpnet, image_size=S, mid_dim=6, layout="reference")
    model = build_task_model(cfg, task, "hvpnet", None).train()
    assert isinstance(model.backbone.visual, ReferenceVisualPrefix)
    B, L = 2, 10
    image, objects, object_mask = images(B)
    batch = {
        "input_ids": torch.randint(1, 50, (B, L)),
        "attention_mask": torch.ones(B, L, dtype=torch.long),
        "image": image,
        "objects": objects,
        "object_mask": object_mask,
    }
    if task == "ner":
        batch |= {"word_starts": torch.tensor([[1, 3, 4], [2, 5, 0]])}
        batch |= {"word_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
        batch["tags"] = torch.tensor([[1, 2, 0], [3, 0, 0]])
    else:
        batch |= {"head_start": torch.tensor([1, 2]), "tail_start": torch.tensor([4, 6])}
        batch["label"] = torch.tensor([0, 5])
    out = model(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad


def test_default_layout_is_the_paper_one():
    assert HVPNetConfig().layout == "paper"
    cfg = tiny()
    cfg.text.vocab_size = 50
    model = build_task_model(cfg, "ner", "hvpnet", None)
    visual = model.backbone.visual
    assert type(visual) is HierarchicalVisualPrefix
    names = {n.split(".")[0] for n, _ in visual.named_parameters()}
    assert names == {"backbone", "block_proj", "gate", "mid", "kv_weight", "kv_bias"}
