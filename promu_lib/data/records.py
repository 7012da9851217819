"""In-memory records of every data format, and the label sets of the real datasets.

These plain dataclasses are the contract between readers, the toy world, the torch datasets
and the models. Readers produce them; writers consume them; nothing else parses files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# -- MNER ------------------------------------------------------------------------------------

ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "MISC")
# BIO tags in a fixed order; index 0 is "O". Twitter-2015's OTHER is read as MISC.
NER_TAGS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I"))
NER_TAG2ID: dict[str, int] = {t: i for i, t in enumerate(NER_TAGS)}
NER_LABEL_ALIASES: dict[str, str] = {"B-OTHER": "B-MISC", "I-OTHER": "I-MISC"}

# -- MRE -------------------------------------------------------------------------------------

# The 23 MNRE (v2) relations in the order of the real ours_rel2id.json ("None" = 0; the
# spelling "alumi" is the dataset's own).
MNRE_RELATIONS: tuple[str, ...] = (
    "None",
    "/per/per/parent",
    "/per/per/siblings",
    "/per/per/couple",
    "/per/per/neighbor",
    "/per/per/peer",
    "/per/per/charges",
    "/per/per/alumi",
    "/per/per/alternate_names",
    "/per/org/member_of",
    "/per/loc/place_of_residence",
    "/per/loc/place_of_birth",
    "/org/org/alternate_names",
    "/org/org/subsidiary",
    "/org/loc/locate_at",
    "/loc/loc/contain",
    "/per/misc/present_in",
    "/per/misc/awarded",
    "/per/misc/race",
    "/per/misc/religion",
    "/per/misc/nationality",
    "/misc/misc/part_of",
    "/misc/loc/held_on",
)
MNRE_REL2ID: dict[str, int] = {r: i for i, r in enumerate(MNRE_RELATIONS)}

# Readable phrases of the 22 real MNRE relations (None excluded: it is no relation to show).
# The two alternate_names relations get distinct phrases so their prompts differ.
RELATION_PHRASES: dict[str, str] = {
    "/per/per/parent": "parent",
    "/per/per/siblings": "siblings",
    "/per/per/couple": "couple",
    "/per/per/neighbor": "neighbor",
    "/per/per/peer": "peer",
    "/per/per/charges": "charges",
    "/per/per/alumi": "alumni",
    "/per/per/alternate_names": "person alternate name",
    "/per/org/member_of": "member of",
    "/per/loc/place_of_residence": "place of residence",
    "/per/loc/place_of_birth": "place of birth",
    "/org/org/alternate_names": "organization alternate name",
    "/org/org/subsidiary": "subsidiary",
    "/org/loc/locate_at": "located at",
    "/loc/loc/contain": "contains",
    "/per/misc/present_in": "present in",
    "/per/misc/awarded": "awarded",
    "/per/misc/race": "race",
    "/per/misc/religion": "religion",
    "/per/misc/nationality": "nationality",
    "/misc/misc/part_of": "part of",
    "/misc/loc/held_on": "held on",
}
assert set(RELATION_PHRASES) == set(MNRE_RELATIONS[1:])

# Entity markers around head (subject) and tail (object), as in HVPNeT and MTB.
RE_MARKERS: tuple[str, str, str, str] = ("<s>", "</s>", "<o>", "</o>")


@dataclass(frozen=True)
class NerPost:
    """One Twitter-2015/2017 post: word tokens with BIO labels and its image id."""

    img_id: str  # the id after "IMGID:"; the image file is <img_id>.jpg
    tokens: tuple[str, ...]
    labels: tuple[str, ...]  # normalised (OTHER -> MISC)
    line: int = 0  # 1-based line of the IMGID line in the source file (0 = not from a file)


@dataclass(frozen=True)
class Span:
    """An entity mention: ``tokens[start:end]`` (end exclusive), as MNRE's ``pos``."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class RePost:
    """One MNRE line: a sentence, a head and a tail entity, an image and a relation."""

    tokens: tuple[str, ...]
    head: Span
    tail: Span
    img_id: str  # file name, e.g. twitter_19_31_16_6.jpg
    relation: str
    line: int = 0


@dataclass(frozen=True)
class CaptionPair:
    """A NewsCLIPpings-style pre-training pair; ``matched`` is False for a swapped image."""

    id: str
    caption: str
    image: str  # path relative to the captions image directory
    matched: bool


@dataclass(frozen=True)
class Box:
    """A detected object: pixel corners, detector score and class name."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0
    cls: str = "object"

    def as_list(self) -> list:
        return [self.x1, self.y1, self.x2, self.y2, self.score, self.cls]


@dataclass
class ToyTruth:
    """What the toy-world generator knows about one post (never available for real data)."""

    img_id: str
    relevant: bool  # False = the image shows unrelated objects
    objects: list[dict] = field(default_factory=list)  # [{"cls":..., "box":[...], "entity":...}]
