"""PROMU losses (Eq. 3-11) on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from promu_lib import losses as L
from promu_lib.models.vision import patches_in_box

torch.set_num_threads(1)


def test_itm_perfect_prediction_is_minimum():
    matched = torch.tensor([True, False, True])
    good = torch.tensor([[-20.0, 20.0], [20.0, -20.0], [-20.0, 20.0]])
    assert L.itm_loss(good, matched) < 1e-6
    assert L.itm_loss(-good, matched) > 10
    assert torch.isclose(L.itm_loss(torch.zeros(3, 2), matched), torch.tensor(math.log(2)))


def _square(sim, matched, g=None, excluded=None):
    """One process: candidates are the batch itself, the anchor excluded."""
    b = sim.shape[0]
    excluded = torch.eye(b, dtype=torch.bool) if excluded is None else excluded
    return L.hard_negative_indices(sim, sim.t(), matched, (excluded, excluded), g)


def test_hard_negatives_exclude_self_and_follow_similarity():
    g = torch.Generator().manual_seed(0)
    b = 4
    sim = torch.zeros(b, b)
    sim[0, 2] = 50.0  # caption 2 is by far the hardest negative of image 0
    sim[3, 1] = 50.0  # image 3 is the hardest negative of caption 1
    sim += torch.eye(b) * 100  # self-similarity would win if not excluded
    matched = torch.tensor([True, True, False, True])
    for _ in range(5):
        neg = _square(sim, matched, g)
        assert neg.anchor.tolist() == [0, 1, 3]
        assert (neg.text != neg.anchor).all() and (neg.image != neg.anchor).all()
        assert neg.text[0] == 2
        assert neg.image[1] == 3
    # uniform similarity: every other index gets drawn
    draws = torch.stack([_square(torch.zeros(b, b), matched, g).text[0] for _ in range(200)])
    assert set(draws.tolist()) == {1, 2, 3}


def test_excluded_negatives_by_image_and_caption_identity():
    """Pairs: 0 = (A, a) matched, 1 = (A, b) falsified with 0's image, 2 = (C, a) matched
    (a repeated caption), 3 = (D, d) matched. Excluded: every (image, caption) combination
    that is a pair of the batch."""
    image_id, caption_id = torch.tensor([0, 0, 2, 3]), torch.tensor([0, 1, 0, 3])
    no_text, no_image = L.excluded_negatives(image_id, caption_id, image_id, caption_id)
    # caption j for image i: A takes a or b (pairs 0, 1); C takes a; D takes d
    assert no_text.tolist() == [
        [True, True, True, False],
        [True, True, True, False],
        [True, False, True, False],
        [False, False, False, True],
    ]
    # image j for caption i: a goes with A (0, 1) and C (2); b with A; d with D
    assert no_image.tolist() == [
        [True, True, True, False],
        [True, True, False, False],
        [True, True, True, False],
        [False, False, False, True],
    ]


def test_hard_negatives_never_form_a_true_match():
    """With the masks above, anchor 0 = (A, a) may only draw pair 3; anchor 2 = (C, a) must
    not draw image A for its caption a, although pair 1 (image A) shares neither its image id
    nor its caption (old code: only j != i was excluded)."""
    image_id, caption_id = torch.tensor([0, 0, 2, 3]), torch.tensor([0, 1, 0, 3])
    excluded = L.excluded_negatives(image_id, caption_id, image_id, caption_id)
    sim = torch.full((4, 4), 50.0) - 50.0 * torch.eye(4)  # the forbidden ones are hardest
    sim[:, 3] = 0.0
    matched = torch.tensor([True, False, True, True])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg = L.hard_negative_indices(sim, sim.t(), matched, excluded, g)
        assert neg.anchor.tolist() == [0, 2, 3]
        assert neg.text[0] == 3 and neg.image[0] == 3  # the only allowed candidate of 0
        assert neg.image[1] == 3  # anchor 2: image A with caption a would be a true match
        assert not excluded[0][neg.anchor, neg.text].any()
        assert not excluded[1][neg.anchor, neg.image].any()


def test_hard_negatives_empty_cases():
    assert _square(torch.zeros(1, 1), torch.tensor([True])).anchor.numel() == 0
    none = _square(torch.zeros(3, 3), torch.zeros(3, dtype=torch.bool))
    assert none.text.numel() == 0
    # an anchor whose every candidate is excluded is dropped (no NaN from an empty softmax)
    every = torch.ones(2, 2, dtype=torch.bool)
    assert (
        _square(torch.zeros(2, 2), torch.tensor([True, True]), excluded=every).anchor.numel() == 0
    )


def test_cit_value_by_hand():
    """Two matched pairs, 2-d embeddings, tau = 0.5, plus a mismatched pair left out.

    S / tau = [[2.0, 1.2], [0.0, 1.6]] (row = image, column = caption):
    L_IT = (log(1 + e^-0.8) + log(1 + e^-1.6)) / 2 = (0.371101 + 0.183901) / 2
    L_TI = (log(1 + e^-2.0) + log(1 + e^-0.4)) / 2 = (0.126928 + 0.513015) / 2
    L_CIT = (L_IT + L_TI) / 2 = 0.298736
    """
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])  # row 1 is normalised to [0, 1]
    txt = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 0.0]])  # row 1 -> [0.6, 0.8]
    matched = torch.tensor([True, True, False])
    loss = L.cit_loss(img, txt, matched, 0.5)
    assert loss.item() == pytest.approx(0.298736, abs=1e-6)


def test_cit_aligned_beats_swapped_and_ignores_mismatched():
    torch.manual_seed(0)
    emb = torch.randn(4, 8)
    matched = torch.tensor([True, True, True, False])
    aligned = L.cit_loss(emb, emb.clone(), matched, 0.07)
    swapped = L.cit_loss(emb, emb[[1, 0, 2, 3]], matched, 0.07)
    assert swapped > aligned + 1.0
    # the mismatched row takes no part: changing its text changes nothing
    other = emb.clone()
    other[3] = torch.randn(8)
    assert torch.isclose(L.cit_loss(emb, other, matched, 0.07), aligned)
    # scale invariance (L2-normalised projections)
    assert torch.isclose(L.cit_loss(3 * emb, emb, matched, 0.07), aligned, atol=1e-5)


def test_cit_fewer_than_two_matched_is_grad_safe_zero():
    img = torch.randn(3, 4, requires_grad=True)
    txt = torch.randn(3, 4, requires_grad=True)
    loss = L.cit_loss(img, txt, torch.tensor([False, True, False]), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert img.grad is not None and torch.all(img.grad == 0)


def test_cit_gradients_flow_to_both_sides_and_temperature():
    img = torch.randn(4, 6, requires_grad=True)
    txt = torch.randn(4, 6, requires_grad=True)
    temp = torch.tensor(0.1, requires_grad=True)
    L.cit_loss(img, txt, torch.ones(4, dtype=torch.bool), temp).backward()
    for t in (img, txt, temp):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_soft_ce_floor_is_entropy_at_p_equals_q():
    torch.manual_seed(1)
    logits = torch.randn(5, 7)
    q = logits.softmax(-1)
    entropy = -(q * q.log()).sum(-1).mean()
    assert torch.isclose(L.soft_ce(logits, q), entropy, atol=1e-6)
    assert L.soft_ce(logits + torch.randn(5, 7), q) > entropy
    # hard targets: soft CE equals ordinary CE
    target = torch.tensor([0, 3, 6, 1, 2])
    one_hot = torch.nn.functional.one_hot(target, 7).float()
    assert torch.isclose(
        L.soft_ce(logits, one_hot), torch.nn.functional.cross_entropy(logits, target)
    )


def test_soft_ce_respects_mask_and_empty_mask():
    logits = torch.zeros(3, 4, requires_grad=True)
    q = torch.full((3, 4), 0.25)
    q_bad = q.clone()
    q_bad[1] = torch.tensor([1.0, 0, 0, 0])
    mask = torch.tensor([True, False, True])
    assert torch.isclose(L.soft_ce(logits, q_bad, mask), L.soft_ce(logits, q))
    empty = L.soft_ce(logits, q, torch.zeros(3, dtype=torch.bool))
    assert empty.item() == 0.0
    empty.backward()
    assert logits.grad is not None


def test_coe_mean_over_real_objects_and_gradients():
    """Eq. 8 by hand, M = 2: object (0, 0) has p = [1/2, 1/2], q = [1, 0] -> log 2 = 0.693147;
    object (1, 0) has p = [3/4, 1/4], q = [1/2, 1/2] -> -(log 0.75 + log 0.25) / 2 = 0.836988;
    the padded objects (CE about 100 and 0) are left out: L_COE = 0.765068."""
    log3 = math.log(3.0)
    logits = torch.tensor(
        [[[0.0, 0.0], [0.0, 100.0]], [[log3, 0.0], [5.0, 5.0]]], requires_grad=True
    )
    q = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    mask = torch.tensor([[True, False], [True, False]])
    loss = L.coe_loss(logits, q, mask)
    assert loss.item() == pytest.approx(0.765068, abs=1e-6)
    loss.backward()
    assert logits.grad[~mask].abs().sum() == 0  # padded objects get no gradient
    assert logits.grad[mask].abs().sum() > 0


def test_cir_perfect_hard_prediction_is_minimum():
    q = torch.eye(3)
    assert L.cir_loss(q * 30, q) < 1e-6
    assert L.cir_loss(-q * 30, q) > 10
    mask = torch.tensor([True, False, True])
    bad = q * 30
    bad[1] = -bad[1]
    assert L.cir_loss(bad, q, mask) < 1e-6


def test_mean_states_in_boxes():
    states = torch.arange(4 * 2, dtype=torch.float).view(1, 4, 2)  # K=4 patches, H=2
    patch_mask = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]], dtype=torch.bool)
    out = L.mean_states_in_boxes(states, patch_mask)
    assert out.shape == (1, 3, 2)
    assert torch.equal(out[0, 0], torch.tensor([1.0, 2.0]))
    assert torch.equal(out[0, 1], states[0, 3])
    assert torch.equal(out[0, 2], torch.zeros(2))


def test_patches_in_box_is_the_p_o_of_eq7():
    boxes = torch.tensor(
        [[[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 1.0], [0.6, 0.6, 0.62, 0.62], [0.0, 0.0, 0.0, 0.0]]]
    )
    mask = patches_in_box(boxes, (2, 2))  # patches: 0 top-left, 1 top-right, 2, 3
    assert mask.shape == (1, 4, 4)
    assert mask[0, 0].tolist() == [True, False, False, False]
    assert mask[0, 1].tolist() == [False, True, False, True]
    assert mask[0, 2].tolist() == [False, False, False, True]  # tiny box: its centre patch
    # padding boxes get patch 0; the object mask removes them from Eq. 7's average
    states = torch.arange(8.0).view(1, 4, 2)
    real = torch.tensor([[True, True, True, False]])
    e_obj = L.mean_states_in_boxes(states, mask & real[..., None])
    assert torch.equal(e_obj[0, 3], torch.zeros(2))


def test_total_loss_weights_and_switches():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    out = L.total_loss({"itm": a, "cit": b}, {"itm": 1.0, "cit": 0.5, "coe": 1.0})
    assert torch.isclose(out, torch.tensor(3.5))
    assert torch.isclose(L.total_loss({"itm": a, "cit": b}, {"itm": 0.0, "cit": 1.0}), b)
    off = L.total_loss({"itm": a}, {"itm": 0.0})
    assert off.item() == 0.0
    off.backward()
    with pytest.raises(ValueError, match="no weight"):
        L.total_loss({"itm": a, "coe": b}, {"itm": 1.0})
