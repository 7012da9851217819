"""Two reference readers of the toy world: an oracle that sees what is drawn, and a text-only rule.

They bracket what a model can reach and show that the image matters:

- :func:`text_only_ner` / :func:`text_only_re` learn from the training split only what text
  can tell: the majority type of each name, and cue words that (almost) always come with one
  type or relation ("said" -> PER, "married" -> couple); for RE also the majority relation of
  each pair of (name-majority) entity types.
- :func:`oracle_ner` / :func:`oracle_re` read the generator's truth files: which object class
  is drawn for each mention, or which arrangement and icon join the two objects. Where the
  image is irrelevant (truth ``relevant=False``) nothing drawn belongs to the post, so the
  oracle falls back to the same text-only rule. It never reads the gold label.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from promu_lib.data.formats import read_mnre, read_twitter
from promu_lib.data.layout import NER_DATASETS, DataLayout
from promu_lib.data.records import NerPost, RePost
from promu_lib.data.toyworld import read_truth
from promu_lib.data.toyworld_draw import OBJECT_CLASSES, read_relation, relation_types
from promu_lib.metrics import ner_scores, re_scores

Name = tuple[str, ...]


def entity_spans(labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """``[(start, end, type)]`` of a BIO sequence (end exclusive)."""
    spans, start, etype = [], None, None
    for i, lab in enumerate([*labels, "O"]):
        if start is not None and not lab.startswith("I-"):
            spans.append((start, i, etype))
            start = None
        if lab.startswith("B-") or (lab.startswith("I-") and start is None):
            start, etype = i, lab[2:]
    return spans


def _tags(n: int, spans: Iterable[tuple[int, int, str]]) -> list[str]:
    tags = ["O"] * n
    for s, e, t in spans:
        tags[s:e] = [f"B-{t}"] + [f"I-{t}"] * (e - s - 1)
    return tags


def _pure(counts: dict[str, Counter], min_count: int, purity: float) -> dict[str, str]:
    """Keys whose label counts are large and (almost) all one label -> that label."""
    out = {}
    for key, c in counts.items():
        label, k = c.most_common(1)[0]
        if k >= min_count and k / sum(c.values()) >= purity:
            out[key] = label
    return out


# -- MNER ------------------------------------------------------------------------------------


@dataclass
class NerTextRule:
    """Names seen in training with their majority type, plus pure neighbour-word cues."""

    names: dict[Name, str] = field(default_factory=dict)
    cues: dict[tuple[str, str], str] = field(default_factory=dict)  # (side, word) -> type
    default: str = "PER"

    @classmethod
    def fit(cls, posts: Iterable[NerPost], min_count: int = 3, purity: float = 0.9) -> NerTextRule:
        names: dict[Name, Counter] = defaultdict(Counter)
        contexts: dict[tuple[str, str], Counter] = defaultdict(Counter)
        types: Counter = Counter()
        for p in posts:
            for s, e, t in entity_spans(p.labels):
                names[p.tokens[s:e]][t] += 1
                types[t] += 1
                for key in _context(p.tokens, s, e):
                    contexts[key][t] += 1
        return cls(
            names={n: c.most_common(1)[0][0] for n, c in names.items()},
            cues=_pure(contexts, min_count, purity),
            default=types.most_common(1)[0][0] if types else "PER",
        )

    def find(self, tokens: Sequence[str]) -> list[tuple[int, int]]:
        """Spans of known names, longest match first, left to right."""
        longest = max((len(n) for n in self.names), default=0)
        spans, i = [], 0
        while i < len(tokens):
            for k in range(min(longest, len(tokens) - i), 0, -1):
                if tuple(tokens[i : i + k]) in self.names:
                    spans.append((i, i + k))
                    i += k
                    break
            else:
                i += 1
        return spans

    def type_of(self, tokens: Sequence[str], start: int, end: int) -> str:
        """A cue word decides; else the name's majority type; else the commonest type."""
        for key in _context(tokens, start, end):
            if key in self.cues:
                return self.cues[key]
        return self.names.get(tuple(tokens[start:end]), self.default)


def _context(tokens: Sequence[str], start: int, end: int) -> list[tuple[str, str]]:
    keys = []
    if start > 0:
        keys.append(("prev", tokens[start - 1].lower()))
    if end < len(tokens):
        keys.append(("next", tokens[end].lower()))
    return keys


def text_only_ner(train_posts: Sequence[NerPost], test_posts: Sequence[NerPost]) -> list[list[str]]:
    """BIO tags from the text alone: known names, typed by cue words or their majority type."""
    rule = NerTextRule.fit(train_posts)
    return [
        _tags(len(p.tokens), [(s, e, rule.type_of(p.tokens, s, e)) for s, e in rule.find(p.tokens)])
        for p in test_posts
    ]


def _check_aligned(posts: Sequence, truths: Sequence[dict]) -> None:
    if len(posts) != len(truths):
        raise ValueError(f"{len(posts)} posts but {len(truths)} truth records")
    for p, t in zip(posts, truths):
        if p.img_id != t["img_id"]:
            raise ValueError(f"post {p.img_id!r} is paired with the truth of {t['img_id']!r}")


def oracle_ner(
    posts: Sequence[NerPost], truths: Sequence[dict], train_posts: Sequence[NerPost]
) -> list[list[str]]:
    """BIO tags from what is drawn: the class of each mention's object gives its type.

    Mention spans come from the truth (where the generator put the names). For posts with an
    irrelevant image the type comes from :class:`NerTextRule` fitted on ``train_posts``.
    """
    _check_aligned(posts, truths)
    rule = NerTextRule.fit(train_posts)
    out = []
    for post, truth in zip(posts, truths):
        drawn = {o["mention"]: o["cls"] for o in truth["objects"] if o.get("mention") is not None}
        spans = []
        for i, m in enumerate(truth["mentions"]):
            s, e = m["span"]
            if truth["relevant"] and i in drawn:
                spans.append((s, e, OBJECT_CLASSES[drawn[i]].entity_type))
            else:
                spans.append((s, e, rule.type_of(post.tokens, s, e)))
        out.append(_tags(len(post.tokens), spans))
    return out


# -- MRE -------------------------------------------------------------------------------------


@dataclass
class ReTextRule:
    """Pure cue words -> relation; else the majority relation of the pair of name types."""

    cues: dict[str, str] = field(default_factory=dict)
    name_types: dict[str, str] = field(default_factory=dict)
    pairs: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def fit(cls, posts: Sequence[RePost], min_count: int = 2, purity: float = 0.9) -> ReTextRule:
        words: dict[str, Counter] = defaultdict(Counter)
        names: dict[str, Counter] = defaultdict(Counter)
        for p in posts:
            for w in _outside_words(p):
                words[w][p.relation] += 1
            types = relation_types(p.relation)
            if types is not None:
                names[p.head.name][types[0]] += 1
                names[p.tail.name][types[1]] += 1
        name_types = {n: c.most_common(1)[0][0] for n, c in names.items()}
        pairs: dict[tuple[str, str], Counter] = defaultdict(Counter)
        for p in posts:
            pair = (name_types.get(p.head.name, "?"), name_types.get(p.tail.name, "?"))
            pairs[pair][p.relation] += 1
        cues = {w: r for w, r in _pure(words, min_count, purity).items() if r != "None"}
        return cls(cues, name_types, {k: c.most_common(1)[0][0] for k, c in pairs.items()})

    def predict(self, post: RePost) -> str:
        hits = Counter(self.cues[w] for w in _outside_words(post) if w in self.cues)
        if hits:
            return hits.most_common(1)[0][0]
        pair = (self.name_types.get(post.head.name, "?"), self.name_types.get(post.tail.name, "?"))
        return self.pairs.get(pair, "None")


def _outside_words(post: RePost) -> set[str]:
    inside = set(range(post.head.start, post.head.end)) | set(range(post.tail.start, post.tail.end))
    return {w.lower() for i, w in enumerate(post.tokens) if i not in inside}


def text_only_re(train_posts: Sequence[RePost], test_posts: Sequence[RePost]) -> list[str]:
    """Relations from the text alone (:class:`ReTextRule` fitted on ``train_posts``)."""
    rule = ReTextRule.fit(train_posts)
    return [rule.predict(p) for p in test_posts]


def oracle_re(
    posts: Sequence[RePost], truths: Sequence[dict], train_posts: Sequence[RePost]
) -> list[str]:
    """The relation the image draws (the classes give the types, arrangement and icon the
    relation); for irrelevant images the text-only rule fitted on ``train_posts``."""
    _check_aligned(posts, truths)
    rule = ReTextRule.fit(train_posts)
    out = []
    for post, truth in zip(posts, truths):
        roles = {o.get("role"): o["cls"] for o in truth["objects"]}
        if truth["relevant"] and "head" in roles and "tail" in roles:
            out.append(
                read_relation(roles["head"], roles["tail"], truth["arrangement"], truth["icon"])
            )
        else:
            out.append(rule.predict(post))
    return out


# -- both, on a built world ------------------------------------------------------------------


def score_references(
    root: str | Path | DataLayout, split: str = "test"
) -> dict[str, dict[str, float]]:
    """Oracle and text-only F1 (percent) on ``split`` of each dataset of a built toy world.

    ``root`` is the data root (default layout names) or a :class:`DataLayout`.
    """
    if isinstance(root, DataLayout):
        layout = root
    else:
        from promu_lib.config import DataConfig

        layout = DataLayout(root=Path(root), data=DataConfig())
    out = {}
    for dataset in NER_DATASETS:
        train = read_twitter(layout.split_file(dataset, "train"))
        test = read_twitter(layout.split_file(dataset, split))
        truths = read_truth(layout.truth(dataset, split))
        gold = [p.labels for p in test]
        out[dataset] = {
            "oracle": ner_scores(gold, oracle_ner(test, truths, train))["f1"],
            "text_only": ner_scores(gold, text_only_ner(train, test))["f1"],
        }
    train = read_mnre(layout.split_file("mnre", "train"))
    test = read_mnre(layout.split_file("mnre", split))
    truths = read_truth(layout.truth("mnre", split))
    gold = [p.relation for p in test]
    out["mnre"] = {
        "oracle": re_scores(gold, oracle_re(test, truths, train))["f1"],
        "text_only": re_scores(gold, text_only_re(train, test))["f1"],
    }
    return out
