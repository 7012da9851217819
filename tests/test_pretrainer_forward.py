"""``PromuPretrainer.forward`` itself (Eq. 3-10) on a tiny random model, and the CIT batch
gathered across two real (gloo, CPU) processes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from promu_lib import losses as L
from promu_lib.config import tiny
from promu_lib.models.builders import build_fusion_encoder
from promu_lib.models.pretraining import PromuPretrainer

torch.set_num_threads(1)

VOCAB, N_ENT, N_REL = 50, 5, 4


class Tok:
    pad_token_id = 0

    def __len__(self) -> int:
        return VOCAB


def make_model(hard_negatives: bool = False, seed: int = 0) -> PromuPretrainer:
    torch.manual_seed(seed)
    enc = build_fusion_encoder(tiny(), Tok())  # 32 px images, 8 px patches: a 4 x 4 grid
    return PromuPretrainer(enc, N_ENT, N_REL, hard_negatives).eval()


def make_batch(seed: int = 0) -> dict:
    """4 pairs: 0 = (image A, caption a) matched; 1 = (A, b) falsified, reusing pair 0's image
    (same pixels, same image id); 2 = (C, c) and 3 = (D, d) matched."""
    g = torch.Generator().manual_seed(seed)
    B, L_, m = 4, 6, 2
    ids = torch.randint(1, VOCAB, (B, L_), generator=g)
    mask = torch.ones(B, L_, dtype=torch.long)
    mask[3, 4:] = 0
    ids = ids * mask
    image = torch.randn(B, 3, 32, 32, generator=g)
    image[1] = image[0]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "image": image,
        "matched": torch.tensor([True, False, True, True]),
        "image_id": torch.tensor([0, 0, 1, 2]),
        "caption_id": torch.tensor([0, 1, 2, 3]),
        # object 0: patch 0 (top-left); object 1: patches 5 and 6 (row 1, columns 1-2)
        "boxes": torch.tensor([[0.0, 0.0, 0.25, 0.25], [0.25, 0.25, 0.75, 0.5]]).expand(B, m, 4),
        "ent_mask": torch.tensor([[True, True]] * B),
        "q_ent": torch.softmax(torch.randn(B, m, N_ENT, generator=g), -1),
        "q_rel": torch.softmax(torch.randn(B, N_REL, generator=g), -1),
        "rel_mask": torch.ones(B, dtype=torch.bool),
    }


class Spy(nn.Module):
    """A head that records its input and returns zero logits (still in the graph)."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.out, self.inputs = out, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach())
        return x[..., :1] * 0 + torch.zeros(*x.shape[:-1], self.out)


def test_coe_reads_the_fused_patches_and_cir_the_fused_cls(monkeypatch):
    """With a fused sequence whose state at position p is p + 1 everywhere: [CLS] = 1, the
    text tokens 1..L, the image's global token L + 1, patch k at L + 2 + k."""
    model, batch = make_model(), make_batch()
    L_ = batch["input_ids"].shape[1]

    def fake_fuse(t, mask, v, output_attentions=False):
        n = t.shape[1] + v.shape[1]
        pos = torch.arange(1, n + 1, dtype=torch.float)
        return pos[None, :, None].expand(len(t), n, t.shape[-1]), None

    monkeypatch.setattr(model.encoder, "fuse", fake_fuse)
    model.ent_head, model.rel_head = Spy(N_ENT), Spy(N_REL)
    model(batch, ("coe", "cir"))
    (e_obj,) = model.ent_head.inputs
    patch = L_ + 2  # the state of patch 0
    torch.testing.assert_close(e_obj[:, 0], torch.full((4, e_obj.shape[-1]), float(patch)))
    torch.testing.assert_close(e_obj[:, 1], torch.full((4, e_obj.shape[-1]), patch + 5.5))
    (cls,) = model.rel_head.inputs
    torch.testing.assert_close(cls, torch.ones_like(cls))  # e_CLS, not the image's token


def _record_fuse(monkeypatch, model) -> list:
    calls, real = [], model.encoder.fuse

    def fuse(t, mask, v, output_attentions=False):
        calls.append((t.detach(), mask, v.detach()))
        return real(t, mask, v, output_attentions)

    monkeypatch.setattr(model.encoder, "fuse", fuse)
    return calls


def _record_itm(monkeypatch) -> list:
    seen, real = [], L.itm_loss

    def itm_loss(logits, matched):
        seen.append((logits.detach(), matched))
        return real(logits, matched)

    monkeypatch.setattr(L, "itm_loss", itm_loss)
    return seen


def test_itm_default_is_eq3_over_the_given_pairs(monkeypatch):
    """Default: one fusion pass, ITM labels = matched (old code always added 2 negatives per
    matched pair, 10 rows here)."""
    model, batch = make_model(), make_batch()
    calls, seen = _record_fuse(monkeypatch, model), _record_itm(monkeypatch)
    out = model(batch, ("itm",))
    assert len(calls) == 1
    ((logits, labels),) = seen
    assert logits.shape == (4, 2) and labels.tolist() == batch["matched"].tolist()
    assert torch.isfinite(out["itm"])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-6)


def test_hard_negatives_are_labelled_0_and_never_a_pair_of_the_batch(monkeypatch):
    """The falsified pair 1 shows pair 0's pixels: neither (A, a) nor (A, b) may come back as
    a negative. Old code (only j != i excluded) draws them about every third batch."""
    model, batch = make_model(hard_negatives=True), make_batch()
    calls, seen = _record_fuse(monkeypatch, model), _record_itm(monkeypatch)
    for seed in range(30):
        calls.clear(), seen.clear()
        model(batch, ("itm",), torch.Generator().manual_seed(seed))
        (t, _, v), (t_neg, m_neg, v_neg) = calls
        ((logits, labels),) = seen
        n_anchor = int(batch["matched"].sum())
        assert len(t_neg) == 2 * n_anchor and logits.shape == (4 + 2 * n_anchor, 2)
        assert labels[:4].tolist() == batch["matched"].tolist()
        assert not labels[4:].any()  # every negative is labelled 0
        for r in range(len(t_neg)):  # the pair fused at row r is no pair of the batch
            pairs = [k for k in range(4) if _same(t_neg[r], t[k]) and _same(v_neg[r], v[k])]
            assert not pairs, (seed, r, pairs)
        # the first half keeps the anchors' images, the second their captions
        anchors = batch["matched"].nonzero().flatten()
        for i, a in enumerate(anchors):
            assert _same(v_neg[i], v[a]) and _same(t_neg[n_anchor + i], t[a])
            assert torch.equal(m_neg[n_anchor + i], batch["attention_mask"][a])


def test_hard_negatives_with_no_matched_pair_still_train():
    model, batch = make_model(hard_negatives=True), make_batch()
    batch["matched"] = torch.zeros(4, dtype=torch.bool)
    out = model(batch, ("itm",), torch.Generator().manual_seed(0))
    out["itm"].backward()
    assert model.itm_head.weight.grad is not None


def test_mismatched_pairs_do_not_enter_cit():
    model, batch = make_model(), make_batch()
    with torch.no_grad():
        before = model(batch, ("cit",))["cit"]
        batch["input_ids"][1] = torch.arange(1, 7)  # the falsified pair's caption and image
        batch["image"][1] = -batch["image"][1]
        after = model(batch, ("cit",))["cit"]
        batch["input_ids"][2] = torch.arange(1, 7)  # a matched one: changes the loss
        changed = model(batch, ("cit",))["cit"]
    torch.testing.assert_close(before, after)
    assert abs(float(changed - before)) > 1e-4


def test_temperature_keeps_its_gradient_and_is_clamped_in_place():
    """Old code clamped tau in forward: beyond a bound its gradient was 0 for good."""
    model, batch = make_model(), make_batch()
    enc = model.encoder
    with torch.no_grad():
        enc.temp.fill_(enc.cfg.temperature_max + 0.1)  # an optimiser step overshot
    model(batch, ("cit",))["cit"].backward()
    assert enc.temp.grad is not None and enc.temp.grad.abs() > 0
    enc.clamp_temperature_()
    assert enc.temp.item() == pytest.approx(enc.cfg.temperature_max)
    with torch.no_grad():
        enc.temp.fill_(0.0)
    enc.clamp_temperature_()
    assert enc.temp.item() == pytest.approx(enc.cfg.temperature_min)


# -- two processes --------------------------------------------------------------------------


def _rank_batch(rank: int) -> dict:
    batch = make_batch(seed=rank)
    batch["image_id"] = batch["image_id"] + 10 * rank
    batch["caption_id"] = batch["caption_id"] + 10 * rank
    if rank == 1:
        batch["matched"] = torch.zeros(4, dtype=torch.bool)
        batch["input_ids"] = batch["input_ids"][:, :3]
        batch["attention_mask"] = batch["attention_mask"][:, :3]
    return batch


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, length - x.shape[1]))


def _gathered_cit(rank: int, world: int, store: str) -> None:
    """One rank of a gloo group: CIT over the gathered batch vs one process over all of it."""
    import torch.distributed as dist

    from promu_lib.models import gather as ranks

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        B = 3
        img_all, txt_all = (
            torch.randn(world * B, 4, generator=g),
            torch.randn(world * B, 4, generator=g),
        )
        matched_all = torch.tensor([True, False, True, True, True, False])
        temp_all = torch.tensor(0.2, requires_grad=True)
        img_all.requires_grad_(), txt_all.requires_grad_()
        full = L.cit_loss(img_all, txt_all, matched_all, temp_all)
        full.backward()

        rows = slice(rank * B, (rank + 1) * B)
        img = img_all.detach()[rows].clone().requires_grad_()
        txt = txt_all.detach()[rows].clone().requires_grad_()
        temp = torch.tensor(0.2, requires_grad=True)
        gather = ranks.all_gather_with_grad
        loss = L.cit_loss(gather(img), gather(txt), ranks.all_gather(matched_all[rows]), temp)
        torch.testing.assert_close(loss, full)
        loss.backward()
        # this rank's part gets the gradient of every rank's loss (world x the gradient of the
        # one loss): DDP's mean over ranks then gives exactly the one-process gradient
        assert img.grad is not None and img.grad.abs().sum() > 0
        torch.testing.assert_close(img.grad / world, img_all.grad[rows])
        torch.testing.assert_close(txt.grad / world, txt_all.grad[rows])
        torch.testing.assert_close(temp.grad, temp_all.grad)

        # the full model, CIT and ITM hard negatives from both ranks. Rank 1 has no matched
        # pair (no anchor, 0 fused rows: the backward collectives must still line up) and a
        # shorter micro-batch (padded to gather)
        model = make_model(hard_negatives=True)
        batches = [_rank_batch(r) for r in range(world)]
        out = model(batches[rank], ("itm", "cit"), torch.Generator().manual_seed(rank))
        with torch.no_grad():  # one process over the concatenated batch, by hand
            enc = model.encoder
            ids = torch.cat([_pad(b["input_ids"], 6) for b in batches])
            mask = torch.cat([_pad(b["attention_mask"], 6) for b in batches])
            z_t = enc.text_embedding(enc.encode_text(ids, mask)[:, 0])
            image = torch.cat([b["image"] for b in batches])
            z_v = enc.image_embedding(enc.encode_image(image)[:, 0])
            matched = torch.cat([b["matched"] for b in batches])
            expected = L.cit_loss(z_v, z_t, matched, enc.temperature)
        torch.testing.assert_close(out["cit"], expected)
        (out["itm"] + out["cit"]).backward()
        assert model.encoder.text.embeddings.word.weight.grad.abs().sum() > 0
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_cit_is_gathered_across_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gathered_cit, args=(2, str(tmp_path / "store")), nprocs=2, join=True)
