"""Tokenizer, MNER/MRE torch datasets, images, collate and loaders."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from promu_lib.config import profile_config
from promu_lib.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageSource,
    NerDataset,
    ReDataset,
    collate,
    encode_re,
    insert_markers,
    load_split,
    make_loader,
    to_pixels,
)
from promu_lib.data.formats import write_boxes, write_mnre, write_rel2id, write_twitter
from promu_lib.data.records import NER_TAG2ID, RE_MARKERS, Box, NerPost, RePost, Span
from promu_lib.data.tokenizer import (
    SPECIAL_TOKENS,
    basic_words,
    build_tokenizer,
    build_vocab,
    vocab_file,
)
from promu_lib.errors import DataError, MissingAssetError

torch.set_num_threads(1)

TRAIN_TEXT = ["alice went to paris with bob", "bob likes paris", "alice and bob at acme"] * 2


@pytest.fixture(scope="module")
def tok():
    from transformers import BertTokenizer

    vocab = build_vocab(TRAIN_TEXT)
    t = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    t.add_special_tokens({"additional_special_tokens": list(RE_MARKERS)})
    return t


def _img(path, rgb=(200, 30, 60), size=(40, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


# -- tokenizer ---------------------------------------------------------------------------------


def test_vocab_specials_chars_and_frequent_words():
    vocab = build_vocab(["Zebra zebra Okapi!", "zebra"], min_freq=2)
    assert vocab[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS) and vocab[0] == "[PAD]"
    assert "zebra" in vocab and "okapi" not in vocab  # okapi seen once
    assert {"o", "##k", "!", "##!"} <= set(vocab)
    assert len(vocab) == len(set(vocab))
    assert basic_words("Héllo, WORLD!") == ["hello", ",", "world", "!"]


def test_build_tokenizer_from_data_is_cached_and_has_markers(tmp_path):
    cfg = profile_config("tiny").replace(**{"data.root": str(tmp_path)})
    posts = [NerPost(str(i), ("Alice", "met", "Bob"), ("B-PER", "O", "B-PER")) for i in range(3)]
    write_twitter(tmp_path / "twitter2015" / "train.txt", posts)
    tok = build_tokenizer(cfg)
    path = vocab_file(build_layout(cfg))
    assert path.is_file() and path.parent.parent == tmp_path / "vocab"
    mtime = path.stat().st_mtime_ns
    tok2 = build_tokenizer(cfg)
    assert path.stat().st_mtime_ns == mtime and len(tok2) == len(tok)
    assert tok.pad_token_id == 0
    enc = tok(["<s>", "alice", "</s>", "quokka", "<o>", "bob", "</o>"], is_split_into_words=True)
    pieces = enc.tokens()
    assert [p for p in pieces if p in RE_MARKERS] == list(RE_MARKERS)
    assert "[UNK]" not in pieces  # unseen word tokenises into characters
    assert "alice" in pieces and "##u" in pieces


def build_layout(cfg):
    from promu_lib.data.layout import DataLayout

    return DataLayout.of(cfg)


def test_missing_tokenizer_sources_say_what_and_where(tmp_path):
    cfg = profile_config("tiny").replace(**{"data.root": str(tmp_path)})
    with pytest.raises(MissingAssetError, match="vocabulary"):
        build_tokenizer(cfg)
    cfg = cfg.replace(**{"text.pretrained": str(tmp_path / "no-such-bert")})
    with pytest.raises(MissingAssetError, match="no-such-bert"):
        build_tokenizer(cfg)


def test_minilm_tokenizer_offline(tmp_path):
    cfg = profile_config("tiny").replace(**{"text.pretrained": "minilm"})
    tok = build_tokenizer(cfg)
    assert tok.convert_tokens_to_ids("<s>") >= 30522 and len(tok) == 30522 + 4


# -- MNER ---------------------------------------------------------------------------------------


def _ner(tokens, labels, img="1"):
    return NerPost(img, tuple(tokens), tuple(labels))


def test_ner_first_piece_carries_the_label(tok):
    post = _ner(["Alice", "zebra", "paris", "!"], ["B-PER", "B-MISC", "B-LOC", "O"])
    ds = NerDataset([post], tok, max_len=40)
    item = ds[0]
    pieces = tok.convert_ids_to_tokens(item["input_ids"].tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert pieces[2:7] == ["z", "##e", "##b", "##r", "##a"]  # one word, several pieces
    assert item["word_starts"].tolist() == [1, 2, 7, 8]
    assert [pieces[i] for i in item["word_starts"]] == ["alice", "z", "paris", "!"]
    assert item["tags"].tolist() == [NER_TAG2ID[t] for t in post.labels]
    assert item["word_mask"].all() and ds.stats["truncated"] == 0


def test_ner_truncation_keeps_labels_aligned(tok, caplog):
    words = ["alice", "zebra", "bob", "paris", "acme"]
    labels = ["B-PER", "B-MISC", "B-PER", "B-LOC", "B-ORG"]
    with caplog.at_level(logging.WARNING):
        ds = NerDataset([_ner(words, labels), _ner(["bob"], ["B-PER"])], tok, max_len=8)
    item = ds[0]
    assert len(item["input_ids"]) == 8
    # [CLS] alice z ##e ##b ##r ##a [SEP]: bob, paris, acme are cut off
    assert item["word_mask"].tolist() == [True, True, False, False, False]
    assert item["word_starts"].tolist() == [1, 2, 0, 0, 0]
    assert item["tags"].tolist() == [NER_TAG2ID["B-PER"], NER_TAG2ID["B-MISC"], 0, 0, 0]
    assert ds.gold(0) == labels  # evaluation still sees every gold label
    assert ds.stats["truncated"] == 1 and ds.stats["dropped_words"] == 3
    assert "truncated" in caplog.text


def test_word_with_no_piece_becomes_unk(tok):
    ds = NerDataset([_ner(["bob", "\xa0", "paris"], ["B-PER", "O", "B-LOC"])], tok, max_len=40)
    item = ds[0]
    pieces = tok.convert_ids_to_tokens(item["input_ids"].tolist())
    assert [pieces[i] for i in item["word_starts"]] == ["bob", "[UNK]", "paris"]
    assert ds.stats["empty_words"] == 1


# -- MRE ----------------------------------------------------------------------------------------


def test_markers_at_last_token_and_overlaps():
    toks = ["a", "b", "c", "d"]
    words, pos = insert_markers(toks, (0, 1), (3, 4))  # tail ends at the last token
    assert words == ["<s>", "a", "</s>", "b", "c", "<o>", "d", "</o>"]
    assert [words[p] for p in pos] == list(RE_MARKERS)
    words, _ = insert_markers(toks, (1, 3), (2, 4))  # overlapping spans
    assert words == ["a", "<s>", "b", "<o>", "c", "</s>", "d", "</o>"]
    words, _ = insert_markers(toks, (1, 3), (1, 3))  # identical spans nest
    assert words == ["a", "<s>", "<o>", "b", "c", "</o>", "</s>", "d"]
    words, _ = insert_markers(toks, (1, 2), (0, 4))  # head inside tail
    assert words == ["<o>", "a", "<s>", "b", "</s>", "c", "d", "</o>"]
    with pytest.raises(ValueError, match="tail span"):
        insert_markers(toks, (0, 1), (3, 5))


def _re(tokens, head, tail, relation="/per/per/peer"):
    h = Span(" ".join(tokens[head[0] : head[1]]), *head)
    t = Span(" ".join(tokens[tail[0] : tail[1]]), *tail)
    return RePost(tuple(tokens), h, t, "x.jpg", relation)


def _check_markers(tok, ids, h, t):
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[h] == "<s>" and pieces[t] == "<o>"
    assert sorted(p for p in pieces if p in RE_MARKERS) == sorted(RE_MARKERS)
    return pieces


def test_re_entity_at_last_token(tok):
    ids, h, t, cut = encode_re(tok, _re(["alice", "likes", "bob"], (0, 1), (2, 3)), 40)
    pieces = _check_markers(tok, ids, h, t)
    assert pieces[-3:] == ["bob", "</o>", "[SEP]"] and not cut


def test_re_truncation_keeps_both_entities(tok):
    filler = ["zebra"] * 6  # 30 pieces
    post = _re(["alice", *filler, "bob", *filler, "paris"], (0, 1), (14, 15))
    ids, h, t, cut = encode_re(tok, post, 16)
    pieces = _check_markers(tok, ids, h, t)
    assert cut and len(ids) == 16 and pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert pieces[h + 1] == "alice" and pieces[t + 1] == "paris"
    # a short stretch between the entities fits: one window around it
    post = _re([*filler, "alice", "likes", "bob", *filler], (6, 7), (8, 9))
    ids, h, t, cut = encode_re(tok, post, 12)
    pieces = _check_markers(tok, ids, h, t)
    assert cut and pieces[h : t + 3] == ["<s>", "alice", "</s>", "likes", "<o>", "bob", "</o>"]
    ds = ReDataset([post, post], tok, max_len=12)
    assert ds.stats["truncated"] == 2 and ds[0]["label"] == 5


# -- images -------------------------------------------------------------------------------------


def test_image_tensors_crops_and_normalisation(tmp_path):
    _img(tmp_path / "p1.jpg", (255, 0, 0), (40, 20))
    boxes = {
        "p1": [
            Box(0, 0, 10, 10, 0.2, "a"),
            Box(20, 5, 60, 20, 0.9, "b"),
            Box(5, 5, 15, 15, 0.5, "c"),
        ]
    }
    src = ImageSource(tmp_path, boxes, size=8, max_objects=2, suffix=".jpg")
    posts = [_ner(["bob"], ["B-PER"], "p1")]
    ds = NerDataset(posts, _tok_small(), 10, src, progress=False)
    item = ds[0]
    assert item["image"].shape == (3, 8, 8) and item["objects"].shape == (2, 3, 8, 8)
    assert item["image"].dtype == torch.uint8  # items stay uint8; collate normalises batches
    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(
        IMAGENET_STD
    )
    image = collate([item])["image"][0]
    assert torch.allclose(image.mean((1, 2)), expected, atol=0.05)  # JPEG: near red
    assert item["object_mask"].tolist() == [True, True]
    # top-2 by score: 0.9 first (clipped to the 40x20 image), then 0.5
    assert torch.allclose(item["boxes"][0], torch.tensor([0.5, 0.25, 1.0, 1.0]))
    assert torch.allclose(item["boxes"][1], torch.tensor([5 / 40, 5 / 20, 15 / 40, 15 / 20]))
    src3 = ImageSource(tmp_path, {}, size=8, max_objects=3, suffix=".jpg")
    item = collate([NerDataset(posts, _tok_small(), 10, src3, progress=False)[0]])
    assert not item["object_mask"].any() and item["objects"].abs().sum() == 0
    assert item["boxes"].abs().sum() == 0
    crop = to_pixels(Image.new("RGB", (50, 30)), 24, "resize-crop")
    assert crop.shape == (3, 24, 24) and crop.dtype == torch.uint8


def _tok_small():
    from transformers import BertTokenizer

    vocab = build_vocab(["bob alice"])
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})


def test_missing_image_error_or_counted_blank(tmp_path, caplog):
    posts = [_ner(["bob"], ["B-PER"], "gone")]
    src = ImageSource(tmp_path, {}, size=8, max_objects=1, suffix=".jpg")
    with pytest.raises(DataError, match="gone.jpg"):
        NerDataset(posts, _tok_small(), 10, src, progress=False)
    src = ImageSource(tmp_path, {}, size=8, max_objects=1, suffix=".jpg", on_missing="blank")
    with caplog.at_level(logging.WARNING):
        ds = NerDataset(posts * 2, _tok_small(), 10, src, progress=False)
    assert ds.stats["missing_images"] == 1  # one file, counted once
    assert collate([ds[0]])["image"].abs().sum() == 0 and not ds[1]["object_mask"].any()
    assert "missing" in caplog.text


def test_image_modes_blank_and_shuffled(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for i, c in enumerate(colours):
        _img(tmp_path / f"{i}.png", c)
    posts = [_ner(["bob"], ["B-PER"], str(i)) for i in range(5)]
    src = ImageSource(tmp_path, {}, size=4, max_objects=1, suffix=".png")
    true = NerDataset(posts, _tok_small(), 10, src, progress=False)
    shuf = NerDataset(posts, _tok_small(), 10, src, image_mode="shuffled", seed=3, progress=False)
    again = NerDataset(posts, _tok_small(), 10, src, image_mode="shuffled", seed=3, progress=False)
    other = NerDataset(posts, _tok_small(), 10, src, image_mode="shuffled", seed=4, progress=False)
    assert sorted(shuf.image_of) == list(range(5))
    assert all(j != i for i, j in enumerate(shuf.image_of))  # nobody keeps its own image
    assert shuf.image_of == again.image_of and shuf.image_of != other.image_of
    for i, j in enumerate(shuf.image_of):
        assert torch.equal(shuf[i]["image"], true[j]["image"])
    blank = NerDataset(posts, _tok_small(), 10, src, image_mode="blank", progress=False)
    assert collate([blank[0]])["image"].abs().sum() == 0 and blank._cache is None
    uncached = NerDataset(posts, _tok_small(), 10, src, cache_images=False, progress=False)
    assert torch.equal(uncached[2]["image"], true[2]["image"])


def test_pixel_cache_reused_and_invalidated_by_a_changed_image(tmp_path, monkeypatch):
    for i, c in enumerate([(255, 0, 0), (0, 255, 0)]):
        _img(tmp_path / f"{i}.png", c)
    posts = [_ner(["bob"], ["B-PER"], str(i)) for i in range(2)]
    cache = tmp_path / "cache"

    def dataset():
        src = ImageSource(tmp_path, {}, size=4, max_objects=1, suffix=".png")
        return NerDataset(posts, _tok_small(), 10, src, pixel_cache_dir=cache, progress=False)

    first = dataset()
    assert len(list(cache.glob("*.safetensors"))) == 1
    with monkeypatch.context() as m:  # a cached read decodes nothing
        m.setattr(ImageSource, "visual", lambda *a, **k: pytest.fail("decoded again"))
        again = dataset()
    assert all(torch.equal(again[i]["image"], first[i]["image"]) for i in range(2))
    _img(tmp_path / "1.png", (0, 0, 255), (9, 9))  # a replaced image file: a new key
    changed = dataset()
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert not torch.equal(changed[1]["image"], first[1]["image"])
    for f in cache.glob("*.safetensors"):  # a damaged cache file is a miss, not an error
        f.write_bytes(b"garbage")
    assert torch.equal(dataset()[1]["image"], changed[1]["image"])


# -- batching -----------------------------------------------------------------------------------


def test_collate_pads_ner_and_re(tok):
    ds = NerDataset(
        [_ner(["alice", "zebra"], ["B-PER", "O"]), _ner(["bob"], ["B-PER"])], tok, max_len=40
    )
    b = collate([ds[0], ds[1]], pad_id=tok.pad_token_id)
    assert b["input_ids"].shape == (2, 8) and b["input_ids"].dtype == torch.long
    assert b["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert (b["input_ids"][1, 3:] == tok.pad_token_id).all()
    assert b["word_mask"].tolist() == [[True, True], [True, False]]
    assert b["word_starts"].tolist()[1] == [1, 0] and b["tags"].tolist()[1] == [1, 0]
    assert b["ids"] == [ds.ids[0], ds.ids[1]] and "image" not in b
    post = _re(["alice", "likes", "bob"], (0, 1), (2, 3), "None")
    rds = ReDataset([post, _re(["bob", "zebra", "alice"], (2, 3), (0, 1))], tok, max_len=40)
    b = collate([rds[0], rds[1]], pad_id=0)
    assert b["label"].tolist() == [0, 5] and b["head_start"].dtype == torch.long
    pieces = tok.convert_ids_to_tokens(b["input_ids"][1].tolist())
    assert pieces[b["head_start"][1]] == "<s>" and pieces[b["tail_start"][1]] == "<o>"


def test_loader_order_depends_only_on_seed_and_epoch(tok):
    posts = [_ner(["bob"], ["B-PER"], str(i)) for i in range(20)]
    ds = NerDataset(posts, tok, max_len=10)

    def order(seed, epoch):
        loader = make_loader(ds, 4, shuffle=True, seed=seed)
        loader.sampler.set_epoch(epoch)
        return [i for b in loader for i in b["index"].tolist()]

    assert order(1, 0) == order(1, 0) and sorted(order(1, 0)) == list(range(20))
    assert order(1, 0) != order(2, 0) and order(1, 0) != order(1, 1)
    plain = make_loader(ds, 6, shuffle=False, seed=0)
    assert [i for b in plain for i in b["index"].tolist()] == list(range(20))


def test_load_split_fraction_without_replacement(tmp_path):
    cfg = profile_config("tiny").replace(
        **{"data.root": str(tmp_path), "data.image_size": 8, "data.max_objects": 1}
    )
    posts = [_ner(["bob", str(i)], ["B-PER", "O"], f"im{i}") for i in range(30)]
    write_twitter(tmp_path / "twitter2017" / "train.txt", posts)
    for i in range(30):
        _img(tmp_path / "twitter2017_images" / f"im{i}.jpg")
    write_boxes(tmp_path / "boxes" / "twitter2017.json", {"im0": [Box(1, 1, 5, 5, 0.5, "x")]})
    tok = build_tokenizer(cfg)
    ds = load_split(cfg, "twitter2017", "train", tok, fraction=0.5, seed=7, progress=False)
    ds2 = load_split(cfg, "twitter2017", "train", tok, fraction=0.5, seed=7, progress=False)
    assert len(ds) == 15 and len(set(ds.ids)) == 15 and ds.ids == ds2.ids
    assert [int(p.img_id[2:]) for p in ds.posts] == sorted(int(p.img_id[2:]) for p in ds.posts)
    full = load_split(cfg, "twitter2017", "train", tok, progress=False)
    assert full[0]["object_mask"].tolist() == [True] and full[0]["image"].shape == (3, 8, 8)
    write_mnre(
        tmp_path / "mnre" / "ours_val.txt",
        [RePost(("a", "b"), Span("a", 0, 1), Span("b", 1, 2), "m.jpg", "None")],
    )
    write_rel2id(tmp_path / "mnre" / "ours_rel2id.json")
    with pytest.raises(MissingAssetError, match="boxes"):
        load_split(cfg, "mnre", "dev", tok)
    text_only = load_split(cfg, "mnre", "dev", tok, with_images=False)
    assert "image" not in text_only[0] and text_only[0]["label"] == 0
